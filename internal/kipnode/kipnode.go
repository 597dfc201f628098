// Package kipnode runs Kip's virtual node: from a provider config and a cluster's credentials it
// builds the cell backend, kip's CA and the kubelet serving certificate (internal/nodeauth), the
// informers, the cells manager with its selector and pod resolver, the controllers beside it
// (gc, health, cellmirror), the metrics, and the virtual node (internal/vnode), adopts the cells
// already running, and runs until the context ends. Both `kip run` and `kip up` call Start; it
// is the one place where the parts are wired together.
package kipnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vkslog "github.com/virtual-kubelet/virtual-kubelet/log/slog"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/kip-dev/kip/internal/cellapi"
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
	// LeaderElection, when set, makes this process one of several replicas of the node: it
	// touches nothing (no backend, no node, no kubelet API) until it holds the node's Lease,
	// and Start returns ErrLostLease if it loses it. Nil runs the node at once (kip up).
	LeaderElection *LeaderElection
	// HealthAddr, when set, serves GET /healthz (plain HTTP, no credentials) on this address
	// for the process's whole life, leader or follower; the body names the role.
	HealthAddr string
	// Dial, when set, returns the client of a cell's agent instead of dialling it over mutual
	// TLS (cells.Deps.Dial). It is a seam for simulations only: hack/tools/scalekip runs
	// kip on the fake cloud with an in-process agent per cell. Nil in every real kip.
	Dial func(ctx context.Context, inst *cloud.Instance, cellID string) (cellapi.Agent, error)
}

// Start runs the virtual node until ctx ends, then stops it. Cells are left running: the next
// Start adopts them (Recover). With Options.LeaderElection it first waits to hold the node's
// Lease (leader.go).
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
	r.setRole(roleStandalone)
	if o.HealthAddr != "" {
		hctx, stopHealth := context.WithCancel(ctx)
		defer stopHealth()
		if err := r.serveHealth(hctx, o.HealthAddr); err != nil {
			return err
		}
	}
	if o.LeaderElection != nil {
		return r.lead(ctx, *o.LeaderElection, r.run)
	}
	return r.run(ctx)
}

// restConfig loads the client configuration with generous client-side limits: a burst of
// pods means a burst of status updates and events, and one kip serves as many pods as a
// hundred kubelets (each allowed 50 requests a second): kipAPIQPS is sized for 10,000 pods
// (docs/design/scale.md); the API server's priority and fairness guards it.
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
	cfg.QPS, cfg.Burst = kipAPIQPS, 2*kipAPIQPS
	cfg.UserAgent = "kip/" + Version
	return cfg, nil
}

// kipAPIQPS is kip's client-side limit of API server requests a second (twice as many in a
// burst).
const kipAPIQPS = 500

// Version is reported as the node's kubelet version suffix and user agent.
var Version = "v0.1.0"

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
