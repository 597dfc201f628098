// Package cellboot renders a cell's cloud-init user data: a POSIX shell script for stock
// images (Amazon Linux 2023, Ubuntu 24.04, Debian 12) that downloads the cell agent and runc,
// checks their pinned SHA-256, installs them, has the agent enroll with kip with a one-time
// token, and starts it (a systemd unit, or detached where systemd is not running). The
// script is userdata.sh.tmpl; it carries no secret key.
package cellboot

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"text/template"

	"github.com/kip-dev/kip/internal/cellapi"
)

//go:embed userdata.sh.tmpl
var script string

var tmpl = template.Must(template.New("userdata").Parse(script))

// Artifact is a file the script downloads and the SHA-256 it must have.
type Artifact struct {
	URL    string
	SHA256 string // hex
}

// Arch is what the script installs on one architecture (GOARCH: amd64, arm64).
type Arch struct {
	Arch    string
	KipCell Artifact
	Runc    Artifact
}

// Params is what a script is rendered from.
type Params struct {
	// Bootstrap is written to /etc/kip/bootstrap.json for the agent. It must carry an
	// enrollment token and URL, and no certificate or key.
	Bootstrap cellapi.Bootstrap
	// Archs are the architectures kip has an agent for; the script picks by uname -m.
	Archs []Arch
	// TrustKipCA makes downloads trust only the bootstrap's CA (the artifacts are on kip's
	// own server); false trusts the system's CAs (artifactURL, e.g. S3).
	TrustKipCA bool
}

var (
	sha256Re  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	cellIDRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	archNames = []string{"amd64", "arm64"}
)

// Render returns the user data script. Every value the script quotes is checked first, so
// nothing in it can break out of its quoting.
func Render(p Params) ([]byte, error) {
	bs := p.Bootstrap
	switch {
	case !cellIDRe.MatchString(bs.CellID):
		return nil, fmt.Errorf("rendering cell user data: cellID %q: must be letters, digits, '.', '_' or '-'", bs.CellID)
	case len(bs.Key) > 0 || len(bs.Cert) > 0:
		return nil, fmt.Errorf("rendering cell user data for %s: the bootstrap carries a certificate or key; user data is readable on the instance, so cells enroll with a token instead", bs.CellID)
	case bs.EnrollToken == "" || bs.EnrollURL == "":
		return nil, fmt.Errorf("rendering cell user data for %s: the bootstrap has no enrollment token or URL", bs.CellID)
	case len(bs.CACert) == 0 || strings.Contains(string(bs.CACert), "KIP_CA_EOF"):
		return nil, fmt.Errorf("rendering cell user data for %s: no usable CA certificate", bs.CellID)
	case len(p.Archs) == 0:
		return nil, errors.New("rendering cell user data: no architecture has artifacts")
	}
	seen := map[string]bool{}
	for _, a := range p.Archs {
		if !slices.Contains(archNames, a.Arch) || seen[a.Arch] {
			return nil, fmt.Errorf("rendering cell user data: architecture %q is unknown or repeated (want %s)", a.Arch, strings.Join(archNames, ", "))
		}
		seen[a.Arch] = true
		for _, art := range []Artifact{a.KipCell, a.Runc} {
			if err := checkArtifact(art); err != nil {
				return nil, fmt.Errorf("rendering cell user data: %s: %w", a.Arch, err)
			}
		}
	}
	js, err := json.Marshal(bs)
	if err != nil {
		return nil, fmt.Errorf("rendering cell user data: %w", err)
	}
	var out bytes.Buffer
	err = tmpl.Execute(&out, struct {
		CellID        string
		Archs         []Arch
		TrustKipCA    bool
		CACert        string
		BootstrapJSON string
	}{bs.CellID, p.Archs, p.TrustKipCA, strings.TrimSpace(string(bs.CACert)), string(js)})
	if err != nil {
		return nil, fmt.Errorf("rendering cell user data: %w", err)
	}
	return out.Bytes(), nil
}

// checkArtifact refuses what the script could not quote or would not check.
func checkArtifact(a Artifact) error {
	if !sha256Re.MatchString(a.SHA256) {
		return fmt.Errorf("artifact %s: SHA-256 %q is not 64 lowercase hex digits", a.URL, a.SHA256)
	}
	u, err := url.Parse(a.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("artifact URL %q: must be an http:// or https:// URL", a.URL)
	}
	if strings.ContainsAny(a.URL, "'\\ \t\n\r") {
		return fmt.Errorf("artifact URL %q: must not hold quotes, backslashes or spaces", a.URL)
	}
	return nil
}

// Renderer renders user data with a fixed set of artifacts (what kip has at start).
type Renderer struct {
	Archs      []Arch
	TrustKipCA bool
}

// UserData renders the script for an instance of architecture arch from a launch's
// bootstrap (cellapi.Bootstrap as JSON); it fits aws.Config.UserData.
func (r *Renderer) UserData(arch string, bootstrap []byte) ([]byte, error) {
	if !slices.ContainsFunc(r.Archs, func(a Arch) bool { return a.Arch == arch }) {
		have := make([]string, len(r.Archs))
		for i, a := range r.Archs {
			have[i] = a.Arch
		}
		return nil, fmt.Errorf("the instance is %s and kip has a cell agent for %s only (cloud.aws.bootstrap.agentPaths and runcPaths)", arch, strings.Join(have, ", "))
	}
	dec := json.NewDecoder(bytes.NewReader(bootstrap))
	dec.DisallowUnknownFields()
	var bs cellapi.Bootstrap
	if err := dec.Decode(&bs); err != nil {
		return nil, fmt.Errorf("decoding the cell bootstrap: %w", err)
	}
	return Render(Params{Bootstrap: bs, Archs: r.Archs, TrustKipCA: r.TrustKipCA})
}

// BootstrapOf returns the bootstrap a rendered script writes for the agent (for tests and
// tools that inspect user data).
func BootstrapOf(script []byte) (*cellapi.Bootstrap, error) {
	const begin, end = "<<'KIP_BOOTSTRAP_EOF'\n", "\nKIP_BOOTSTRAP_EOF\n"
	_, rest, ok := strings.Cut(string(script), begin)
	if !ok {
		return nil, errors.New("not a kip cell bootstrap script: no bootstrap document")
	}
	doc, _, ok := strings.Cut(rest, end)
	if !ok {
		return nil, errors.New("not a kip cell bootstrap script: unterminated bootstrap document")
	}
	var bs cellapi.Bootstrap
	if err := json.Unmarshal([]byte(doc), &bs); err != nil {
		return nil, fmt.Errorf("decoding the script's bootstrap: %w", err)
	}
	return &bs, nil
}
