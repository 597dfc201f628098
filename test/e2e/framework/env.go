// Package framework brings up everything Kip's end-to-end tests run against — a real control
// plane (internal/controlplane), the local backend's bridge, an OCI registry on the bridge
// address seeded with busybox images, and kip itself as a subprocess (bin/kip run) that tests
// may kill and restart — and gives tests helpers that wait on watches, run the built kubectl,
// and check that no cell is left behind.
//
// The tests that use it live in test/e2e behind the `e2e` build tag; this package has no tag
// so that `go vet ./...` checks it.
package framework

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/local"
	"github.com/kip-dev/kip/internal/clusterdns"
	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/controlplane"
	"github.com/kip-dev/kip/internal/registry"
	"github.com/kip-dev/kip/internal/testenv"
)

// BinEnv names the variable holding the directory of the built kip and kip-cell binaries.
const BinEnv = "KIP_BIN"

// KeepEnv, set to 1, keeps the working directory (logs, certificates) after the run.
const KeepEnv = "KIP_E2E_KEEP"

// SeededImages are pushed to the registry at start. Unqualified names resolve to
// "<registry>/library/<name>", so `busybox`, `nginx` (busybox httpd on :80) and the long-running
// `foo`, `bar`, `baz` that virtual-kubelet's suite uses all pull from it.
var SeededImages = []string{
	"library/busybox:latest", "library/nginx:latest",
	"library/foo:latest", "library/bar:latest", "library/baz:latest",
}

// Env is one running end-to-end environment.
type Env struct {
	// Dir holds everything the environment writes (control plane, cell state, kip's
	// config and logs). Removed by Teardown unless KIP_E2E_KEEP=1.
	Dir      string
	CP       *controlplane.ControlPlane
	Client   kubernetes.Interface
	Dynamic  dynamic.Interface
	Backend  *local.Backend
	Registry *registry.Registry
	Kip      *Kip
	// NodeName is the virtual node's name; ClusterName tags every cell kip launches.
	NodeName, ClusterName string
	// Bridge is the local backend's bridge; BridgeIP is the node's InternalIP (unless
	// Options.NodeIP; NodeIP is the one in use).
	Bridge           string
	BridgeIP, NodeIP net.IP
	// BinDir holds kip and kip-cell; CPBin the control plane binaries.
	BinDir, CPBin string
	// ClusterDNS is kip's clusterDNS (Options.ClusterDNS), empty without it.
	ClusterDNS []string
	// SeccompProfileRoot is kip's node.seccompProfileRoot: tests write Localhost seccomp
	// profiles here.
	SeccompProfileRoot string
	// AllowPrivileged is kip's node.allowPrivileged (Options.AllowPrivileged).
	AllowPrivileged bool

	log io.Writer

	mu   sync.Mutex
	seen map[string]bool // IDs of every cell Cells has returned
}

// Options configure Setup.
type Options struct {
	// Log receives progress lines; default os.Stderr.
	Log io.Writer
	// ExtraConfig is YAML appended verbatim to kip's config (under no key: give whole
	// sections, e.g. "cells:\n  healthyTimeout: 30s\n").
	ExtraConfig string
	// KipArgs are extra arguments to `kip run`.
	KipArgs []string
	// ClusterDNS gives kip clusterDNS = kube-dns's cluster IP (clusterdns.ServiceIP), as kip up
	// does, so ClusterFirst pods get the cluster's resolv.conf. CoreDNS itself is deployed by
	// the tests that need it (DeployClusterDNS), so no cell outlives them.
	ClusterDNS bool
	// SecurityGroups are the local backend's named groups (cloud.local.securityGroups) pods
	// may name in pod.kip.dev/security-groups; cells of pods that name none stay open.
	SecurityGroups []config.LocalSecurityGroup
	// AllowPrivileged sets kip's node.allowPrivileged: privileged containers run.
	AllowPrivileged bool
	// Config, when set, replaces kip's local-backend config: it is called once the bridge, the
	// control plane and the registry run, and returns kip's whole config (ExtraConfig is still
	// appended). The AWS test uses it to point kip at the EC2 fake.
	Config func(e *Env) string
	// KipEnv are extra environment variables (KEY=value) of the kip process.
	KipEnv []string
	// NodeIP is kip's node.internalIP when Config sets another than the bridge's address:
	// Setup waits for the kubelet API there.
	NodeIP net.IP
}

// Missing returns why the end-to-end tier cannot run on this machine, or nil: it needs root
// with network namespaces, the control plane binaries and the kip binaries.
func Missing() error {
	if err := testenv.NetnsError(); err != nil {
		return err
	}
	if _, err := controlplane.FindBinDir(); err != nil {
		return err
	}
	_, err := binDir()
	return err
}

func binDir() (string, error) {
	d := os.Getenv(BinEnv)
	if d == "" {
		return "", fmt.Errorf("$%s is unset: build the binaries (go build -o bin/ ./cmd/...) and set %s=$PWD/bin", BinEnv, BinEnv)
	}
	for _, b := range []string{"kip", "kip-cell"} {
		if _, err := os.Stat(filepath.Join(d, b)); err != nil {
			return "", fmt.Errorf("$%s=%s has no %s: go build -o bin/ ./cmd/...", BinEnv, d, b)
		}
	}
	return filepath.Abs(d)
}

// Setup starts the control plane, the bridge, the registry and kip, and waits for the virtual
// node to be Ready. On error everything already started is torn down.
func Setup(ctx context.Context, o Options) (env *Env, err error) {
	if o.Log == nil {
		o.Log = os.Stderr
	}
	if err := testenv.NetnsError(); err != nil {
		return nil, err
	}
	cpBin, err := controlplane.FindBinDir()
	if err != nil {
		return nil, err
	}
	bins, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kip-e2e-")
	if err != nil {
		return nil, fmt.Errorf("making e2e dir: %w", err)
	}
	tag, third, err := randomTag()
	if err != nil {
		return nil, err
	}
	env = &Env{
		Dir:         dir,
		NodeName:    "kip-e2e",
		ClusterName: "e2e" + tag,
		Bridge:      "kipe2e" + tag,
		BinDir:      bins,
		CPBin:       cpBin,
		log:         o.Log,
	}
	defer func() {
		if err != nil {
			env.Teardown(context.Background())
			env = nil
		}
	}()
	env.logf("working directory %s (set %s=1 to keep it)", dir, KeepEnv)

	subnet := fmt.Sprintf("10.250.%d.0/24", third)
	env.logf("setting up bridge %s on %s", env.Bridge, subnet)
	env.Backend, err = local.New(local.Config{
		StateDir:     filepath.Join(dir, "cells"),
		Bridge:       env.Bridge,
		Subnet:       subnet,
		AgentCommand: []string{filepath.Join(bins, "kip-cell")},
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return env, fmt.Errorf("making local backend: %w", err)
	}
	if err := env.Backend.Setup(ctx); err != nil {
		return env, err
	}
	env.BridgeIP = env.Backend.BridgeIP()
	env.NodeIP = env.BridgeIP
	if o.NodeIP != nil {
		env.NodeIP = o.NodeIP
	}

	// The API server listens on the bridge address, so that cells reach it (Service
	// `kubernetes`, in-cluster config), as `kip up` does.
	env.CP, err = controlplane.Start(ctx, controlplane.Options{BinDir: cpBin, Dir: filepath.Join(dir, "cp"), Log: o.Log, Address: env.BridgeIP})
	if err != nil {
		return env, err
	}
	if env.Client, err = kubernetes.NewForConfig(env.CP.RESTConfig()); err != nil {
		return env, fmt.Errorf("making clientset: %w", err)
	}
	if env.Dynamic, err = dynamic.NewForConfig(env.CP.RESTConfig()); err != nil {
		return env, fmt.Errorf("making dynamic client: %w", err)
	}

	// As kip up's: anyone pulls, only this host pushes, with the credentials.
	regCreds, err := registry.NewCredentials()
	if err != nil {
		return env, err
	}
	env.Registry, err = registry.Start(net.JoinHostPort(env.BridgeIP.String(), "0"),
		registry.WithDiskStorage(filepath.Join(dir, "registry")),
		registry.WithWriteAuth(regCreds), registry.WithHostOnlyWrites())
	if err != nil {
		return env, fmt.Errorf("starting registry: %w", err)
	}
	env.logf("seeding registry %s with %s", env.Registry.Host(), strings.Join(SeededImages, ", "))
	if err := registry.SeedBusybox(ctx, env.Registry.Host(), env.Registry.Auth(), SeededImages...); err != nil {
		return env, fmt.Errorf("seeding registry: %w", err)
	}

	if o.ClusterDNS {
		env.ClusterDNS = []string{clusterdns.ServiceIP}
	}
	env.AllowPrivileged = o.AllowPrivileged
	env.SeccompProfileRoot = filepath.Join(dir, "seccomp")
	if err := os.MkdirAll(env.SeccompProfileRoot, 0o755); err != nil {
		return env, fmt.Errorf("creating the seccomp profile root: %w", err)
	}
	cfgPath := filepath.Join(dir, "kip.yaml")
	cfg := env.kipConfig(subnet, o.SecurityGroups)
	if o.Config != nil {
		cfg = o.Config(env)
	}
	if err := os.WriteFile(cfgPath, []byte(cfg+o.ExtraConfig), 0o600); err != nil {
		return env, fmt.Errorf("writing kip config: %w", err)
	}
	env.Kip = &Kip{
		Bin:        filepath.Join(bins, "kip"),
		Config:     cfgPath,
		Kubeconfig: env.CP.AdminKubeconfig(),
		LogDir:     filepath.Join(dir, "kip-logs"),
		Args:       o.KipArgs,
		Env:        o.KipEnv,
		env:        env,
	}
	if err := env.Kip.Start(ctx); err != nil {
		return env, err
	}
	return env, nil
}

// kipConfig is the provider config kip runs with: the local backend on this environment's
// bridge, the node's address on it, and the seeded registry as the default registry.
func (e *Env) kipConfig(subnet string, groups []config.LocalSecurityGroup) string {
	return config.LocalSetup{
		Bridge: e.Bridge, Subnet: subnet, StateDir: filepath.Join(e.Dir, "cells"), AgentPath: filepath.Join(e.BinDir, "kip-cell"),
		NodeName: e.NodeName, NodeIP: e.BridgeIP.String(), ClusterName: e.ClusterName, Registry: e.Registry.Host(),
		ClusterDNS:      e.ClusterDNS,
		SecurityGroups:  groups,
		AllowPrivileged: e.AllowPrivileged, SeccompProfileRoot: e.SeccompProfileRoot,
	}.YAML()
}

// DeployClusterDNS deploys CoreDNS as kip up does (built once, cached under ~/.cache/kip,
// pushed to this environment's registry) and returns its objects for clusterdns.Delete. It
// does not wait for CoreDNS to be ready.
func (e *Env) DeployClusterDNS(ctx context.Context) ([]runtime.Object, error) {
	if len(e.ClusterDNS) == 0 {
		return nil, fmt.Errorf("the environment was set up without Options.ClusterDNS: kip gives pods no cluster DNS")
	}
	return clusterdns.Deploy(ctx, e.Client, clusterdns.DeployOptions{
		Build:        clusterdns.BuildOptions{Log: e.logf},
		Registry:     e.Registry.Host(),
		RegistryAuth: e.Registry.Auth(),
	})
}

// Teardown stops kip, terminates any cell still there, removes the bridge, stops the
// registry and the control plane, and removes Dir (unless KIP_E2E_KEEP=1). It reports what
// it could not clean.
func (e *Env) Teardown(ctx context.Context) error {
	var errs []error
	if e.Kip != nil {
		if err := e.Kip.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if e.Backend != nil {
		if err := e.Backend.Teardown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if e.Registry != nil {
		_ = e.Registry.Close()
	}
	if e.CP != nil {
		e.CP.Stop()
	}
	if os.Getenv(KeepEnv) == "1" {
		e.logf("kept %s", e.Dir)
	} else if e.Dir != "" {
		if err := os.RemoveAll(e.Dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", e.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// Cells lists the live cells in this environment's state directory (every cell kip made
// here), narrowed to those carrying all of tags (nil: all of them).
func (e *Env) Cells(ctx context.Context, tags map[string]string) ([]*cloud.Instance, error) {
	cells, err := e.Backend.List(ctx, tags)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.seen == nil {
		e.seen = map[string]bool{}
	}
	for _, c := range cells {
		e.seen[c.ID] = true
	}
	return cells, err
}

// SeenCells returns the IDs of every cell Cells has returned so far.
func (e *Env) SeenCells() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	ids := make([]string, 0, len(e.seen))
	for id := range e.seen {
		ids = append(ids, id)
	}
	return ids
}

func (e *Env) logf(format string, args ...any) {
	fmt.Fprintf(e.log, "[e2e %s] %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// randomTag returns 4 hex characters for names and a random third octet for the subnet,
// so concurrent test binaries of other packages never share a bridge or a subnet.
func randomTag() (string, int, error) {
	b := make([]byte, 2)
	if _, err := rand.Read(b); err != nil {
		return "", 0, fmt.Errorf("reading random tag: %w", err)
	}
	third, err := freeThirdOctet()
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(b), third, nil
}

// FreeSubnet returns a random 10.250.X.0/24 that no interface on this host has an address
// in (another test's bridge, or this run's own), for a second local VPC such as kip up's.
func FreeSubnet() (string, error) {
	third, err := freeThirdOctet()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("10.250.%d.0/24", third), nil
}

func freeThirdOctet() (int, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return 0, fmt.Errorf("listing host addresses: %w", err)
	}
	for range 100 {
		n, err := rand.Int(rand.Reader, big.NewInt(150))
		if err != nil {
			return 0, fmt.Errorf("reading random subnet: %w", err)
		}
		third := 100 + int(n.Int64())
		_, subnet, _ := net.ParseCIDR(fmt.Sprintf("10.250.%d.0/24", third))
		used := false
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && subnet.Contains(ipn.IP) {
				used = true
				break
			}
		}
		if !used {
			return third, nil
		}
	}
	return 0, fmt.Errorf("no free 10.250.X.0/24 subnet for a test bridge")
}
