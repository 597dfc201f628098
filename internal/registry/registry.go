// Package registry runs an OCI registry in process (go-containerregistry's pkg/registry) for
// tests and the local demo, and pushes images to it over plain HTTP. Started WithWriteAuth
// and WithHostOnlyWrites (as kip up and the e2e suites do), anyone may pull but only the
// host, with the credentials, may push.
//
// Cells cannot reach the host's loopback, so a registry that cells pull from must listen on
// the bridge address ("10.250.0.1:0"), and cells must list its host as insecure.
package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Registry is a running registry.
type Registry struct {
	host      string
	srv       *http.Server
	done      chan error
	closeOnce sync.Once
	closeErr  error
	creds     *Credentials
}

// Option configures Start.
type Option func(*options)

type options struct {
	dir      string
	logger   *log.Logger
	wrapper  func(http.Handler) http.Handler
	creds    *Credentials
	hostOnly bool
}

// WithDiskStorage keeps blobs under dir (created if missing) instead of memory. Manifests are
// always kept in memory.
func WithDiskStorage(dir string) Option { return func(o *options) { o.dir = dir } }

// WithLogger sends the registry's request log to l; by default it is discarded.
func WithLogger(l *log.Logger) Option { return func(o *options) { o.logger = l } }

// WithHandlerWrapper wraps the registry's handler, e.g. to require authentication in tests.
func WithHandlerWrapper(wrap func(http.Handler) http.Handler) Option {
	return func(o *options) { o.wrapper = wrap }
}

// Start serves a registry on addr ("10.250.0.1:0" picks a free port) until Close.
func Start(addr string, opts ...Option) (*Registry, error) {
	o := options{logger: log.New(io.Discard, "", 0)}
	for _, opt := range opts {
		opt(&o)
	}
	regOpts := []ggcrregistry.Option{ggcrregistry.Logger(o.logger)}
	if o.dir != "" {
		if err := os.MkdirAll(o.dir, 0o755); err != nil {
			return nil, fmt.Errorf("creating registry storage %s: %w", o.dir, err)
		}
		regOpts = append(regOpts, ggcrregistry.WithBlobHandler(ggcrregistry.NewDiskBlobHandler(o.dir)))
	}
	var h http.Handler = ggcrregistry.New(regOpts...)
	if o.creds != nil || o.hostOnly {
		h = guardWrites(h, o.creds, o.hostOnly)
	}
	if o.wrapper != nil {
		h = o.wrapper(h)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for registry on %s: %w", addr, err)
	}
	r := &Registry{
		host:  ln.Addr().String(),
		srv:   &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: o.logger},
		done:  make(chan error, 1),
		creds: o.creds,
	}
	go func() { r.done <- r.srv.Serve(ln) }()
	return r, nil
}

// Host returns "ip:port", the registry part of image references.
func (r *Registry) Host() string { return r.host }

// Close stops the registry, closing open connections. Closing twice is a no-op.
func (r *Registry) Close() error {
	r.closeOnce.Do(func() {
		if err := r.srv.Close(); err != nil {
			r.closeErr = fmt.Errorf("closing registry %s: %w", r.host, err)
			return
		}
		if err := <-r.done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.closeErr = fmt.Errorf("serving registry %s: %w", r.host, err)
		}
	})
	return r.closeErr
}

// Push pushes img to host/repo (repo may carry ":tag" or "@digest"; the default tag is
// "latest") over plain HTTP with auth (a registry's Auth(); nil: anonymous) and returns the
// manifest digest ("sha256:...").
func Push(ctx context.Context, host, repo string, img v1.Image, auth authn.Authenticator) (string, error) {
	if auth == nil {
		auth = authn.Anonymous
	}
	ref, err := name.ParseReference(host+"/"+repo, name.Insecure)
	if err != nil {
		return "", fmt.Errorf("parsing push reference %s/%s: %w", host, repo, err)
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuth(auth)); err != nil {
		return "", fmt.Errorf("pushing %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("computing digest of %s: %w", ref, err)
	}
	return d.String(), nil
}
