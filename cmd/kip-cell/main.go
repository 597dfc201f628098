// Command kip-cell is the cell agent: it runs on every cell, serves the cellapi over mutual
// TLS and runs the cell's pod with runc. See Run for the flags.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kip-dev/kip/internal/agent/sandbox"
	"github.com/kip-dev/kip/internal/logctx"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == sandbox.Command {
		// The agent runs itself again as a pod's sandbox (internal/agent/sandbox).
		if err := sandbox.Hold(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "kip-cell:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = logctx.Into(ctx, slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	if err := Run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kip-cell:", err)
		os.Exit(1)
	}
}
