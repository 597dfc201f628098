package ec2fake_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
)

func TestParsePeer(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"10.250.0.5", "10.250.0.5/32"},
		{"10.250.0.0/24", "10.250.0.0/24"},
		{"fd00::1", "fd00::1/128"},
		{"kip", ""},
		{"10.250.0.0/33", ""},
	} {
		p, err := ec2fake.ParsePeer(tt.in)
		if got := p.String(); (tt.want == "") != (err != nil) || tt.want != "" && got != tt.want {
			t.Errorf("ParsePeer(%q) = %s, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// TestControlPeersNeedsCells: without cells there is nothing to peer, and a bad peer is a 400.
func TestControlPeersNeedsCells(t *testing.T) {
	srv := httptest.NewServer(ec2fake.New(ec2fake.Options{}).ControlHandler())
	defer srv.Close()
	for _, q := range []string{"peer=10.250.0.5", "peer=nope"} {
		resp, err := http.Post(srv.URL+"/peers?"+q, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("POST /peers?%s: %s, want 400", q, resp.Status)
		}
	}
}
