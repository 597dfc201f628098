package upcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kip-dev/kip/internal/cloud/local"
	"github.com/kip-dev/kip/internal/controlplane"
)

func addHomeFlag(f *pflag.FlagSet, home *string) {
	def := DefaultHome
	if h, err := os.UserHomeDir(); err == nil {
		def = filepath.Join(h, DefaultHome)
	}
	f.StringVar(home, "home", def, "directory for everything kip up makes (kubeconfig, control plane, cells, registry, logs)")
}

// NewDownCommand returns `kip down`.
func NewDownCommand() *cobra.Command {
	var home string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop a running kip up, or remove what a crashed one left (cells, bridge, processes, files)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if home == "" {
				return errors.New("--home: empty")
			}
			abs, err := filepath.Abs(home)
			if err != nil {
				return fmt.Errorf("--home: %w", err)
			}
			st, err := readState(abs)
			if err != nil {
				return err
			}
			if st == nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "kip down: nothing to do (no %s in %s)\n", stateFile, abs)
				return nil
			}
			return down(cmd.Context(), abs, st, cmd.ErrOrStderr())
		},
	}
	addHomeFlag(cmd.Flags(), &home)
	return cmd
}

// down stops a live `kip up` (SIGTERM; it cleans up itself) or removes what a dead one left.
func down(ctx context.Context, home string, st *state, log io.Writer) error {
	say := func(format string, args ...any) { fmt.Fprintf(log, "[kip down] "+format+"\n", args...) }
	if st.alive() {
		say("kip up (pid %d) is running: sending SIGTERM and waiting for it to clean up", st.PID)
		if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
			return fmt.Errorf("signalling kip up (pid %d): %w", st.PID, err)
		}
		deadline := time.Now().Add(4 * time.Minute)
		for st.alive() {
			if time.Now().After(deadline) {
				return fmt.Errorf("kip up (pid %d) did not exit within 4 minutes of SIGTERM", st.PID)
			}
			time.Sleep(200 * time.Millisecond) // not our child: nothing to wait(2) on
		}
		if _, err := os.Stat(filepath.Join(home, stateFile)); errors.Is(err, os.ErrNotExist) {
			say("done")
			return nil
		}
		say("kip up exited but left state behind; removing it")
	}

	var errs []error
	if stopped, err := controlplane.StopLeftovers(st.ControlPlaneDir, 10*time.Second); err != nil {
		errs = append(errs, err)
	} else if len(stopped) > 0 {
		say("stopped control plane processes: %s", strings.Join(stopped, ", "))
	}
	if st.Bridge != "" && st.CellsDir != "" {
		say("terminating cells in %s and removing bridge %s", st.CellsDir, st.Bridge)
		b, err := local.New(local.Config{
			StateDir: st.CellsDir, Bridge: st.Bridge, Subnet: st.Subnet,
			AgentCommand: []string{st.AgentPath},
			Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("opening the local backend: %w", err))
		} else if err := b.Teardown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeFiles(home, st, false); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kip down: %w", err)
	}
	say("done: everything under %s that kip up made is gone", home)
	return nil
}
