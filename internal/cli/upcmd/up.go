// Package upcmd implements `kip up` — the whole of Kip on one machine: a real control plane,
// the local backend's bridge, an OCI registry on the bridge address seeded with busybox, and
// kip's provider, in the foreground until Ctrl-C, after which everything it made is removed —
// and `kip down`, which removes what a crashed `kip up` left behind.
package upcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/kip-dev/kip/internal/cloud/local"
	"github.com/kip-dev/kip/internal/clusterdns"
	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/controlplane"
	"github.com/kip-dev/kip/internal/registry"
)

// options are the flags of `kip up`.
type options struct {
	home, cpBin, cellBin string
	bridge, subnet, node string
	registryPort         int
	readyTimeout         time.Duration
	clusterDNS           bool
	stdout, stderr       io.Writer
	started              time.Time
}

// DefaultHome is where `kip up` keeps everything, under the user's home directory.
const DefaultHome = ".kip"

// RegistryAuthDir, under --home, holds the registry's push credentials as a Docker config
// (config.json, 0600): made by the first kip up, reused by later ones, kept by kip down.
const RegistryAuthDir = "registry-auth"

// Seeded are the images `kip up` pushes to its registry: unqualified `busybox` and `nginx`
// (busybox httpd on port 80) then work offline.
var Seeded = []string{"library/busybox:latest", "library/nginx:latest"}

// NewCommand returns `kip up`.
func NewCommand() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run Kip locally: control plane, registry and a virtual node whose pods run on local cells",
		Long: `kip up starts, on this machine (as root):
  - a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
    built by hack/build-control-plane.sh, on 127.0.0.1;
  - the local backend's bridge (cells are network namespaces on it);
  - an OCI registry on the bridge address, seeded with busybox (and nginx: busybox httpd);
    anyone pulls, but pushes must come from this host with the credentials in
    <home>/registry-auth/config.json (DOCKER_CONFIG=<home>/registry-auth);
  - kip's provider: a virtual node whose pods each run on their own cell;
  - cluster DNS: CoreDNS (built once from hack/tools/coredns, cached under ~/.cache/kip) as
    kube-system/coredns behind Service kube-dns at 10.0.0.10, kip's clusterDNS.
It writes the admin kubeconfig to <home>/kubeconfig, prints a ready line, and runs until
Ctrl-C or SIGTERM; then it removes every cell, the bridge, every process and every file it made.
After a crash, kip down removes the leftovers.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.stdout, o.stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			return o.up(cmd.Context())
		},
	}
	f := cmd.Flags()
	addHomeFlag(f, &o.home)
	f.StringVar(&o.cpBin, "cp-bin", "", "directory of the control plane binaries (default $KIP_CP_BIN, else the newest build under ~/.cache/kip/cp-bin)")
	f.StringVar(&o.cellBin, "cell-bin", "", "path of the kip-cell agent binary (default: kip-cell next to this kip)")
	f.StringVar(&o.bridge, "bridge", "kip0", "name of the bridge the cells attach to (at most 15 characters)")
	f.StringVar(&o.subnet, "subnet", "10.250.0.0/24", "cells' subnet; the bridge, the node and the registry take its first address")
	f.StringVar(&o.node, "node-name", "kip", "name of the virtual node")
	f.IntVar(&o.registryPort, "registry-port", 5000, "port of the registry on the bridge address (0: any free port)")
	f.DurationVar(&o.readyTimeout, "ready-timeout", 5*time.Minute, "how long to wait for the virtual node to be Ready")
	f.BoolVar(&o.clusterDNS, "cluster-dns", true, "deploy CoreDNS as the cluster's DNS (kube-system/kube-dns at "+clusterdns.ServiceIP+") and give pods its resolv.conf")
	return cmd
}

func (o *options) step(format string, args ...any) {
	fmt.Fprintf(o.stderr, "[kip up %5.1fs] %s\n", time.Since(o.started).Seconds(), fmt.Sprintf(format, args...))
}

// validate checks the flags and fills in defaults; its errors name the flag.
func (o *options) validate() error {
	var errs []error
	if o.home == "" {
		errs = append(errs, errors.New("--home: empty"))
	}
	if len(o.bridge) == 0 || len(o.bridge) > 15 {
		errs = append(errs, fmt.Errorf("--bridge %q: must be 1 to 15 characters", o.bridge))
	}
	if ip, n, err := net.ParseCIDR(o.subnet); err != nil || ip.To4() == nil {
		errs = append(errs, fmt.Errorf("--subnet %q: not an IPv4 CIDR", o.subnet))
	} else if ones, _ := n.Mask.Size(); ones > 29 {
		errs = append(errs, fmt.Errorf("--subnet %q: too small, want /29 or larger", o.subnet))
	}
	if o.registryPort < 0 || o.registryPort > 65535 {
		errs = append(errs, fmt.Errorf("--registry-port %d: out of range", o.registryPort))
	}
	if o.node == "" {
		errs = append(errs, errors.New("--node-name: empty"))
	}
	if o.readyTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--ready-timeout %v: must be positive", o.readyTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if o.cpBin == "" {
		d, err := controlplane.FindBinDir()
		if err != nil {
			return fmt.Errorf("--cp-bin: %w", err)
		}
		o.cpBin = d
	} else if err := controlplane.CheckBinaries(o.cpBin); err != nil {
		return fmt.Errorf("--cp-bin: %w", err)
	}
	if o.cellBin == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("--cell-bin: finding this executable: %w", err)
		}
		o.cellBin = filepath.Join(filepath.Dir(self), "kip-cell")
	}
	if st, err := os.Stat(o.cellBin); err != nil || st.IsDir() {
		return fmt.Errorf("--cell-bin %s: not found (go build -o bin/ ./cmd/... builds kip-cell next to kip)", o.cellBin)
	}
	var err error
	if o.home, err = filepath.Abs(o.home); err != nil {
		return fmt.Errorf("--home: %w", err)
	}
	if o.cellBin, err = filepath.Abs(o.cellBin); err != nil {
		return fmt.Errorf("--cell-bin: %w", err)
	}
	return nil
}

// up runs everything until ctx ends (the command's context ends on SIGINT/SIGTERM), then
// removes it all.
func (o *options) up(ctx context.Context) (err error) {
	o.started = time.Now()
	if err := o.validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(o.home, 0o700); err != nil {
		return fmt.Errorf("creating --home %s: %w", o.home, err)
	}
	if prev, err := readState(o.home); err != nil {
		return err
	} else if prev != nil {
		if prev.alive() {
			return fmt.Errorf("kip up is already running (pid %d) with --home %s; stop it, or run kip down", prev.PID, o.home)
		}
		o.step("removing leftovers of an earlier run that did not finish (kip down)")
		if err := down(context.WithoutCancel(ctx), o.home, prev, o.stderr); err != nil {
			return fmt.Errorf("cleaning up the earlier run: %w", err)
		}
	}
	st := layout(o.home, o.bridge, o.subnet, o.cellBin)
	if err := os.MkdirAll(st.LogDir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", st.LogDir, err)
	}
	if err := writeState(o.home, st); err != nil {
		return err
	}
	// From here on, whatever happens, remove what was made. The cleanup must outlive ctx,
	// which is already cancelled when Ctrl-C brought us here.
	var teardown []func(context.Context) error
	defer func() {
		o.step("stopping: removing cells, bridge, registry, control plane and files")
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
		defer cancel()
		var errs []error
		for i := len(teardown) - 1; i >= 0; i-- {
			if e := teardown[i](cctx); e != nil {
				errs = append(errs, e)
			}
		}
		keep := err != nil
		if keep {
			o.step("kept logs for you: %s and %s (kip down removes them)", st.LogDir, filepath.Join(st.ControlPlaneDir, "logs"))
		}
		if e := removeFiles(o.home, st, keep); e != nil {
			errs = append(errs, e)
		}
		if e := errors.Join(errs...); e != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up (run kip down --home %s to retry): %w", o.home, e))
			return
		}
		if !keep {
			o.step("stopped; everything kip up made is gone but the registry credentials, kept for the next run in %s", filepath.Join(o.home, RegistryAuthDir))
		}
	}()

	o.step("setting up bridge %s (%s)", o.bridge, o.subnet)
	backendLog, err := os.OpenFile(filepath.Join(st.LogDir, "local-backend.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening the local backend's log: %w", err)
	}
	teardown = append(teardown, func(context.Context) error { return backendLog.Close() })
	backend, err := local.New(local.Config{
		StateDir:     st.CellsDir,
		Bridge:       o.bridge,
		Subnet:       o.subnet,
		AgentCommand: []string{o.cellBin},
		Logger:       slog.New(slog.NewTextHandler(backendLog, nil)),
	})
	if err != nil {
		return fmt.Errorf("making the local backend: %w", err)
	}
	teardown = append(teardown, backend.Teardown)
	if err := backend.Setup(ctx); err != nil {
		return err
	}
	bridgeIP := backend.BridgeIP()

	// The API server listens on the bridge address, so that cells reach it through Service
	// `kubernetes` (its endpoint is this address), as pods on any node do.
	o.step("starting the control plane on %s (binaries in %s)", bridgeIP, o.cpBin)
	cp, err := controlplane.Start(ctx, controlplane.Options{BinDir: o.cpBin, Dir: st.ControlPlaneDir, Log: o.stderr, Address: bridgeIP})
	if err != nil {
		return err
	}
	teardown = append(teardown, func(context.Context) error { cp.Stop(); return nil })
	if err := copyFile(cp.AdminKubeconfig(), st.Kubeconfig); err != nil {
		return err
	}

	// Anyone (every cell) pulls; only this host pushes, with credentials made on the first
	// run and kept in authDir for the next ones.
	addr := net.JoinHostPort(bridgeIP.String(), strconv.Itoa(o.registryPort))
	authDir := filepath.Join(o.home, RegistryAuthDir)
	creds, err := registry.LoadOrMakeCredentials(authDir)
	if err != nil {
		return err
	}
	o.step("starting the registry on %s", addr)
	reg, err := registry.Start(addr, registry.WithDiskStorage(st.RegistryDir),
		registry.WithWriteAuth(creds), registry.WithHostOnlyWrites())
	if err != nil {
		return fmt.Errorf("starting the registry: %w", err)
	}
	teardown = append(teardown, func(context.Context) error { return reg.Close() })
	if err := registry.WriteDockerConfig(authDir, reg.Host(), creds); err != nil {
		return err
	}
	o.step("registry %s takes pushes from this host only, with the credentials in %s (DOCKER_CONFIG=%s)",
		reg.Host(), filepath.Join(authDir, registry.DockerConfigFile), authDir)
	if err := registry.SeedBusybox(ctx, reg.Host(), reg.Auth(), Seeded...); err != nil {
		return fmt.Errorf("seeding the registry: %w", err)
	}

	var clusterDNS []string
	if o.clusterDNS {
		o.step("deploying CoreDNS as kube-system/coredns behind Service kube-dns (%s)", clusterdns.ServiceIP)
		client, err := kubernetes.NewForConfig(cp.RESTConfig())
		if err != nil {
			return fmt.Errorf("deploying CoreDNS: %w", err)
		}
		if _, err := clusterdns.Deploy(ctx, client, clusterdns.DeployOptions{
			Build: clusterdns.BuildOptions{Log: o.step}, Registry: reg.Host(), RegistryAuth: reg.Auth(),
		}); err != nil {
			return fmt.Errorf("deploying CoreDNS (--cluster-dns=false runs without it): %w", err)
		}
		clusterDNS = []string{clusterdns.ServiceIP}
	}

	cfg := providerConfig(st, o.node, bridgeIP.String(), reg.Host(), clusterDNS)
	if err := os.WriteFile(st.Config, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", st.Config, err)
	}
	o.step("starting kip's provider (node %s on %s; log %s)", o.node, bridgeIP, filepath.Join(st.LogDir, "kip.log"))
	prov, err := startProvider(ctx, st, cfg, cp, backend)
	if err != nil {
		return err
	}
	teardown = append(teardown, prov.stop)
	if err := prov.waitReady(ctx, o.readyTimeout); err != nil {
		return err
	}

	fmt.Fprintf(o.stdout, "kip is up: export KUBECONFIG=%s  (registry %s; node %s; push with DOCKER_CONFIG=%s; Ctrl-C to stop)\n",
		st.Kubeconfig, reg.Host(), o.node, authDir)
	select {
	case <-ctx.Done():
		return nil
	case <-prov.done:
		return fmt.Errorf("kip's provider stopped: %w; log %s", prov.err(), filepath.Join(st.LogDir, "kip.log"))
	}
}

// providerConfig is kip's config for the local backend `kip up` set up.
func providerConfig(st *state, node, nodeIP, registryHost string, clusterDNS []string) string {
	return "# Written by kip up; removed when it stops.\n" + config.LocalSetup{
		Bridge: st.Bridge, Subnet: st.Subnet, StateDir: st.CellsDir, AgentPath: st.AgentPath,
		NodeName: node, NodeIP: nodeIP, Registry: registryHost, ClusterDNS: clusterDNS,
	}.YAML()
}

// removeFiles removes everything under home that kip up made, and home itself if empty.
// With keepLogs it leaves the logs (and the state file, so kip down finds them).
func removeFiles(home string, st *state, keepLogs bool) error {
	paths := []string{st.CellsDir, st.RegistryDir, st.Kubeconfig, st.Config}
	if !keepLogs {
		paths = append(paths, st.ControlPlaneDir, st.LogDir, filepath.Join(home, stateFile))
	}
	var errs []error
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	_ = os.Remove(home) // only when empty: the user may keep other files there
	return errors.Join(errs...)
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("copying kubeconfig: %w", err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		return fmt.Errorf("copying kubeconfig: %w", err)
	}
	return nil
}
