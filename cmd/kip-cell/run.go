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
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kip-dev/kip/internal/agent"
	"github.com/kip-dev/kip/internal/agent/image"
	"github.com/kip-dev/kip/internal/agent/pod"
	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
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
//	kip-cell version
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) > 0 && args[0] == "version" {
		fmt.Fprintf(stdout, "kip-cell %s (cellapi %s)\n", agent.Version, cellapi.Version)
		return nil
	}
	fs := flag.NewFlagSet("kip-cell", flag.ContinueOnError)
	fs.SetOutput(stdout)
	bootstrapFile := fs.String("bootstrap", "", "cellapi.Bootstrap JSON file (required)")
	stateDir := fs.String("state-dir", "/var/lib/kip-cell", "directory for images, runc state, pods and logs")
	runcPath := fs.String("runc", "", "runc binary (default: runc on PATH)")
	cgroupParent := fs.String("cgroup-parent", cgroups.PodsParent, "cgroup, relative to the agent's own (on cgroup v2: its parent), under which pods' cgroups go")
	backOffBase := fs.Duration("backoff-base", pod.DefaultBackOff.Base, "first restart and image-pull back-off (kubelet: 10s)")
	backOffMax := fs.Duration("backoff-max", pod.DefaultBackOff.Max, "longest back-off (kubelet: 5m)")
	services := fs.Bool("services", true, "program the cluster's Services and the pod's hostPorts (nftables) into this network namespace, the cell's; false refuses service tables and leaves hostPorts unmapped")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *backOffBase <= 0 || *backOffMax < *backOffBase {
		return fmt.Errorf("flags --backoff-base %s and --backoff-max %s: need 0 < base <= max", *backOffBase, *backOffMax)
	}
	if *bootstrapFile == "" {
		return errors.New("flag --bootstrap is required")
	}
	log := logctx.From(ctx)

	bs, err := loadBootstrap(*bootstrapFile)
	if err != nil {
		return err
	}
	// The serving certificate is renewed in place by kip (cellapi.CertPath) before it
	// expires; new connections get the current one.
	serving, err := pki.NewServingCert(bs.CACert, bs.Cert, bs.Key)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	tlsConfig, err := pki.ServerTLSFunc(bs.CACert, serving.GetCertificate)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	images, err := image.NewStore(image.Config{
		Root:             filepath.Join(*stateDir, "images"),
		DefaultRegistry:  bs.Registry.DefaultRegistry,
		Insecure:         bs.Registry.Insecure,
		MaxUnpackedBytes: bs.Registry.MaxUnpackedBytes,
	})
	if err != nil {
		return fmt.Errorf("opening image store: %w", err)
	}
	rt, err := runtime.NewRunc(*runcPath, filepath.Join(*stateDir, "runc"))
	if err != nil {
		return err
	}
	cg, err := cgroups.Open("/sys/fs/cgroup", "/proc/self/cgroup")
	if err != nil {
		return err
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
		Runtime:       rt,
		Images:        images,
		Cgroups:       cg,
		CgroupParent:  *cgroupParent,
		BackOff:       pod.BackOff{Base: *backOffBase, Max: *backOffMax, Reset: pod.DefaultBackOff.Reset},
		PodIP:         podIP(),
		Services:      rules,
		HostPorts:     hostPorts,
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
	log.Info("cell agent serving", "cell", bs.CellID, "addr", ln.Addr().String(), "version", agent.Version)

	g, gctx := errgroup.WithContext(ctx)
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
	case len(bs.Cert) == 0 || len(bs.Key) == 0:
		return nil, fmt.Errorf("bootstrap %s: fields cert and key are required", path)
	}
	return &bs, nil
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
