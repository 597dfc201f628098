// Package runcmd is `kip run`: flags → provider config → kipnode.Start, which wires and runs
// the virtual node until SIGINT/SIGTERM.
package runcmd

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/kipnode"
)

// NewCommand returns `kip run`.
func NewCommand() *cobra.Command {
	var (
		cfgPath, kubeconfig, logLevel string
		anonymousPaths                []string
		leaderElect                   bool
		le                            kipnode.LeaderElection
		healthAddr                    string
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the virtual node: every pod scheduled to it runs on its own cell",
		Long: `kip run registers a virtual node with the cluster in --kubeconfig and runs each pod
bound to it on a cell of the configured backend (local network namespaces or EC2). It serves
the kubelet API (logs, stats, metrics) on the node's InternalIP and runs until SIGINT/SIGTERM;
cells keep running when it stops and are adopted by the next kip run.

With --leader-elect (the default in-cluster, i.e. without --kubeconfig or $KUBECONFIG)
several kip run processes with the same config are replicas of one node: each campaigns
for the Lease kip-<node name> in --leader-elect-namespace and only the holder runs the node;
the others serve nothing but --health-addr until it dies, then one takes over and adopts
every cell. A replica that loses the Lease exits (status 1) to restart as a follower.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", logLevel)
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			if cfgPath == "" {
				return errors.New("--config: a provider config file is required")
			}
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			for _, p := range anonymousPaths {
				if !strings.HasPrefix(p, "/") {
					return fmt.Errorf("--anonymous-auth-paths: %q is not an absolute path", p)
				}
			}
			o := kipnode.Options{Config: cfg, Kubeconfig: kubeconfig, Log: log, AnonymousPaths: anonymousPaths, HealthAddr: healthAddr}
			o.LeaderElection = election(cmd.Flags().Changed("leader-elect"), leaderElect, kubeconfig, le)
			return kipnode.Start(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "provider config file (apiVersion kip.dev/v1alpha1, kind ProviderConfig)")
	f.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster (default $KUBECONFIG, else in-cluster)")
	f.StringVar(&logLevel, "log-level", envOr("KIP_LOG_LEVEL", "info"), "log level: debug, info, warn or error (default $KIP_LOG_LEVEL, else info)")
	f.StringSliceVar(&anonymousPaths, "anonymous-auth-paths", nil,
		"kubelet API paths (e.g. /stats/summary,/metrics/resource) where requests without credentials count as system:anonymous, "+
			"still authorized by SubjectAccessReview; default none: anonymous requests are refused")
	f.BoolVar(&leaderElect, "leader-elect", false,
		"run as one replica of the node: act only while holding the Lease kip-<node name> (default true in-cluster, i.e. without --kubeconfig, else false)")
	f.StringVar(&le.Namespace, "leader-elect-namespace", envOr("POD_NAMESPACE", kipnode.DefaultLeaseNamespace),
		"namespace of the leader Lease; the default is $POD_NAMESPACE when set")
	f.DurationVar(&le.LeaseDuration, "leader-elect-lease-duration", kipnode.DefaultLeaseDuration,
		"how long after the leader's last renewal a follower takes over")
	f.DurationVar(&le.RenewDeadline, "leader-elect-renew-deadline", kipnode.DefaultRenewDeadline,
		"how long the leader retries a failed renewal before it gives up and exits; less than the lease duration")
	f.DurationVar(&le.RetryPeriod, "leader-elect-retry-period", kipnode.DefaultRetryPeriod,
		"how often the leader renews and followers try to acquire")
	f.StringVar(&healthAddr, "health-addr", "",
		"serve GET /healthz (plain HTTP, no credentials) on this address, e.g. :10258, leader or follower; default none")
	return cmd
}

// election is the leader election kip run asks for: as --leader-elect says when it is given,
// else on exactly when kip runs in-cluster (no kubeconfig: the replicas of a Deployment).
func election(given, leaderElect bool, kubeconfig string, le kipnode.LeaderElection) *kipnode.LeaderElection {
	if !given {
		leaderElect = kubeconfig == ""
	}
	if !leaderElect {
		return nil
	}
	return &le
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
