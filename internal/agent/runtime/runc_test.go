package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/syncbuf"
	"github.com/kip-dev/kip/internal/testenv"
)

func randTag() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func TestRuncLifecycle(t *testing.T) {
	testenv.RequireRunc(t)
	rootfs := testenv.BusyboxRootFS(t)
	tag := randTag()
	rt, err := NewRunc("", filepath.Join(t.TempDir(), "runc"))
	if err != nil {
		t.Fatal(err)
	}
	cg, err := cgroups.Open("/sys/fs/cgroup", "/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	parent := "kiptest-" + tag
	t.Cleanup(func() {
		if err := cg.Remove(parent); err != nil {
			t.Errorf("removing cgroups: %v", err)
		}
		if cg.Exists(parent) {
			t.Errorf("cgroup %s left behind", parent)
		}
		ids, err := rt.List(context.Background())
		if err != nil || len(ids) != 0 {
			t.Errorf("containers left: %v (%v)", ids, err)
		}
	})

	cases := []struct {
		name     string
		args     []string
		mem      int64
		code     int
		stdout   string
		startErr string
		oom      bool
	}{
		{name: "echo", args: []string{"/bin/sh", "-c", "echo hello; echo oops >&2"}, stdout: "hello\n"},
		{name: "exit3", args: []string{"/bin/sh", "-c", "exit 3"}, code: 3},
		{name: "nocmd", args: []string{"/bin/does-not-exist"}, startErr: "does-not-exist"},
		{name: "oom", args: []string{"/bin/sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1"}, mem: 16 << 20, code: 137, oom: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bundle := t.TempDir()
			cgPath := filepath.Join(parent, tc.name, "0")
			spec, err := BuildSpec(ContainerConfig{
				RootFS:      rootfs,
				Process:     Process{Args: tc.args, Env: []string{DefaultPath}, Cwd: "/"},
				Hostname:    "t",
				CgroupsPath: cgPath,
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := WriteBundle(bundle, spec); err != nil {
				t.Fatal(err)
			}
			if tc.mem > 0 {
				// The limit sits on the per-container parent, which outlives the run, so
				// its OOM counter can be read after runc removed the run's cgroup.
				if err := cg.SetMemoryLimit(filepath.Join(parent, tc.name), tc.mem); err != nil {
					t.Fatal(err)
				}
			}
			var out, errb syncbuf.Buffer
			id := "kiptest-" + tag + "-" + tc.name
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			c, err := rt.Start(ctx, id, bundle, IO{Stdout: &out, Stderr: &errb})
			if tc.startErr != "" {
				if !IsStartError(err) || !strings.Contains(err.Error(), tc.startErr) {
					t.Fatalf("Start err = %v, want a StartError naming %q", err, tc.startErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-c.Done():
			case <-ctx.Done():
				t.Fatal("container did not exit")
			}
			st := c.ExitStatus()
			if st.Code != tc.code {
				t.Errorf("exit code %d, want %d (stderr %q)", st.Code, tc.code, errb.String())
			}
			if tc.stdout != "" && out.String() != tc.stdout {
				t.Errorf("stdout %q, want %q", out.String(), tc.stdout)
			}
			if tc.name == "echo" && errb.String() != "oops\n" {
				t.Errorf("stderr %q, want %q", errb.String(), "oops\n")
			}
			ev, err := cg.MemoryEvents(filepath.Join(parent, tc.name))
			if err != nil {
				t.Fatal(err)
			}
			if got := ev.LimitHits > 0 && st.Signal == syscall.SIGKILL; got != tc.oom {
				t.Errorf("memory events %+v, exit %+v; want oom=%v", ev, st, tc.oom)
			}
			if _, err := rt.State(ctx, id); !IsNotExist(err) {
				t.Errorf("State after exit: %v, want not-exist", err)
			}
		})
	}

	t.Run("kill", func(t *testing.T) {
		bundle := t.TempDir()
		spec, _ := BuildSpec(ContainerConfig{RootFS: rootfs, Process: Process{Args: []string{"/bin/sleep", "1000"}, Cwd: "/"}, CgroupsPath: filepath.Join(parent, "kill", "0")})
		WriteBundle(bundle, spec)
		id := "kiptest-" + tag + "-kill"
		c, err := rt.Start(t.Context(), id, bundle, IO{Stdout: &syncbuf.Buffer{}, Stderr: &syncbuf.Buffer{}})
		if err != nil {
			t.Fatal(err)
		}
		st, err := rt.State(t.Context(), id)
		if err != nil || st.Status != "running" || st.Pid != c.Pid {
			t.Fatalf("State = %+v, %v (pid %d)", st, err, c.Pid)
		}
		var out syncbuf.Buffer
		if code, err := rt.Exec(t.Context(), id, []string{"/bin/sh", "-c", "echo in-container; exit 4"}, IO{Stdout: &out}); err != nil || code != 4 || out.String() != "in-container\n" {
			t.Errorf("Exec = %d, %v, output %q; want 4 and the output", code, err, out.String())
		}
		if _, err := rt.Exec(t.Context(), id, []string{"/no/such"}, IO{}); err == nil {
			t.Error("Exec of a missing binary: want an error")
		}
		// sleep is PID 1 of its namespace and has no SIGTERM handler: only SIGKILL ends it.
		if err := rt.Kill(t.Context(), id, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		select {
		case <-c.Done():
		case <-time.After(30 * time.Second):
			rt.Delete(context.Background(), id)
			t.Fatal("container did not exit after SIGKILL")
		}
		if es := c.ExitStatus(); es.Signal != syscall.SIGKILL || es.Code != 137 {
			t.Errorf("exit = %+v, want SIGKILL/137", es)
		}
		if err := rt.Kill(t.Context(), id, syscall.SIGKILL); err != nil {
			t.Errorf("killing a gone container: %v", err)
		}
		if err := rt.Delete(t.Context(), id); err != nil {
			t.Errorf("deleting a gone container: %v", err)
		}
	})
}
