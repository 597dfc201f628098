package kipnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kip-dev/kip/internal/cellboot"
	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/enroll"
	"github.com/kip-dev/kip/internal/pki"
)

// enrollLedgerNamespace holds the Secret recording spent enrollment tokens, beside kip's CA.
const enrollLedgerNamespace = "kube-system"

// cellBoot is what AWS cells boot from: kip's artifact and enrollment server, its listener
// (bound before the backend is made, so the advertised URL and its port are known), and the
// artifacts with the hashes pinned in every cell's user data.
type cellBoot struct {
	ln        net.Listener
	url       string // as cells reach it
	artifacts []*enroll.Artifact
	renderer  *cellboot.Renderer
	log       *slog.Logger
}

// prepareCellBoot opens and hashes the artifacts of cloud.aws.bootstrap and binds its listener.
func (r *runner) prepareCellBoot() (cb *cellBoot, err error) {
	c := r.cfg.Cloud.AWS.Bootstrap
	agents, err := bootPaths(c.AgentPaths, "agentPaths", func() (string, error) {
		self, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("this executable's path is unknown: %w", err)
		}
		return filepath.Join(filepath.Dir(self), "kip-cell"), nil
	})
	if err != nil {
		return nil, err
	}
	runcs, err := bootPaths(c.RuncPaths, "runcPaths", func() (string, error) { return exec.LookPath("runc") })
	if err != nil {
		return nil, err
	}
	cb = &cellBoot{log: r.log.With("component", "cell-enrollment")}
	defer func() {
		if err != nil {
			cb.close()
		}
	}()
	ln, err := net.Listen("tcp", c.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("starting kip: cloud.aws.bootstrap.listenAddr: %w", err)
	}
	cb.ln = ln
	cb.url = strings.TrimSuffix(c.AdvertiseURL, "/")
	if cb.url == "" {
		ip := r.cfg.Node.InternalIP
		if ip == "" {
			addrs := r.interfaceAddrs
			if addrs == nil {
				addrs = net.InterfaceAddrs
			}
			ip = hostIP(os.Getenv("POD_IP"), addrs)
		}
		if ip == "" {
			return nil, errors.New("starting kip: cloud.aws.bootstrap.advertiseURL: empty, and node.internalIP is empty and no host address was found")
		}
		cb.url = "https://" + net.JoinHostPort(ip, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	}
	base, trustKip := cb.url+enroll.ArtifactsPath, true
	if c.ArtifactURL != "" {
		base, trustKip = strings.TrimSuffix(c.ArtifactURL, "/")+"/", false
	}
	cb.renderer = &cellboot.Renderer{TrustKipCA: trustKip}
	for _, arch := range []string{"amd64", "arm64"} {
		agent, runc := agents[arch], runcs[arch]
		if agent == "" && runc == "" {
			continue
		}
		if agent == "" || runc == "" {
			return nil, fmt.Errorf("starting kip: cloud.aws.bootstrap: %s has a kip-cell (agentPaths) or a runc (runcPaths) but not both", arch)
		}
		a := cellboot.Arch{Arch: arch}
		for _, f := range []struct {
			name, path, field string
			to                *cellboot.Artifact
		}{{"kip-cell-" + arch, agent, "agentPaths", &a.KipCell}, {"runc-" + arch, runc, "runcPaths", &a.Runc}} {
			art, err := enroll.OpenArtifact(f.name, f.path)
			if err != nil {
				return nil, fmt.Errorf("starting kip: cloud.aws.bootstrap.%s[%s]: %w", f.field, arch, err)
			}
			cb.artifacts = append(cb.artifacts, art)
			*f.to = cellboot.Artifact{URL: base + f.name, SHA256: art.SHA256}
		}
		cb.renderer.Archs = append(cb.renderer.Archs, a)
		cb.log.Info("cell artifacts", "arch", arch, "kip-cell", agent, "kip-cell.sha256", a.KipCell.SHA256, "runc", runc, "runc.sha256", a.Runc.SHA256)
	}
	return cb, nil
}

// bootPaths is the configured arch → path map, or kip's own architecture → def().
func bootPaths(configured map[string]string, field string, def func() (string, error)) (map[string]string, error) {
	if len(configured) > 0 {
		return configured, nil
	}
	p, err := def()
	if err != nil {
		return nil, fmt.Errorf("starting kip: cloud.aws.bootstrap.%s is empty and the default for %s: %w", field, runtime.GOARCH, err)
	}
	return map[string]string{runtime.GOARCH: p}, nil
}

// serve starts the server with kip's CA (until ctx ends) and returns what cells need to
// enroll against it.
func (cb *cellBoot) serve(ctx context.Context, ca *pki.CA, ttl time.Duration, ledger enroll.Ledger) (*cells.Enrollment, error) {
	tokens, err := enroll.NewTokens(ca, ttl, nil)
	if err != nil {
		return nil, fmt.Errorf("starting kip: %w", err)
	}
	u, err := url.Parse(cb.url)
	if err != nil {
		return nil, fmt.Errorf("starting kip: cloud.aws.bootstrap.advertiseURL: %w", err)
	}
	hosts := []string{u.Hostname()}
	if h, _, _ := net.SplitHostPort(cb.ln.Addr().String()); h != "" && !slices.Contains(hosts, h) && !net.ParseIP(h).IsUnspecified() {
		hosts = append(hosts, h)
	}
	certPEM, keyPEM, err := enroll.ServingCert(ca, hosts)
	if err != nil {
		return nil, fmt.Errorf("starting kip: the enrollment server's certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("starting kip: the enrollment server's certificate: %w", err)
	}
	srv := &http.Server{
		Handler:           enroll.Handler(enroll.Config{CA: ca, Tokens: tokens, Ledger: ledger, Artifacts: cb.artifacts, Log: cb.log}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(cb.log.Handler(), slog.LevelDebug),
	}
	go func() {
		// net.ErrClosed: the backend was released (its listener closed) before ctx ended.
		if err := srv.ServeTLS(cb.ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			cb.log.Error("the cell enrollment server stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	cb.log.Info("serving cell artifacts and enrollment", "addr", cb.ln.Addr().String(), "url", cb.url, "tokenTTL", tokens.TTL().String())
	return &cells.Enrollment{Mint: tokens.Mint, URL: cb.url}, nil
}

// close releases the listener and the artifacts.
func (cb *cellBoot) close() {
	if cb.ln != nil {
		cb.ln.Close()
	}
	for _, a := range cb.artifacts {
		a.Close()
	}
}
