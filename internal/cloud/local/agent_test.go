package local

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// launcherEnv, set to a JSON launcherSpec, makes the test binary a launcher that dies (SIGKILL,
// as kip killed with -9) right after starting an agent and before moving it into its cell.
const launcherEnv = "KIP_LOCAL_TEST_LAUNCHER"

type launcherSpec struct {
	Argv    []string `json:"argv"`
	Env     []string `json:"env"`
	LogPath string   `json:"logPath"`
}

// launcherMain starts the agent as startAgent does, prints its pid and is killed before
// cgroups.Join.
func launcherMain(specJSON string) {
	var s launcherSpec
	if err := json.Unmarshal([]byte(specJSON), &s); err != nil {
		fmt.Fprintln(os.Stderr, "launcher:", err)
		os.Exit(2)
	}
	a, err := spawnAgent(agentSpec{argv: s.Argv, env: s.Env, logPath: s.LogPath})
	if err != nil {
		fmt.Fprintln(os.Stderr, "launcher:", err)
		os.Exit(2)
	}
	fmt.Println(a.cmd.Process.Pid)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

// TestAgentHeldUntilInCell: an agent is started blocked on its start pipe, so a launcher
// that dies between starting it and moving it into the cell's cgroups leaves no agent
// behind: the agent reads end of file and exits without doing anything. Both the stand-in
// agent and kip-cell itself (--start-fd). The normal path (released after the move) is the
// one every other test of this package launches through.
func TestAgentHeldUntilInCell(t *testing.T) {
	agents := []struct {
		name string
		argv func(t *testing.T) []string
		env  []string
		want string // in the agent's log
	}{
		{"stand-in", func(t *testing.T) []string { return agentCommand(t) }, []string{standinEnv + "=1"}, "launcher went away"},
		{"kip-cell", func(t *testing.T) []string { return []string{kipCellBinary(t)} }, nil, "launcher went away"},
	}
	for _, ag := range agents {
		t.Run(ag.name, func(t *testing.T) {
			dir := t.TempDir()
			state := filepath.Join(dir, "agent")
			if err := os.Mkdir(state, 0o700); err != nil {
				t.Fatal(err)
			}
			bootstrap := filepath.Join(dir, "bootstrap")
			if err := os.WriteFile(bootstrap, []byte("{}"), 0o600); err != nil {
				t.Fatal(err)
			}
			spec := launcherSpec{
				Argv:    append(ag.argv(t), "--bootstrap", bootstrap, "--state-dir", state),
				Env:     append([]string{"PATH=" + os.Getenv("PATH"), EnvCellIP + "=127.0.0.1"}, ag.env...),
				LogPath: filepath.Join(dir, "agent.log"),
			}
			b, err := json.Marshal(spec)
			if err != nil {
				t.Fatal(err)
			}
			exe, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(exe)
			cmd.Env = append(os.Environ(), launcherEnv+"="+string(b))
			out, err := cmd.Output()
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("launcher ended with %v (%v), want killed by SIGKILL; stdout %q", cmd.ProcessState, err, out)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
			if err != nil {
				t.Fatalf("launcher printed %q, want the agent's pid", out)
			}
			gone := func(context.Context) (bool, error) { return procState(pid) == "" || procState(pid) == "Z", nil }
			err = wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 20*time.Second, true, gone)
			if err != nil {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				t.Fatalf("agent pid %d still runs after its launcher died before moving it into its cell (state %q)", pid, procState(pid))
			}
			log, _ := os.ReadFile(spec.LogPath)
			if !strings.Contains(string(log), ag.want) {
				t.Errorf("agent log %q, want it to say %q", log, ag.want)
			}
			if ents, _ := os.ReadDir(state); len(ents) > 0 {
				t.Errorf("the held agent wrote its state directory: %v", ents)
			}
		})
	}
}
