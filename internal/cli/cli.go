// Package cli assembles kip's subcommands. Each subcommand lives in its own package under
// internal/cli and returns a *cobra.Command; this package only wires them together.
package cli

import (
	"context"

	"github.com/spf13/cobra"
)

// subcommands is filled by register calls in this package's files, one per subcommand.
var subcommands []func() *cobra.Command

// Run executes kip with args (without the program name).
func Run(ctx context.Context, args []string) error {
	root := &cobra.Command{
		Use:           "kip",
		Short:         "Kip runs every pod on its own right-sized cell",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, c := range subcommands {
		root.AddCommand(c())
	}
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}
