package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kip-dev/kip/internal/agent"
	"github.com/kip-dev/kip/internal/agent/gpu"
	"github.com/kip-dev/kip/internal/agent/image"
	"github.com/kip-dev/kip/internal/agent/imdsguard"
	"github.com/kip-dev/kip/internal/agent/pod"
	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cellenroll"
	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/logctx"
	"github.com/kip-dev/kip/internal/pki"
)

// Run runs the agent until ctx ends, then stops the pod (SIGTERM, its grace period, SIGKILL)
// and returns. It and the agent log to ctx's logger (logctx). args are the command line
// without the program name:
//
//	kip-cell --bootstrap FILE [--state-dir DIR] [--runc PATH] [--cgroup-parent NAME]
//	         [--backoff-base 10s] [--backoff-max 5m] [--services=true]
//	         [--image-store DIR] [--image-store-max-bytes N] [--start-slots N] [--start-fd N] [--ready-fd N]
//	         [--gpu-dev-root /dev] [--gpu-lib-dirs DIR,...] [--guard-metadata]
//	kip-cell enroll --bootstrap FILE [--state-dir DIR] [--timeout 15m]
//	kip-cell pull [--state-dir DIR] [--image-store DIR] [--default-registry HOST]
//	         [--insecure-registry HOST,...] REF...
//	kip-cell version
//
// The bootstrap carries the agent's certificate and key (the local backend), or a one-time
// enrollment token and kip's enrollment URL (cells booted from cloud user data): then the
// agent enrolls first (internal/cellenroll) and keeps its key and certificate in the state
// directory, where a restarted agent finds them. `kip-cell enroll` only enrolls, and exits.
// `kip-cell pull` unpacks images into the agent's image store and exits: what an image bake
// (deploy/ami/bake.sh) seeds the store with.
//
// A launcher that must place the agent in its cell's cgroups before it does anything adds
// --start-fd N (the local backend does): the agent first reads one byte from the inherited
// descriptor N, which the launcher writes once the agent is in place, and exits at once if
// the pipe closes without it (the launcher died first), so no agent runs outside its cell.
// With --ready-fd N it writes one byte on descriptor N once it listens, so that the launcher
// connects at once.
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	began := time.Now()
	if len(args) > 0 && args[0] == "version" {
		fmt.Fprintf(stdout, "kip-cell %s (cellapi %s)\n", agent.Version, cellapi.Version)
		return nil
	}
	if len(args) > 0 && args[0] == "enroll" {
		return runEnroll(ctx, args[1:], stdout)
	}
	if len(args) > 0 && args[0] == "pull" {
		return runPull(ctx, args[1:], stdout)
	}
	fs := flag.NewFlagSet("kip-cell", flag.ContinueOnError)
	fs.SetOutput(stdout)
	bootstrapFile := fs.String("bootstrap", "", "cellapi.Bootstrap JSON file (required)")
	stateDir := fs.String("state-dir", "/var/lib/kip-cell", "directory for images, runc state, pods and logs")
	runcPath := fs.String("runc", "", "runc binary (default: runc on PATH)")
	cgroupParent := fs.String("cgroup-parent", cgroups.PodsParent, "cgroup, relative to the agent's own (on cgroup v2: its parent), under which pods' cgroups go")
	backOffBase := fs.Duration("backoff-base", pod.DefaultBackOff.Base, "first restart and image-pull back-off (kubelet: 10s)")
	backOffMax := fs.Duration("backoff-max", pod.DefaultBackOff.Max, "longest back-off (kubelet: 5m)")
	imageStore := fs.String("image-store", "", "directory of unpacked images shared with the other agents of this host (the local backend's image store); empty: the agent's own, under --state-dir")
	imageStoreMax := fs.Int64("image-store-max-bytes", 0, "cap on the unpacked images in --image-store: unused ones are removed, least recently used first; 0: no cap")
	startSlots := fs.Int("start-slots", 0, "how many container starts may run at once across the agents sharing --image-store (flocked slots in its start-slots/); 0: no bound")
	services := fs.Bool("services", true, "program the cluster's Services and the pod's hostPorts (nftables) into this network namespace, the cell's; false refuses service tables and leaves hostPorts unmapped")
	gpuDevRoot := fs.String("gpu-dev-root", "/dev", "where the instance's GPU device nodes are (nvidia<N>, nvidiactl, kfd, dri/renderD<N>)")
	gpuLibDirs := fs.String("gpu-lib-dirs", "", "comma-separated directories of the NVIDIA driver's libraries (default: those ldconfig -p lists)")
	guardMetadata := fs.Bool("guard-metadata", false, "keep the pods from the cloud's instance metadata service (169.254.169.254) while the agent keeps it: an nftables rule on the pods' cgroup (cloud cells; kip's user data sets it)")
	startFD := fs.Int("start-fd", -1, "for launchers: before anything else, wait for one byte on this inherited descriptor; exit if it closes without one")
	readyFD := fs.Int("ready-fd", -1, "for launchers: write one byte on this inherited descriptor, and close it, once the agent listens")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *startFD >= 0 {
		if err := awaitStart(*startFD); err != nil {
			return err
		}
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *backOffBase <= 0 || *backOffMax < *backOffBase {
		return fmt.Errorf("flags --backoff-base %s and --backoff-max %s: need 0 < base <= max", *backOffBase, *backOffMax)
	}
	if *imageStoreMax < 0 {
		return fmt.Errorf("flag --image-store-max-bytes %d: must not be negative", *imageStoreMax)
	}
	if *bootstrapFile == "" {
		return errors.New("flag --bootstrap is required")
	}
	log := logctx.From(ctx)

	bs, err := loadBootstrap(*bootstrapFile)
	if err != nil {
		return err
	}
	cert, key, err := identity(ctx, bs, *stateDir)
	if err != nil {
		return err
	}
	// The serving certificate is renewed in place by kip (cellapi.CertPath) before it
	// expires; new connections get the current one.
	serving, err := pki.NewServingCert(bs.CACert, cert, key)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	tlsConfig, err := pki.ServerTLSFunc(bs.CACert, serving.GetCertificate)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	images, err := image.NewStore(image.Config{
		Root:             filepath.Join(*stateDir, "images"),
		Shared:           *imageStore,
		MaxSharedBytes:   *imageStoreMax,
		DefaultRegistry:  bs.Registry.DefaultRegistry,
		Insecure:         bs.Registry.Insecure,
		MaxUnpackedBytes: bs.Registry.MaxUnpackedBytes,
	})
	if err != nil {
		return fmt.Errorf("opening image store: %w", err)
	}
	// runc's state and the bundles hold containers' env, secrets included: memory only.
	runDir := filepath.Join(*stateDir, "run")
	if err := agent.MountRunDir(runDir); err != nil {
		return err
	}
	defer agent.UnmountRunDir(runDir)
	runc, err := runtime.NewRunc(*runcPath, filepath.Join(runDir, "runc"))
	if err != nil {
		return err
	}
	var rt runtime.Runtime = runc
	if *startSlots > 0 && *imageStore != "" {
		if rt, err = runtime.WithStartSlots(runc, filepath.Join(*imageStore, "start-slots"), *startSlots); err != nil {
			return err
		}
	}
	cg, err := cgroups.Open("/sys/fs/cgroup", "/proc/self/cgroup")
	if err != nil {
		return err
	}
	var guard agent.MetadataGuard
	if *guardMetadata {
		guard = imdsguard.New(cg, *cgroupParent, nil)
	}
	var rules agent.ServiceRules
	var hostPorts agent.HostPortRules
	if *services {
		// kip-cell runs inside its cell's network namespace: the pod's, which it shares.
		p := svcproxy.New()
		rules, hostPorts = p, p
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the agent's executable (pod sandboxes run it): %w", err)
	}
	ag, err := agent.New(ctx, agent.Config{
		SandboxBinary: self,
		CellID:        bs.CellID,
		StateDir:      *stateDir,
		RunDir:        filepath.Join(runDir, "bundles"),
		Runtime:       rt,
		Images:        images,
		Cgroups:       cg,
		CgroupParent:  *cgroupParent,
		BackOff:       pod.BackOff{Base: *backOffBase, Max: *backOffMax, Reset: pod.DefaultBackOff.Reset},
		PodIP:         podIP(),
		Services:      rules,
		HostPorts:     hostPorts,
		GPU:           gpu.Config{DevRoot: *gpuDevRoot, LibDirs: splitList(*gpuLibDirs)},
		Metadata:      guard,
	})
	if err != nil {
		return err
	}
	addr := listenAddr(bs.ListenAddr)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           cellapi.Handler(ag, cellapi.HandlerOptions{Logger: log, Certs: cellapi.ServingCertRotator(serving)}),
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if *readyFD >= 0 {
		signalReady(*readyFD)
	}
	log.Info("cell agent serving", "cell", bs.CellID, "addr", ln.Addr().String(), "version", agent.Version, "startup", time.Since(began))

	g, gctx := errgroup.WithContext(ctx)
	// A spot cell's agent watches for the cloud's interruption notice (none on a local cell).
	g.Go(func() error { ag.WatchSpot(gctx, agent.SpotConfig{Instance: bs.Instance}); return nil })
	g.Go(func() error {
		if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down: stopping the pod")
		// Stop the pod first, while kip can still watch it go; then the server.
		err := ag.Shutdown(context.Background())
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = srv.Close()
		return err
	})
	return g.Wait()
}

// splitList splits a comma-separated flag, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// awaitStart blocks until the launcher writes one byte on descriptor fd, then closes it (no
// child inherits it). A pipe closed without that byte means the launcher died before the
// agent was in its cell: the agent must not run.
func awaitStart(fd int) error {
	f := os.NewFile(uintptr(fd), "start-fd")
	if f == nil {
		return fmt.Errorf("flag --start-fd %d: not a descriptor", fd)
	}
	defer f.Close()
	var b [1]byte
	if n, err := f.Read(b[:]); n != 1 {
		return fmt.Errorf("flag --start-fd %d: the launcher went away before releasing the agent (%v); not starting", fd, err)
	}
	return nil
}

// signalReady writes one byte on descriptor fd and closes it: the launcher connects once it
// reads it (or sees the pipe close, when the agent exits) instead of polling. A launcher gone
// meanwhile is no error.
func signalReady(fd int) {
	if f := os.NewFile(uintptr(fd), "ready-fd"); f != nil {
		_, _ = f.Write([]byte{1})
		_ = f.Close()
	}
}

// loadBootstrap strictly decodes and checks the bootstrap file.
func loadBootstrap(path string) (*cellapi.Bootstrap, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading bootstrap: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var bs cellapi.Bootstrap
	if err := dec.Decode(&bs); err != nil {
		return nil, fmt.Errorf("decoding bootstrap %s: %w", path, err)
	}
	switch {
	case bs.CellID == "":
		return nil, fmt.Errorf("bootstrap %s: field cellID is required", path)
	case len(bs.CACert) == 0:
		return nil, fmt.Errorf("bootstrap %s: field caCert is required", path)
	case bs.EnrollToken != "" || bs.EnrollURL != "":
		if len(bs.Cert) > 0 || len(bs.Key) > 0 {
			return nil, fmt.Errorf("bootstrap %s: fields cert and key, or enrollToken and enrollURL, not both", path)
		}
		if bs.EnrollToken == "" || bs.EnrollURL == "" {
			return nil, fmt.Errorf("bootstrap %s: fields enrollToken and enrollURL go together", path)
		}
	case len(bs.Cert) == 0 || len(bs.Key) == 0:
		return nil, fmt.Errorf("bootstrap %s: fields cert and key (or enrollToken and enrollURL) are required", path)
	}
	return &bs, nil
}

// identity returns the agent's serving certificate and key: the bootstrap's, else the ones
// enrollment keeps in stateDir, enrolling first when there are none.
func identity(ctx context.Context, bs *cellapi.Bootstrap, stateDir string) (cert, key []byte, err error) {
	if bs.EnrollToken == "" {
		return bs.Cert, bs.Key, nil
	}
	cert, key, err = cellenroll.Enroll(ctx, cellenroll.Config{
		URL: bs.EnrollURL, Token: bs.EnrollToken, CellID: bs.CellID, CACert: bs.CACert, Dir: stateDir,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("cell %s: %w", bs.CellID, err)
	}
	return cert, key, nil
}

// runEnroll is `kip-cell enroll`: enroll (or find the identity kept from an earlier
// enrollment) and exit.
func runEnroll(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("kip-cell enroll", flag.ContinueOnError)
	fs.SetOutput(stdout)
	bootstrapFile := fs.String("bootstrap", "", "cellapi.Bootstrap JSON file with enrollToken and enrollURL (required)")
	stateDir := fs.String("state-dir", "/var/lib/kip-cell", "the agent's state directory, where its key and certificate are kept")
	timeout := fs.Duration("timeout", 15*time.Minute, "give up when kip cannot be reached for this long (kip's tokens expire after cloud.aws.bootstrap.tokenTTL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *bootstrapFile == "" {
		return errors.New("flag --bootstrap is required")
	}
	bs, err := loadBootstrap(*bootstrapFile)
	if err != nil {
		return err
	}
	if bs.EnrollToken == "" {
		return fmt.Errorf("bootstrap %s: no enrollToken: nothing to enroll with", *bootstrapFile)
	}
	if _, _, err := identity(ctx, bs, *stateDir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "cell %s: enrolled; key and certificate in %s\n", bs.CellID, *stateDir)
	return nil
}

// runPull is `kip-cell pull`: pull and unpack each reference (anonymously, for this
// machine's architecture) into the store the agent opens with the same flags, and exit.
func runPull(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("kip-cell pull", flag.ContinueOnError)
	fs.SetOutput(stdout)
	stateDir := fs.String("state-dir", "/var/lib/kip-cell", "the agent's state directory; the images go to its images/ unless --image-store is set")
	imageStore := fs.String("image-store", "", "the shared image store the agent is run with (kip-cell --image-store); empty: the agent's own")
	defaultRegistry := fs.String("default-registry", "", "registry for unqualified names (default docker.io)")
	insecure := fs.String("insecure-registry", "", "comma-separated registries (host or host:port) reached over plain HTTP")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("kip-cell pull: name at least one image")
	}
	images, err := image.NewStore(image.Config{
		Root:            filepath.Join(*stateDir, "images"),
		Shared:          *imageStore,
		DefaultRegistry: *defaultRegistry,
		Insecure:        splitList(*insecure),
	})
	if err != nil {
		return fmt.Errorf("opening image store: %w", err)
	}
	for _, ref := range fs.Args() {
		img, err := images.Pull(ctx, ref, nil)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "pulled %s as %s\n", ref, img.ImageID)
	}
	return nil
}

// listenAddr is the bootstrap's address, else the default port on every interface — except
// in the local backend's process-only mode, where all cells share the host's interfaces and
// each agent binds its own loopback address ($KIP_CELL_IP) so that they do not clash.
func listenAddr(configured string) string {
	if configured != "" {
		return configured
	}
	if ip := net.ParseIP(os.Getenv("KIP_CELL_IP")); ip != nil && ip.IsLoopback() {
		return net.JoinHostPort(ip.String(), strconv.Itoa(cellapi.DefaultPort))
	}
	return fmt.Sprintf(":%d", cellapi.DefaultPort)
}

// podIP returns the cell's address: $KIP_CELL_IP when the backend set it (the local
// backend does; in its process-only mode every cell shares the host's interfaces), else the
// first global IPv4 address, "" when there is none.
func podIP() string {
	if ip := net.ParseIP(os.Getenv("KIP_CELL_IP")); ip != nil {
		return ip.String()
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
			return ipn.IP.String()
		}
	}
	return ""
}
