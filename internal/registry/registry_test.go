package registry

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kip-dev/kip/internal/imagebuild"
)

func start(t *testing.T, opts ...Option) *Registry {
	t.Helper()
	r, err := Start("127.0.0.1:0", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestPushAndPull(t *testing.T) {
	tests := []struct {
		name string
		opts func(t *testing.T) ([]Option, string)
	}{
		{"memory", func(t *testing.T) ([]Option, string) { return nil, "" }},
		{"disk", func(t *testing.T) ([]Option, string) {
			dir := filepath.Join(t.TempDir(), "blobs")
			return []Option{WithDiskStorage(dir)}, dir
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, dir := tt.opts(t)
			reg := start(t, opts...)
			img, err := imagebuild.Busybox(imagebuild.Options{})
			if err != nil {
				t.Fatal(err)
			}
			digest, err := Push(context.Background(), reg.Host(), "library/busybox:1.0", img, nil)
			if err != nil {
				t.Fatal(err)
			}
			ref, _ := name.ParseReference(reg.Host()+"/library/busybox:1.0", name.Insecure)
			got, err := remote.Image(ref)
			if err != nil {
				t.Fatal(err)
			}
			if d, _ := got.Digest(); d.String() != digest {
				t.Errorf("pulled digest %s, pushed %s", d, digest)
			}
			if dir != "" {
				var blobs int
				filepath.Walk(dir, func(_ string, info os.FileInfo, _ error) error {
					if info != nil && info.Mode().IsRegular() {
						blobs++
					}
					return nil
				})
				if blobs < 2 { // config and layer
					t.Errorf("disk storage holds %d blobs, want at least 2", blobs)
				}
			}
		})
	}
}

func TestStartAndPushErrors(t *testing.T) {
	if _, err := Start("256.0.0.1:0"); err == nil {
		t.Error("Start on a bad address succeeded")
	}
	reg := start(t)
	host := reg.Host()
	img, _ := imagebuild.Busybox(imagebuild.Options{})
	if _, err := Push(context.Background(), host, "Bad Repo", img, nil); err == nil {
		t.Error("Push to an invalid repository name succeeded")
	}
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	if err := reg.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Push(ctx, host, "library/busybox", img, nil); err == nil {
		t.Error("Push to a closed registry succeeded")
	}
}

func TestSeedBusybox(t *testing.T) {
	reg := start(t)
	names := []string{"library/busybox:latest", "library/nginx:latest", "library/foo", "library/bar:latest"}
	if err := SeedBusybox(context.Background(), reg.Host(), nil, names...); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"library/busybox:latest": {"sh"},
		"library/nginx:latest":   NginxCmd,
		"library/foo":            LongRunningCmd,
		"library/bar:latest":     LongRunningCmd,
	}
	for _, n := range names {
		ref, _ := name.ParseReference(reg.Host()+"/"+n, name.Insecure)
		img, err := remote.Image(ref)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cf.Config.Cmd, want[n]) {
			t.Errorf("%s: Cmd %q, want %q", n, cf.Config.Cmd, want[n])
		}
	}
}

// TestLongRunningCmd runs the seeded default command with the host's busybox: it keeps
// running, and SIGTERM ends it with status 0.
func TestLongRunningCmd(t *testing.T) {
	if _, err := os.Stat(imagebuild.StaticBusyboxPath); err != nil {
		t.Skipf("skipping: %v (apt-get install busybox-static)", err)
	}
	cmd := exec.Command(imagebuild.StaticBusyboxPath, LongRunningCmd...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Wait until the shell has started its sleep child and the child has reset the shell's
	// SIGTERM handler (a signal in between would be lost in the child, a window only a test
	// signalling at once can hit).
	deadline := time.Now().Add(10 * time.Second)
	for !childReady(cmd.Process.Pid) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the command did not start sleeping")
		}
		select {
		case err := <-exited:
			t.Fatalf("the command exited early: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	child := children(cmd.Process.Pid)
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("after SIGTERM: %v, want exit 0", err)
		}
		// The trap stopped the sleep child too.
		for _, pid := range strings.Fields(child) {
			p, _ := strconv.Atoi(pid)
			deadline := time.Now().Add(10 * time.Second)
			for running(p) && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if running(p) {
				syscall.Kill(p, syscall.SIGKILL)
				t.Errorf("child %d still runs after the command exited", p)
			}
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the command ignored SIGTERM")
	}
}

// childReady reports whether pid has a child that no longer catches SIGTERM.
func childReady(pid int) bool {
	kids := strings.Fields(children(pid))
	if len(kids) == 0 {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", kids[0], "status"))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<(uint(syscall.SIGTERM)-1)) == 0
		}
	}
	return false
}

func children(pid int) string {
	b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(pid), "children"))
	return strings.TrimSpace(string(b))
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}
