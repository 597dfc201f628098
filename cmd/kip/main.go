// Command kip is Kip's one binary: the virtual-kubelet provider (kip run), the local
// all-in-one (kip up / kip down) and the instance-type chooser (kip select).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kip-dev/kip/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cli.Run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kip:", err)
		os.Exit(1)
	}
}
