package cli

import "github.com/kip-dev/kip/internal/cli/upcmd"

func init() { subcommands = append(subcommands, upcmd.NewCommand, upcmd.NewDownCommand) }
