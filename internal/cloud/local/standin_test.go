package local

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cgroups"
	"golang.org/x/sys/unix"
)

// The test binary doubles as a stand-in cell agent: when the backend starts it with
// standinEnv set, TestMain runs standinAgent instead of the tests. It is a real program in a
// real cell, serving HTTP on the cell's address, with just enough to test the backend:
//
//	GET /healthz        → {"cellID","hostname","ip"}
//	GET /dial?addr=H:P  → 200 if a TCP connection from inside the cell succeeds, else 502
//	POST /spawn         → starts "sleep" in its own session and in a nested cgroup
//	                      (as runc puts containers), answers its pid
//	GET /pull?ref=R&insecure=H[&shared=1] → pulls R (registry H over plain HTTP) into a
//	                      fresh image store (with shared=1: on the host's shared store, as
//	                      kip-cell does), answers a pullResult with its duration and a trace
//	POST /mount         → mounts a tmpfs under the agent's state directory (as image overlays)
const (
	standinEnv  = "KIP_LOCAL_STANDIN_AGENT"
	standinPort = 6421
)

func TestMain(m *testing.M) {
	if os.Getenv(launcherEnv) != "" {
		launcherMain(os.Getenv(launcherEnv))
		return
	}
	if os.Getenv(standinEnv) == "1" {
		if err := standinAgent(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "stand-in agent:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type standinHealth struct {
	CellID   string `json:"cellID"`
	Hostname string `json:"hostname"`
	IP       string `json:"ip"`
}

func standinAgent(args []string) error {
	fs := flag.NewFlagSet("standin", flag.ContinueOnError)
	bootstrap := fs.String("bootstrap", "", "bootstrap file")
	stateDir := fs.String("state-dir", "", "state directory")
	startFD := fs.Int("start-fd", -1, "descriptor to read the start byte from, as kip-cell")
	readyFD := fs.Int("ready-fd", -1, "descriptor to write a byte on once serving, as kip-cell")
	imageStore := fs.String("image-store", "", "the host's shared image store (kip-cell's flag)")
	fs.Int64("image-store-max-bytes", 0, "its cap (kip-cell's flag)")
	fs.Int("start-slots", 0, "how many container starts at once on the host (kip-cell's flag)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *startFD >= 0 {
		// As kip-cell: nothing happens before the launcher's byte; without it, exit.
		f := os.NewFile(uintptr(*startFD), "start-fd")
		var b [1]byte
		if n, err := f.Read(b[:]); n != 1 {
			return fmt.Errorf("the launcher went away before releasing the agent (%v)", err)
		}
		f.Close()
	}
	if _, err := os.ReadFile(*bootstrap); err != nil {
		return fmt.Errorf("reading bootstrap: %w", err)
	}
	if fi, err := os.Stat(*stateDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("state dir %q: %v", *stateDir, err)
	}
	ip := os.Getenv(EnvCellIP)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		host, _ := os.Hostname()
		_ = json.NewEncoder(w).Encode(standinHealth{CellID: os.Getenv(EnvCellID), Hostname: host, IP: ip})
	})
	mux.HandleFunc("/dial", func(w http.ResponseWriter, r *http.Request) {
		c, err := net.DialTimeout("tcp", r.URL.Query().Get("addr"), 500*time.Millisecond)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		c.Close()
	})
	mux.HandleFunc("/pull", func(w http.ResponseWriter, r *http.Request) {
		shared := ""
		if r.URL.Query().Get("shared") == "1" {
			shared = *imageStore
		}
		_ = json.NewEncoder(w).Encode(standinPull(*stateDir, shared, r.URL.Query().Get("ref"), r.URL.Query().Get("insecure")))
	})
	mux.HandleFunc("/spawn", func(w http.ResponseWriter, r *http.Request) {
		pid, err := standinSpawn()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, pid)
	})
	mux.HandleFunc("/mount", func(w http.ResponseWriter, r *http.Request) {
		dir := filepath.Join(*stateDir, "overlay", "c1")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, dir)
	})
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(standinPort)))
	if err != nil {
		return err
	}
	if *readyFD >= 0 {
		f := os.NewFile(uintptr(*readyFD), "ready-fd")
		_, _ = f.Write([]byte{1})
		f.Close()
	}
	return http.Serve(ln, mux)
}

// standinSpawn starts a long sleep the way runc starts a container: its own session, in a
// cgroup nested under the agent's own in every hierarchy (relative cgroupsPath kip/pod/c1).
func standinSpawn() (int, error) {
	cg, err := cgroups.Open(defaultCgroupRoot, "/proc/self/cgroup")
	if err != nil {
		return 0, err
	}
	dirs, err := cg.Dirs("kip/pod/c1")
	if err != nil {
		return 0, err
	}
	if err := cg.Create(dirs, cgroups.Limits{}); err != nil {
		return 0, err
	}
	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	go func() { _ = cmd.Wait() }()
	if err := cgroups.Join(dirs, cmd.Process.Pid); err != nil {
		return 0, err
	}
	return cmd.Process.Pid, nil
}
