// Package runcmd is `kip run`: it loads the provider config, builds the cell backend and the
// Kubernetes clients, gets kip's CA and the kubelet serving certificate (internal/nodeauth),
// and runs the virtual node (virtual-kubelet's nodeutil) with kip's provider until the context
// ends. Start is exported so `kip up` can run the provider in-process.
package runcmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vkslog "github.com/virtual-kubelet/virtual-kubelet/log/slog"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/config"
)

// Options configure Start.
type Options struct {
	// Config is the provider configuration (defaulted and validated). Required.
	Config *config.ProviderConfig
	// Kubeconfig is the path of a kubeconfig; empty means RESTConfig, else in-cluster.
	Kubeconfig string
	// RESTConfig is used when Kubeconfig is empty and it is not nil.
	RESTConfig *rest.Config
	// Cloud is a backend the caller already built and set up (kip up); nil means one is built
	// from Config.Cloud.
	Cloud cloud.Cloud
	// Log receives every log line (virtual-kubelet's included); nil means slog.Default().
	Log *slog.Logger
	// Ready, when set, is called once the virtual node is Ready and serving.
	Ready func()
	// AnonymousPaths lists kubelet API paths (e.g. /stats/summary) on which requests without
	// credentials are authenticated as system:anonymous; they are then authorized by
	// SubjectAccessReview like any other user, so RBAC must grant them. Empty (the default)
	// refuses anonymous requests everywhere, as kubelet with --anonymous-auth=false does.
	AnonymousPaths []string
}

// NewCommand returns `kip run`.
func NewCommand() *cobra.Command {
	var (
		cfgPath, kubeconfig, logLevel string
		anonymousPaths                []string
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the virtual node: every pod scheduled to it runs on its own cell",
		Long: `kip run registers a virtual node with the cluster in --kubeconfig and runs each pod
bound to it on a cell of the configured backend (local network namespaces or EC2). It serves
the kubelet API (logs, stats, metrics) on the node's InternalIP and runs until SIGINT/SIGTERM;
cells keep running when it stops and are adopted by the next kip run.`,
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
			return Start(cmd.Context(), Options{Config: cfg, Kubeconfig: kubeconfig, Log: log, AnonymousPaths: anonymousPaths})
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "provider config file (apiVersion kip.dev/v1alpha1, kind ProviderConfig)")
	f.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster (default $KUBECONFIG, else in-cluster)")
	f.StringVar(&logLevel, "log-level", envOr("KIP_LOG_LEVEL", "info"), "log level: debug, info, warn or error (default $KIP_LOG_LEVEL, else info)")
	f.StringSliceVar(&anonymousPaths, "anonymous-auth-paths", nil,
		"kubelet API paths (e.g. /stats/summary,/metrics/resource) where requests without credentials count as system:anonymous, "+
			"still authorized by SubjectAccessReview; default none: anonymous requests are refused")
	return cmd
}

// Start runs the virtual node until ctx ends, then stops it. Cells are left running: the next
// Start adopts them (Recover).
func Start(ctx context.Context, o Options) error {
	if o.Config == nil {
		return errors.New("starting kip: Options.Config is required")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	vklog.L = vkslog.FromSlog(o.Log)
	klog.SetSlogLogger(slog.New(demoted{o.Log.Handler()}).With("source", "client-go"))
	ctx = vklog.WithLogger(ctx, vklog.L)

	restCfg, err := restConfig(o)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("starting kip: making the Kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("starting kip: making the dynamic client: %w", err)
	}
	r := &runner{opts: o, cfg: o.Config, log: o.Log, restCfg: restCfg, client: client, dynamic: dyn}
	return r.run(ctx)
}

// restConfig loads the client configuration with generous client-side limits: a burst of
// pods means a burst of status updates and events.
func restConfig(o Options) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	switch {
	case o.Kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	case o.RESTConfig != nil:
		cfg = rest.CopyConfig(o.RESTConfig)
	default:
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("starting kip: loading kubeconfig %q: %w", o.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	cfg.UserAgent = "kip/" + Version
	return cfg, nil
}

// Version is reported as the node's kubelet version suffix and user agent.
var Version = "v0.1.0"

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// hostPort joins the node IP and kubelet port.
func hostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// waitErr waits for the first of errc or ctx.
func waitErr(ctx context.Context, errc <-chan error, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("timed out after %v", timeout)
	}
}
