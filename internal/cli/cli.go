// Package cli assembles kip's subcommands. Each subcommand lives in its own package under
// internal/cli and returns a *cobra.Command; this package only wires them together.
package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/kip-dev/kip/internal/cli/runcmd"
	"github.com/kip-dev/kip/internal/cli/selectcmd"
	"github.com/kip-dev/kip/internal/cli/upcmd"
)

// Run executes kip with args (without the program name).
func Run(ctx context.Context, args []string) error {
	root := &cobra.Command{
		Use:           "kip",
		Short:         "Kip runs every pod on its own right-sized cell",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		runcmd.NewCommand(),
		selectcmd.NewCommand(),
		upcmd.NewCommand(),
		upcmd.NewDownCommand(),
	)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}
