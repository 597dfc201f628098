package cellboot

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/pki"
)

const sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func params(t *testing.T) Params {
	t.Helper()
	ca, err := pki.NewCA("kip")
	if err != nil {
		t.Fatal(err)
	}
	art := func(name string) Artifact {
		return Artifact{URL: "https://10.0.0.5:6422/v1/artifacts/" + name, SHA256: sha}
	}
	return Params{
		Bootstrap: cellapi.Bootstrap{
			CellID: "c-0123456789ab", CACert: ca.CertPEM,
			// A token as long as enroll's (claims + HMAC, base64url).
			EnrollToken: strings.Repeat("x", 120) + "." + strings.Repeat("y", 43),
			EnrollURL:   "https://10.0.0.5:6422",
			Registry:    cellapi.RegistryConfig{DefaultRegistry: "10.0.0.5:5000", Insecure: []string{"10.0.0.5:5000"}},
		},
		Archs: []Arch{
			{Arch: "amd64", KipCell: art("kip-cell-amd64"), Runc: art("runc-amd64")},
			{Arch: "arm64", KipCell: art("kip-cell-arm64"), Runc: art("runc-arm64")},
		},
		TrustKipCA: true,
	}
}

// TestRender renders the script, checks that every POSIX shell here parses it (sh -n),
// that it fits EC2's user-data limit, pins both architectures, and that the bootstrap it
// writes is the one given.
func TestRender(t *testing.T) {
	p := params(t)
	out, err := Render(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "#!/bin/sh\n") {
		t.Errorf("script starts %.20q", out)
	}
	if n := base64.StdEncoding.EncodedLen(len(out)); n > 16384 {
		t.Errorf("user data is %d bytes base64-encoded, EC2 allows 16384", n)
	}
	t.Logf("user data: %d bytes (%d base64-encoded)", len(out), base64.StdEncoding.EncodedLen(len(out)))
	path := filepath.Join(t.TempDir(), "userdata.sh")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	shells := 0
	for _, sh := range [][]string{{"sh"}, {"dash"}, {"bash", "--posix"}, {"busybox", "sh"}} {
		if _, err := exec.LookPath(sh[0]); err != nil {
			continue
		}
		shells++
		if b, err := exec.Command(sh[0], append(sh[1:], "-n", path)...).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", strings.Join(sh, " "), err, b)
		}
	}
	if shells == 0 {
		t.Fatal("no shell to check the script with")
	}
	for _, want := range []string{
		"CELL_ID='c-0123456789ab'", "KIP_CELL_URL='https://10.0.0.5:6422/v1/artifacts/kip-cell-arm64'",
		"RUNC_SHA256='" + sha + "'", `--cacert "$ETC/ca.pem"`, "[ -d /run/systemd/system ]", "systemctl enable --now kip-cell.service",
		"setsid nohup", `"$BIN/kip-cell" enroll`, `if ! baked kip-cell "$KIP_CELL_SHA256"`, `if ! baked runc "$RUNC_SHA256"`, `--runc $BIN/runc --guard-metadata`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the script has no %q", want)
		}
	}
	for _, secret := range []string{"PRIVATE KEY", `"key"`, `"cert"`} {
		if strings.Contains(string(out), secret) {
			t.Errorf("the script holds %q", secret)
		}
	}
	bs, err := BootstrapOf(out)
	if err != nil {
		t.Fatal(err)
	}
	if bs.CellID != p.Bootstrap.CellID || bs.EnrollToken != p.Bootstrap.EnrollToken || string(bs.CACert) != string(p.Bootstrap.CACert) ||
		bs.Registry.DefaultRegistry != "10.0.0.5:5000" {
		t.Errorf("the script's bootstrap %+v differs from the one rendered", bs)
	}

	p.TrustKipCA = false
	out, err = Render(p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "--cacert") || strings.Contains(string(out), "--ca-certificate") {
		t.Error("with artifacts elsewhere (artifactURL) downloads still trust only kip's CA")
	}
}

func TestRenderRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(p *Params)
		want string
	}{
		{"a key in the bootstrap", func(p *Params) { p.Bootstrap.Key = []byte("k") }, "certificate or key"},
		{"a certificate in the bootstrap", func(p *Params) { p.Bootstrap.Cert = []byte("c") }, "certificate or key"},
		{"no token", func(p *Params) { p.Bootstrap.EnrollToken = "" }, "no enrollment token"},
		{"quote in cell id", func(p *Params) { p.Bootstrap.CellID = "c'; rm -rf /" }, "cellID"},
		{"bad hash", func(p *Params) { p.Archs[0].Runc.SHA256 = "abc" }, "64 lowercase hex"},
		{"quote in URL", func(p *Params) { p.Archs[1].KipCell.URL = "https://x/'$(reboot)'" }, "must not hold quotes"},
		{"ftp URL", func(p *Params) { p.Archs[1].KipCell.URL = "ftp://x/kip-cell" }, "http:// or https://"},
		{"unknown arch", func(p *Params) { p.Archs[1].Arch = "riscv64" }, "unknown or repeated"},
		{"no archs", func(p *Params) { p.Archs = nil }, "no architecture"},
		{"no CA", func(p *Params) { p.Bootstrap.CACert = nil }, "CA certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := params(t)
			tc.mod(&p)
			if _, err := Render(p); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Render = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestRendererUserData(t *testing.T) {
	p := params(t)
	r := &Renderer{Archs: p.Archs[:1], TrustKipCA: true}
	js := []byte(`{"cellID":"c-1","caCert":"` + base64.StdEncoding.EncodeToString(p.Bootstrap.CACert) + `","enrollToken":"t.s","enrollURL":"https://10.0.0.5:6422"}`)
	if _, err := r.UserData("amd64", js); err != nil {
		t.Errorf("amd64: %v", err)
	}
	if _, err := r.UserData("arm64", js); err == nil || !strings.Contains(err.Error(), "arm64 and kip has a cell agent for amd64 only") {
		t.Errorf("arm64 without arm64 artifacts: %v", err)
	}
	if _, err := r.UserData("amd64", []byte(`{"cellID":"c-1","bogus":1}`)); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("unknown field: %v", err)
	}
}
