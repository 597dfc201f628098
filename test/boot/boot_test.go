// Package boot_test runs the real cell bootstrap script, as cloud-init would on a stock
// image, against kip's real artifact and enrollment server serving the kip-cell built from
// this tree: /bin/sh as root in a private mount namespace where /opt/kip, /etc/kip,
// /var/lib/kip-cell, /var/log and /run are fresh tmpfs (so systemd looks absent and the
// agent starts detached). Needs root, unshare, curl or wget, and runc; builds cmd/kip-cell
// unless $KIP_CELL_BIN names it.
package boot_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cellboot"
	"github.com/kip-dev/kip/internal/cellenroll"
	"github.com/kip-dev/kip/internal/enroll"
	"github.com/kip-dev/kip/internal/pki"
	"github.com/kip-dev/kip/internal/testenv"
)

// privateDirs are the directories the script writes, each a fresh tmpfs per run. The
// mount points are made on the host when missing (and left, empty).
var privateDirs = []string{"/opt/kip", "/etc/kip", "/var/lib/kip-cell", "/var/log", "/run"}

// kip is the artifact and enrollment server with kip's CA, as kip run serves it.
type kip struct {
	ca       *pki.CA
	tokens   *enroll.Tokens
	url      string
	renderer *cellboot.Renderer
	enrolls  chan int // status of each enrollment answer
}

func kipCell(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("KIP_CELL_BIN"); p != "" {
		return p
	}
	if d := os.Getenv("KIP_BIN"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "kip-cell")); err == nil {
			return filepath.Join(d, "kip-cell")
		}
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kip-boot-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "kip-cell")
		if out, err := exec.Command("go", "build", "-o", binPath, "github.com/kip-dev/kip/cmd/kip-cell").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building kip-cell: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

func startKip(t *testing.T) *kip {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping in -short mode: runs the bootstrap script as root and builds cmd/kip-cell")
	}
	testenv.RequireRunc(t)
	if os.Geteuid() != 0 {
		t.Skip("the bootstrap script runs as root in a private mount namespace: needs root")
	}
	for _, tool := range []string{"unshare", "sha256sum", "setsid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	_, curl := exec.LookPath("curl")
	_, wget := exec.LookPath("wget")
	if curl != nil && wget != nil {
		t.Skip("neither curl nor wget is installed")
	}
	runc, _ := exec.LookPath("runc")
	k := &kip{enrolls: make(chan int, 10)}
	var err error
	if k.ca, err = pki.NewCA("kip-boot-test"); err != nil {
		t.Fatal(err)
	}
	if k.tokens, err = enroll.NewTokens(k.ca, 0, nil); err != nil {
		t.Fatal(err)
	}
	var arts []*enroll.Artifact
	for name, path := range map[string]string{"kip-cell-" + runtime.GOARCH: kipCell(t), "runc-" + runtime.GOARCH: runc} {
		a, err := enroll.OpenArtifact(name, path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		arts = append(arts, a)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k.url = "https://" + ln.Addr().String()
	certPEM, keyPEM, err := enroll.ServingCert(k.ca, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	h := enroll.Handler(enroll.Config{CA: k.ca, Tokens: k.tokens, Ledger: &enroll.MemoryLedger{}, Artifacts: arts})
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := &statusWriter{ResponseWriter: w}
			h.ServeHTTP(rec, r)
			if r.URL.Path == cellenroll.Path {
				k.enrolls <- rec.status
			}
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}},
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	k.renderer = &cellboot.Renderer{TrustKipCA: true}
	a := cellboot.Arch{Arch: runtime.GOARCH}
	for _, art := range arts {
		ca := cellboot.Artifact{URL: k.url + enroll.ArtifactsPath + art.Name, SHA256: art.SHA256}
		if strings.HasPrefix(art.Name, "runc-") {
			a.Runc = ca
		} else {
			a.KipCell = ca
		}
	}
	k.renderer.Archs = []cellboot.Arch{a}
	for _, d := range privateDirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) { w.status = code; w.ResponseWriter.WriteHeader(code) }

// userData renders the script for a new cell whose agent listens on agentAddr, as cells and
// the AWS backend do: a bootstrap with a fresh token, turned into the script.
func (k *kip) userData(t *testing.T, cellID, agentAddr string) []byte {
	t.Helper()
	token, err := k.tokens.Mint(cellID)
	if err != nil {
		t.Fatal(err)
	}
	bs, _ := json.Marshal(cellapi.Bootstrap{CellID: cellID, CACert: k.ca.CertPEM, EnrollToken: token, EnrollURL: k.url, ListenAddr: agentAddr})
	script, err := k.renderer.UserData(runtime.GOARCH, bs)
	if err != nil {
		t.Fatal(err)
	}
	return script
}

// run is one boot: the script under /bin/sh in a new private mount namespace. It returns
// the script's exit status, its output, the detached agent's pid (0 when none) and what
// /opt/kip/bin holds afterwards.
type run struct {
	rc     int
	out    string
	pid    int
	binDir string
}

func boot(t *testing.T, script []byte) run { return bootWith(t, script, false) }

// bootWith boots; hideCurl makes curl unusable in the namespace (a non-executable file is
// bound over it), so the script downloads with wget.
func bootWith(t *testing.T, script []byte, hideCurl bool) run {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "user-data")
	if err := os.WriteFile(path, script, 0o700); err != nil {
		t.Fatal(err)
	}
	hide := ""
	if hideCurl {
		if err := os.WriteFile(filepath.Join(dir, "no-curl"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		hide = `c=$(command -v curl) && mount --bind "` + filepath.Join(dir, "no-curl") + `" "$c"
command -v curl >/dev/null && { echo "curl is still usable"; exit 1; }
`
	}
	wrapper := `set -e
for d in ` + strings.Join(privateDirs, " ") + `; do mount -t tmpfs -o mode=0755 kip-boot-test "$d"; done
` + hide + `set +e
/bin/sh "$1"
echo "KIP_TEST_RC=$?"
echo "KIP_TEST_BIN=$(ls /opt/kip/bin 2>/dev/null | tr '\n' ' ')"
[ -f /run/kip-cell.pid ] && echo "KIP_TEST_PID=$(cat /run/kip-cell.pid)"
exit 0`
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", wrapper, "boot", path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the namespace wrapper failed: %v\n%s", err, out)
	}
	r := run{rc: -1, out: string(out)}
	for _, line := range strings.Split(r.out, "\n") {
		if v, ok := strings.CutPrefix(line, "KIP_TEST_RC="); ok {
			r.rc, _ = strconv.Atoi(v)
		}
		if v, ok := strings.CutPrefix(line, "KIP_TEST_PID="); ok {
			r.pid, _ = strconv.Atoi(v)
		}
		if v, ok := strings.CutPrefix(line, "KIP_TEST_BIN="); ok {
			r.binDir = strings.TrimSpace(v)
		}
	}
	if r.pid > 0 {
		t.Cleanup(func() { stopAgent(t, r.pid) })
	}
	return r
}

// stopAgent sends SIGTERM and waits for the agent to go, then SIGKILL.
func stopAgent(t *testing.T, pid int) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(pid) {
		t.Errorf("the agent (pid %d) did not stop on SIGTERM; killing it", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	// A zombie (state Z) has exited.
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// agentLog is the detached agent's log, read through its mount namespace.
func agentLog(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/root/var/log/kip-cell.log", pid))
	return string(b)
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestBootFromUserData boots a cell from its user data: the script downloads and checks
// kip-cell and runc, the agent enrolls with its one-time token and serves mutual TLS with
// the certificate kip signed; a second boot with the same user data is refused at
// enrollment and starts nothing.
func TestBootFromUserData(t *testing.T) {
	k := startKip(t)
	cellID, agentAddr := "c-boot"+strconv.Itoa(os.Getpid()), freeAddr(t)
	script := k.userData(t, cellID, agentAddr)

	r := boot(t, script)
	if r.rc != 0 || r.pid == 0 {
		t.Fatalf("the script exited %d, agent pid %d:\n%s", r.rc, r.pid, r.out)
	}
	if r.binDir != "kip-cell runc" {
		t.Errorf("/opt/kip/bin holds %q, want kip-cell and runc", r.binDir)
	}
	if !strings.Contains(r.out, "kip-cell started") {
		t.Errorf("the script did not start the agent detached (no systemd here):\n%s", r.out)
	}
	if st := <-k.enrolls; st != http.StatusOK {
		t.Fatalf("the enrollment was answered %d:\n%s", st, r.out)
	}

	// kip's client, as cells dials agents: its client certificate, the agent's checked to
	// name the cell under kip's CA.
	client, ctls := k.waitHealthy(t, cellID, agentAddr, r.pid)
	if _, err := client.GetPod(context.Background()); !cellapi.IsNotFound(err) {
		t.Errorf("GetPod over mutual TLS: %v, want NotFound (no pod yet)", err)
	}
	// The serving certificate is the enrolled one: it names the cell, its key is not in the
	// user data (which holds none).
	conn, err := tls.Dial("tcp", agentAddr, ctls)
	if err != nil {
		t.Fatal(err)
	}
	peer := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if peer.Subject.CommonName != cellID || len(peer.DNSNames) != 1 || peer.DNSNames[0] != cellID {
		t.Errorf("the agent serves %v %v, want the cell's enrolled certificate", peer.Subject, peer.DNSNames)
	}
	if bytes.Contains(script, []byte("PRIVATE KEY")) {
		t.Error("the user data holds a private key")
	}

	// The same user data again (a pod that read it from IMDS, or a copy of the instance).
	second := boot(t, script)
	if second.rc == 0 || second.pid != 0 {
		t.Errorf("the second boot exited %d with agent pid %d, want a failure and no agent:\n%s", second.rc, second.pid, second.out)
	}
	if !strings.Contains(second.out, "already used") || !strings.Contains(second.out, "could not enroll") {
		t.Errorf("the second boot does not say why it stopped:\n%s", second.out)
	}
	if st := <-k.enrolls; st != http.StatusForbidden {
		t.Errorf("the second enrollment was answered %d, want 403", st)
	}
	// The first agent is unaffected.
	if _, err := client.Health(context.Background()); err != nil {
		t.Errorf("the first agent after the refused boot: %v", err)
	}
}

// waitHealthy dials the agent as kip does (its client certificate; the agent's checked to
// name the cell under kip's CA) until its health answers.
func (k *kip) waitHealthy(t *testing.T, cellID, agentAddr string, pid int) (*cellapi.Client, *tls.Config) {
	t.Helper()
	ccert, ckey, err := k.ca.Issue(pki.LeafSpec{CommonName: "kip", Organization: []string{"kip"}, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	ctls, err := pki.ClientTLS(k.ca.CertPEM, ccert, ckey, cellID)
	if err != nil {
		t.Fatal(err)
	}
	client := cellapi.NewClient("https://"+agentAddr, ctls)
	t.Cleanup(client.Close)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		h, err := client.Health(ctx)
		cancel()
		if err == nil {
			if h.CellID != cellID {
				t.Fatalf("health names cell %q, want %q", h.CellID, cellID)
			}
			return client, ctls
		}
		if !alive(pid) {
			t.Fatalf("the agent exited before it was healthy (%v); its log:\n%s", err, agentLog(pid))
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent is not healthy after 60s: %v; its log:\n%s", err, agentLog(pid))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestBootWithWget: on an image without curl the script downloads with wget.
func TestBootWithWget(t *testing.T) {
	k := startKip(t)
	if _, err := exec.LookPath("wget"); err != nil {
		t.Skip("wget is not installed")
	}
	cellID, agentAddr := "c-wget"+strconv.Itoa(os.Getpid()), freeAddr(t)
	r := bootWith(t, k.userData(t, cellID, agentAddr), true)
	if r.rc != 0 || r.pid == 0 {
		t.Fatalf("the script exited %d, agent pid %d:\n%s", r.rc, r.pid, r.out)
	}
	if st := <-k.enrolls; st != http.StatusOK {
		t.Fatalf("the enrollment was answered %d:\n%s", st, r.out)
	}
	k.waitHealthy(t, cellID, agentAddr, r.pid)
}

// TestBootRefusesWrongHash: an artifact whose SHA-256 is not the pinned one stops the script
// before anything is installed, enrolled or run.
func TestBootRefusesWrongHash(t *testing.T) {
	k := startKip(t)
	sum := sha256.Sum256([]byte("not the agent"))
	k.renderer.Archs[0].KipCell.SHA256 = hex.EncodeToString(sum[:])
	r := boot(t, k.userData(t, "c-badhash", freeAddr(t)))
	if r.rc == 0 || r.pid != 0 {
		t.Fatalf("the script exited %d with agent pid %d, want a failure and no agent:\n%s", r.rc, r.pid, r.out)
	}
	if !strings.Contains(r.out, "kip-cell from "+k.url) || !strings.Contains(r.out, "not the pinned "+hex.EncodeToString(sum[:])) {
		t.Errorf("the script does not say which artifact failed its check:\n%s", r.out)
	}
	if r.binDir != "" {
		t.Errorf("/opt/kip/bin holds %q after a failed check, want nothing", r.binDir)
	}
	select {
	case st := <-k.enrolls:
		t.Errorf("an enrollment was attempted (answered %d)", st)
	default:
	}
}
