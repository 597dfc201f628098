package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/kip-dev/kip/internal/imagebuild"
)

func testImage(t *testing.T, cmd string) v1.Image {
	t.Helper()
	img, err := imagebuild.Busybox(imagebuild.Options{Cmd: []string{cmd}})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func pulledDigest(t *testing.T, host, repo string) string {
	t.Helper()
	ref, err := name.ParseReference(host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref) // anonymous
	if err != nil {
		t.Fatalf("anonymous pull of %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func statusOf(err error) int {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode
	}
	return 0
}

// TestWritesNeedCredentials: with WithWriteAuth, a push without the credentials, or with a
// wrong password, is refused with 401 and leaves the tag as it was; with them it works; and
// pulls stay anonymous.
func TestWritesNeedCredentials(t *testing.T) {
	creds, err := NewCredentials()
	if err != nil {
		t.Fatal(err)
	}
	reg := start(t, WithWriteAuth(creds))
	ctx := context.Background()
	const repo = "library/busybox:latest"
	good, evil := testImage(t, "sh"), testImage(t, "evil")
	want, err := Push(ctx, reg.Host(), repo, good, reg.Auth())
	if err != nil {
		t.Fatalf("push with the credentials: %v", err)
	}
	for name, auth := range map[string]authn.Authenticator{
		"anonymous":      nil,
		"wrong password": &authn.Basic{Username: creds.Username, Password: creds.Password + "x"},
	} {
		_, err := Push(ctx, reg.Host(), repo, evil, auth)
		if err == nil || statusOf(err) != http.StatusUnauthorized {
			t.Errorf("%s push: %v, want 401", name, err)
		}
	}
	if got := pulledDigest(t, reg.Host(), repo); got != want {
		t.Errorf("after refused pushes the tag is %s, want the original %s", got, want)
	}
	// A refused DELETE leaves the manifest too.
	req, _ := http.NewRequest(http.MethodDelete, "http://"+reg.Host()+"/v2/library/busybox/manifests/"+want, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("anonymous DELETE = %d (challenge %q), want 401 with a challenge", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if got := pulledDigest(t, reg.Host(), repo); got != want {
		t.Errorf("after a refused delete the tag is %s, want %s", got, want)
	}
	// With the credentials the tag moves.
	moved, err := Push(ctx, reg.Host(), repo, evil, reg.Auth())
	if err != nil {
		t.Fatalf("second push with the credentials: %v", err)
	}
	if got := pulledDigest(t, reg.Host(), repo); got != moved {
		t.Errorf("after an authenticated push the tag is %s, want %s", got, moved)
	}
}

// TestCredentialsFileIsReusedAndReadByTheDefaultKeychain: the credentials kip up keeps are
// the same on every run, private to root, and what go-containerregistry's default keychain
// (make images, the conformance image builder) finds through DOCKER_CONFIG.
func TestCredentialsFileIsReusedAndReadByTheDefaultKeychain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "registry-auth")
	first, err := LoadOrMakeCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteDockerConfig(dir, "10.250.0.1:5000", first); err != nil {
		t.Fatal(err)
	}
	again, err := LoadOrMakeCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again != first {
		t.Errorf("second run's credentials differ from the first's")
	}
	// A later run on another port keeps the credentials and names the new address too.
	if err := WriteDockerConfig(dir, "10.250.0.1:5001", again); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, DockerConfigFile): 0o600} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", path, st.Mode().Perm(), want)
		}
	}
	t.Setenv("DOCKER_CONFIG", dir)
	for _, host := range []string{"10.250.0.1:5000", "10.250.0.1:5001"} {
		reg, err := name.NewRegistry(host, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		auth, err := authn.DefaultKeychain.Resolve(reg)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := auth.Authorization()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Username != first.Username || cfg.Password != first.Password {
			t.Errorf("default keychain for %s: user %q, want the registry's credentials", host, cfg.Username)
		}
	}
}

// TestHostOnlyWritesRefuseACell puts a network namespace on a veth pair, as a cell on the
// bridge, and checks that with WithHostOnlyWrites it can pull but not push, even with the
// credentials, while the host pushes with them.
func TestHostOnlyWritesRefuseACell(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a network namespace and a veth pair")
	}
	if testing.Short() {
		t.Skip("-short: makes a network namespace")
	}
	ns := fmt.Sprintf("kipregt%d", os.Getpid()%100000)
	hostIf, cellIf := ns+"h", ns+"c"
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", hostIf).Run()
		_ = exec.Command("ip", "netns", "del", ns).Run()
	})
	run("ip", "link", "add", hostIf, "type", "veth", "peer", "name", cellIf)
	run("ip", "link", "set", cellIf, "netns", ns)
	run("ip", "addr", "add", "10.253.77.1/30", "dev", hostIf)
	run("ip", "link", "set", hostIf, "up")
	run("ip", "netns", "exec", ns, "ip", "addr", "add", "10.253.77.2/30", "dev", cellIf)
	run("ip", "netns", "exec", ns, "ip", "link", "set", cellIf, "up")
	run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

	creds, err := NewCredentials()
	if err != nil {
		t.Fatal(err)
	}
	reg, err := Start(net.JoinHostPort("10.253.77.1", "0"), WithWriteAuth(creds), WithHostOnlyWrites())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	want, err := Push(context.Background(), reg.Host(), "library/busybox:latest", testImage(t, "sh"), reg.Auth())
	if err != nil {
		t.Fatalf("push from the host with the credentials: %v", err)
	}
	curl := func(args ...string) string {
		t.Helper()
		base := []string{"netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"}
		return run(append(append([]string{"ip"}, base...), args...)...)
	}
	if got := curl("http://" + reg.Host() + "/v2/library/busybox/manifests/latest"); got != "200" {
		t.Errorf("pull from the cell: HTTP %s, want 200", got)
	}
	userpass := creds.Username + ":" + creds.Password
	for _, w := range [][]string{
		{"-X", "POST", "-u", userpass, "http://" + reg.Host() + "/v2/library/busybox/blobs/uploads/"},
		{"-X", "PUT", "-u", userpass, "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json", "--data", "{}", "http://" + reg.Host() + "/v2/library/busybox/manifests/latest"},
		{"-X", "DELETE", "-u", userpass, "http://" + reg.Host() + "/v2/library/busybox/manifests/" + want},
	} {
		if got := curl(w...); got != "403" {
			t.Errorf("%s from the cell with the credentials: HTTP %s, want 403", w[1], got)
		}
	}
	if got := pulledDigest(t, reg.Host(), "library/busybox:latest"); got != want {
		t.Errorf("after the cell's attempts the tag is %s, want %s", got, want)
	}
}
