package cli

import "github.com/kip-dev/kip/internal/cli/selectcmd"

func init() { subcommands = append(subcommands, selectcmd.NewCommand) }
