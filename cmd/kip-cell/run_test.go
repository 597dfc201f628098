package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/pki"
)

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := Run(t.Context(), []string{"version"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "kip-cell ") || !strings.Contains(out.String(), "cellapi v1") {
		t.Errorf("version output %q", out.String())
	}
}

func writeJSON(t *testing.T, v any) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bootstrap.json")
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBadInvocations(t *testing.T) {
	ca, _ := pki.NewCA("t")
	cert, key, _ := ca.Issue(pki.LeafSpec{CommonName: "c1", DNSNames: []string{"c1"}, Server: true})
	raw := filepath.Join(t.TempDir(), "raw")
	os.WriteFile(raw, []byte(`{"cellID":"c1","caCert":"eA==","bogus":1}`), 0o600)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no bootstrap", nil, "--bootstrap is required"},
		{"bad back-off", []string{"--bootstrap", "x", "--backoff-base", "1m", "--backoff-max", "1s"}, "need 0 < base <= max"},
		{"unknown flag", []string{"--nope"}, "flag provided but not defined"},
		{"extra argument", []string{"--bootstrap", "x", "extra"}, `unexpected argument "extra"`},
		{"missing file", []string{"--bootstrap", "/nonexistent/bs"}, "reading bootstrap"},
		{"unknown field", []string{"--bootstrap", raw}, `unknown field "bogus"`},
		{"no cell id", []string{"--bootstrap", writeJSON(t, cellapi.Bootstrap{CACert: ca.CertPEM, Cert: cert, Key: key})}, "field cellID is required"},
		{"no cert", []string{"--bootstrap", writeJSON(t, cellapi.Bootstrap{CellID: "c1", CACert: ca.CertPEM})}, "fields cert and key (or enrollToken and enrollURL) are required"},
		{"bad cert", []string{"--bootstrap", writeJSON(t, cellapi.Bootstrap{CellID: "c1", CACert: ca.CertPEM, Cert: []byte("x"), Key: key})}, "loading server certificate"},
		{"cert and token", []string{"--bootstrap", writeJSON(t, cellapi.Bootstrap{CellID: "c1", CACert: ca.CertPEM, Cert: cert, Key: key, EnrollToken: "t", EnrollURL: "https://127.0.0.1:1"})}, "not both"},
		{"token without URL", []string{"--bootstrap", writeJSON(t, cellapi.Bootstrap{CellID: "c1", CACert: ca.CertPEM, EnrollToken: "t"})}, "enrollToken and enrollURL go together"},
		{"enroll without token", []string{"enroll", "--bootstrap", writeJSON(t, cellapi.Bootstrap{CellID: "c1", CACert: ca.CertPEM, Cert: cert, Key: key})}, "no enrollToken"},
		{"pull nothing", []string{"pull"}, "name at least one image"},
		{"pull a bad reference", []string{"pull", "--default-registry", "127.0.0.1:1", "Not A Reference"}, "Not A Reference"},
		{"pull from nowhere", []string{"pull", "--insecure-registry", "127.0.0.1:1", "127.0.0.1:1/library/busybox"}, "pulling 127.0.0.1:1/library/busybox"},
		{"enroll, kip unreachable", []string{"enroll", "--timeout", "2s", "--bootstrap", writeJSON(t, cellapi.Bootstrap{CellID: "c1", CACert: ca.CertPEM, EnrollToken: "t", EnrollURL: "https://127.0.0.1:1"})}, "enrolling at https://127.0.0.1:1: context deadline exceeded"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Run(t.Context(), append(tc.args, "--state-dir", t.TempDir()), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestServeAndShutdown runs the agent on 127.0.0.1 with mutual TLS, checks health and an
// authenticated call, then cancels the context and expects a clean return.
func TestServeAndShutdown(t *testing.T) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc is not installed")
	}
	ca, _ := pki.NewCA("t")
	cert, key, _ := ca.Issue(pki.LeafSpec{CommonName: "c1", DNSNames: []string{"c1"}, Server: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	bs := writeJSON(t, cellapi.Bootstrap{CellID: "c1", CACert: ca.CertPEM, Cert: cert, Key: key, ListenAddr: addr})
	b := make([]byte, 3)
	rand.Read(b)
	parent := "kiptest-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		if cg, err := cgroups.Open("/sys/fs/cgroup", "/proc/self/cgroup"); err == nil {
			cg.Remove(parent)
		}
	})

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{"--bootstrap", bs, "--state-dir", t.TempDir(), "--cgroup-parent", parent, "--services=false"}, &bytes.Buffer{})
	}()

	ccert, ckey, _ := ca.Issue(pki.LeafSpec{CommonName: "kip", Client: true})
	ctls, _ := pki.ClientTLS(ca.CertPEM, ccert, ckey, "c1")
	client := cellapi.NewClient("https://"+addr, ctls)
	defer client.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		h, err := client.Health(t.Context())
		if err == nil {
			if h.CellID != "c1" {
				t.Fatalf("health %+v", h)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent never became healthy: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := client.GetPod(t.Context()); !cellapi.IsNotFound(err) {
		t.Fatalf("GetPod: %v, want NotFound", err)
	}
	if _, err := client.Stats(t.Context()); err != nil {
		t.Fatalf("Stats: %v", err)
	}
	// --services=false: service tables are refused (and this test's netns, the host's, untouched).
	if _, err := client.PutServices(t.Context(), &cellapi.ServiceTable{Version: 1}); cellapi.KindOf(err) != cellapi.KindBadVersion {
		t.Fatalf("PutServices with --services=false: %v, want KindBadVersion", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestListenAddr(t *testing.T) {
	for _, tc := range []struct {
		configured, cellIP, want string
	}{
		{"10.0.0.5:7000", "127.0.1.4", "10.0.0.5:7000"},
		{"", "127.0.1.4", "127.0.1.4:6421"},
		{"", "10.250.0.7", ":6421"},
		{"", "", ":6421"},
	} {
		t.Setenv("KIP_CELL_IP", tc.cellIP)
		if got := listenAddr(tc.configured); got != tc.want {
			t.Errorf("listenAddr(%q) with KIP_CELL_IP=%q = %q, want %q", tc.configured, tc.cellIP, got, tc.want)
		}
	}
}

// TestStartFD: with --start-fd the agent waits for its launcher's byte before anything else,
// and gives up at once, doing nothing, when the pipe closes without it.
func TestStartFD(t *testing.T) {
	for _, tc := range []struct {
		name    string
		release bool
		want    string
	}{
		{"released", true, "--bootstrap is required"}, // past the gate, at the next check
		{"launcher died", false, "launcher went away"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			fd, err := unix.Dup(int(r.Fd())) // Run closes its descriptor; r keeps its own
			r.Close()
			if err != nil {
				t.Fatal(err)
			}
			if tc.release {
				if _, err := w.Write([]byte{1}); err != nil {
					t.Fatal(err)
				}
			}
			w.Close()
			err = Run(t.Context(), []string{"--start-fd", strconv.Itoa(fd)}, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run = %v, want an error containing %q", err, tc.want)
			}
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
				t.Errorf("descriptor %d still open after the gate", fd)
			}
		})
	}
}
