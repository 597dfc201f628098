package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/testenv"
)

// env is one test's backend configuration: a random tag in the bridge name, subnet and
// cgroup parent, so that parallel test binaries never collide, and a record of every cell
// launched, for the leak check.
type env struct {
	t   testing.TB
	cfg Config

	mu  sync.Mutex
	ids map[string]bool
}

func randTag(t testing.TB) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func randByte(t testing.TB, lo, hi int64) int64 {
	n, err := rand.Int(rand.Reader, big.NewInt(hi-lo+1))
	if err != nil {
		t.Fatal(err)
	}
	return lo + n.Int64()
}

func agentCommand(t testing.TB) []string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe}
}

// newEnv sets up an isolated backend (bridge included) for t and registers its teardown
// and the leak check.
func newEnv(t testing.TB) *env {
	t.Helper()
	testenv.RequireNetns(t)
	tag := randTag(t)
	e := &env{t: t, ids: map[string]bool{}, cfg: Config{
		StateDir:     filepath.Join(t.TempDir(), "state"),
		Bridge:       "kt" + tag,
		Subnet:       fmt.Sprintf("10.250.%d.0/24", randByte(t, 2, 254)),
		AgentCommand: agentCommand(t),
		AgentEnv:     []string{standinEnv + "=1"},
		CgroupParent: "kip-t" + tag,
	}}
	b := e.backend()
	if err := b.Setup(context.Background()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() {
		if err := e.backend().Teardown(context.Background()); err != nil {
			t.Errorf("Teardown: %v", err)
		}
		e.assertNothingLeft()
	})
	return e
}

// newProcessOnlyEnv is newEnv for the process-only mode (needs no root).
func newProcessOnlyEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, ids: map[string]bool{}, cfg: Config{
		StateDir:     filepath.Join(t.TempDir(), "state"),
		Subnet:       fmt.Sprintf("127.%d.%d.0/24", randByte(t, 10, 250), randByte(t, 1, 250)),
		AgentCommand: agentCommand(t),
		AgentEnv:     []string{standinEnv + "=1"},
		ProcessOnly:  true,
	}}
	t.Cleanup(func() {
		if err := e.backend().Teardown(context.Background()); err != nil {
			t.Errorf("Teardown: %v", err)
		}
		e.assertNothingLeft()
	})
	return e
}

// backend returns a new Backend on the env's state directory, as a restarted kip makes.
func (e *env) backend() *Backend {
	e.t.Helper()
	b, err := New(e.cfg)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	return b
}

// recorder is a Backend that remembers the ids it launched.
type recorder struct {
	*Backend
	e *env
}

func (r recorder) Launch(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	in, err := r.Backend.Launch(ctx, spec)
	if in != nil {
		r.e.mu.Lock()
		r.e.ids[in.ID] = true
		r.e.mu.Unlock()
	}
	return in, err
}

func (e *env) cloud() cloud.Cloud { return recorder{e.backend(), e} }

// launch launches a cell of type typ and waits for its agent to answer.
func (e *env) launch(b cloud.Cloud, cellID, typ string) *cloud.Instance {
	e.t.Helper()
	in, err := b.Launch(context.Background(), cloud.LaunchSpec{
		CellID: cellID, ClientToken: cellID, InstanceType: typ,
		Tags: map[string]string{cloud.TagCellID: cellID}, BootstrapData: []byte("{}"),
	})
	if err != nil {
		e.t.Fatalf("Launch(%s): %v", cellID, err)
	}
	e.waitHealthy(in.PrivateIP)
	return in
}

var httpc = &http.Client{Timeout: 2 * time.Second}

// waitHealthy polls the stand-in agent's /healthz until it answers 200 (10 s at most).
func (e *env) waitHealthy(ip string) standinHealth {
	e.t.Helper()
	var h standinHealth
	var last error
	ok := waitFor(time.Now().Add(10*time.Second), func() bool {
		last = getJSON(ip, "/healthz", &h)
		return last == nil
	})
	if !ok {
		e.t.Fatalf("agent at %s never became healthy: %v", ip, last)
	}
	return h
}

func getJSON(ip, path string, v any) error {
	resp, err := httpc.Get("http://" + net.JoinHostPort(ip, strconv.Itoa(standinPort)) + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func post(ip, path string) (string, error) {
	resp, err := httpc.Post("http://"+net.JoinHostPort(ip, strconv.Itoa(standinPort))+path, "text/plain", nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("POST %s: %s: %s", path, resp.Status, b)
	}
	return string(b), nil
}

// dial asks the agent at from to open a TCP connection to addr, from inside its cell.
func dial(from, addr string) error {
	resp, err := httpc.Get("http://" + net.JoinHostPort(from, strconv.Itoa(standinPort)) + "/dial?addr=" + addr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", strings.TrimSpace(string(b)))
	}
	return nil
}

// assertNothingLeft checks that no netns, veth, cgroup, mount, process or file of any cell
// the env launched remains, nor the bridge.
func (e *env) assertNothingLeft() {
	t := e.t
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	for id := range e.ids {
		if _, err := os.Stat(filepath.Join(netnsDir, "kip-"+id)); err == nil {
			t.Errorf("netns kip-%s left behind", id)
		}
		if _, err := netlink.LinkByName("kv" + id[3:]); err == nil {
			t.Errorf("veth kv%s left behind", id[3:])
		}
		if pids := processesOf(id); len(pids) > 0 {
			t.Errorf("processes of cell %s left behind: %v", id, pids)
		}
	}
	if !e.cfg.ProcessOnly {
		if _, err := netlink.LinkByName(e.cfg.Bridge); err == nil {
			t.Errorf("bridge %s left behind", e.cfg.Bridge)
		}
		cg, err := cgroups.Open(defaultCgroupRoot, "/proc/self/cgroup")
		if err != nil {
			t.Fatal(err)
		}
		parents, err := cg.Dirs(e.cfg.CgroupParent)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range parents {
			if _, err := os.Stat(d); err == nil {
				t.Errorf("cgroup %s left behind", d)
			}
		}
	}
	if m, err := mountsUnder("/proc/self/mountinfo", e.cfg.StateDir); err != nil || len(m) > 0 {
		t.Errorf("mounts left under the state dir: %v %v", m, err)
	}
	if ents, err := os.ReadDir(e.cfg.StateDir); err == nil {
		var names []string
		for _, d := range ents {
			names = append(names, d.Name())
		}
		t.Errorf("state dir %s left with %v", e.cfg.StateDir, names)
	}
}

// processesOf returns the pids whose environment names the cell (the agent and everything
// it started).
func processesOf(id string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	needle := []byte(EnvInstanceID + "=" + id + "\x00")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "environ"))
		if err != nil {
			continue
		}
		if strings.Contains(string(b), string(needle)) && procState(pid) != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

// waitFor polls cond every 2ms until it holds or the deadline passes; it reports whether
// cond held.
func waitFor(deadline time.Time, cond func() bool) bool {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	return wait.PollUntilContextCancel(ctx, 2*time.Millisecond, true, func(context.Context) (bool, error) { return cond(), nil }) == nil
}
