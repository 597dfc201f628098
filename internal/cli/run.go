package cli

import "github.com/kip-dev/kip/internal/cli/runcmd"

func init() { subcommands = append(subcommands, runcmd.NewCommand) }
