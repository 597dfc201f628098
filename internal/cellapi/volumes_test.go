package cellapi_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/pki"
)

// volumesAgent is fakeAgent plus cellapi.VolumeUpdater.
type volumesAgent struct {
	*fakeAgent
	got *cellapi.VolumeUpdate
	err error
}

func (v *volumesAgent) UpdateVolumes(_ context.Context, u *cellapi.VolumeUpdate) (*cellapi.VolumeUpdateStatus, error) {
	if v.err != nil {
		return nil, v.err
	}
	v.got = u
	return &cellapi.VolumeUpdateStatus{Updated: []string{"cfg"}}, nil
}

func TestUpdateVolumesRoundTrip(t *testing.T) {
	va := &volumesAgent{fakeAgent: &fakeAgent{updates: make(chan *cellapi.PodStatus)}}
	r := newRigFor(t, va, va.fakeAgent)
	u := &cellapi.VolumeUpdate{UID: "uid-1", Volumes: map[string]cellapi.VolumeFiles{
		"cfg":   {Files: map[string]cellapi.File{"a": {Data: []byte("A\x00binary"), Mode: 0o600}, "dir/b": {Data: []byte("B"), Mode: 0o644}}},
		"empty": {Files: map[string]cellapi.File{}},
	}}
	st, err := r.client.UpdateVolumes(t.Context(), u)
	if err != nil {
		t.Fatalf("UpdateVolumes: %v", err)
	}
	if !reflect.DeepEqual(st.Updated, []string{"cfg"}) {
		t.Errorf("status %+v, want updated [cfg]", st)
	}
	if !reflect.DeepEqual(va.got, u) {
		t.Errorf("the agent got %+v, want %+v", va.got, u)
	}
	va.err = cellapi.Errorf(cellapi.KindNotFound, "cell runs no pod uid-1")
	if _, err := r.client.UpdateVolumes(t.Context(), u); !cellapi.IsNotFound(err) {
		t.Errorf("UpdateVolumes with the agent answering NotFound = %v, want NotFound", err)
	}

	cert, key, err := r.ca.Issue(pki.LeafSpec{CommonName: "kip", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	ctls, err := pki.ClientTLS(r.ca.CertPEM, cert, key, "cell-1")
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ctls}}
	defer hc.CloseIdleConnections()
	for _, tc := range []struct{ name, body, want string }{
		{"malformed", `{"uid":`, "decoding volume update"},
		{"unknown field", `{"uid":"u","volume":{}}`, `unknown field \"volume\"`},
		{"no uid", `{"volumes":{}}`, "field uid is required"},
		{"trailing data", `{"uid":"u"} {}`, "trailing data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPut, r.srv.URL+cellapi.VolumesPath, strings.NewReader(tc.body))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !bytes.Contains(b, []byte(tc.want)) {
				t.Errorf("status %d body %s; want 400 containing %q", resp.StatusCode, b, tc.want)
			}
		})
	}
}

func TestUpdateVolumesNotImplemented(t *testing.T) {
	r := newRig(t) // fakeAgent does not implement VolumeUpdater
	_, err := r.client.UpdateVolumes(t.Context(), &cellapi.VolumeUpdate{UID: "uid-1"})
	if cellapi.KindOf(err) != cellapi.KindBadVersion {
		t.Errorf("UpdateVolumes to an agent without it = %v, want KindBadVersion (501)", err)
	}
}
