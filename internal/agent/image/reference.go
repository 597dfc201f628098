package image

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// invalidReferenceError says a reference does not parse.
type invalidReferenceError struct {
	ref string
	err error
}

func (e *invalidReferenceError) Error() string {
	return fmt.Sprintf("invalid image reference %q: %v", e.ref, e.err)
}

func (e *invalidReferenceError) Unwrap() error { return e.err }

// IsInvalidReference reports whether err says an image reference does not parse.
func IsInvalidReference(err error) bool {
	var e *invalidReferenceError
	return errors.As(err, &e)
}

// IsNotFound reports whether err says the registry has no such repository, tag or manifest.
func IsNotFound(err error) bool {
	var te *transport.Error
	if !errors.As(err, &te) {
		return false
	}
	if te.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range te.Errors {
		switch d.Code {
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
			return true
		}
	}
	return false
}

// IsUnauthorized reports whether err says the registry refused the pull's credentials (or
// their absence).
func IsUnauthorized(err error) bool {
	var te *transport.Error
	if !errors.As(err, &te) {
		return false
	}
	if te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden {
		return true
	}
	for _, d := range te.Errors {
		if d.Code == transport.UnauthorizedErrorCode || d.Code == transport.DeniedErrorCode {
			return true
		}
	}
	return false
}

// parseReference parses ref the way docker does against the configured default registry:
// a name without a registry part gets the default registry, and a single-component name
// gets "library/" in front ("nginx" → "<default>/library/nginx:latest"). Registries listed
// as insecure are reached over plain HTTP.
func (s *Store) parseReference(ref string) (name.Reference, error) {
	if ref == "" {
		return nil, &invalidReferenceError{ref: ref, err: errors.New("empty reference")}
	}
	if strings.TrimSpace(ref) != ref {
		return nil, &invalidReferenceError{ref: ref, err: errors.New("surrounding whitespace")}
	}
	full := ref
	if unqualified(ref) && !strings.Contains(ref, "/") {
		full = "library/" + ref
	}
	var opts []name.Option
	if s.cfg.DefaultRegistry != "" {
		opts = append(opts, name.WithDefaultRegistry(s.cfg.DefaultRegistry))
	}
	r, err := name.ParseReference(full, opts...)
	if err != nil {
		return nil, &invalidReferenceError{ref: ref, err: err}
	}
	if s.insecure(r.Context().RegistryStr()) {
		r, err = name.ParseReference(full, append(opts, name.Insecure)...)
		if err != nil {
			return nil, &invalidReferenceError{ref: ref, err: err}
		}
	}
	return r, nil
}

// unqualified reports whether ref names no registry: docker treats the first path
// component as a registry only when it has a '.' or ':' or is "localhost".
func unqualified(ref string) bool {
	first, _, found := strings.Cut(ref, "/")
	if !found {
		return true
	}
	return !strings.ContainsAny(first, ".:") && first != "localhost"
}

// insecure reports whether registry (host or host:port) is listed in Config.Insecure. An
// entry without a port matches the host on any port.
func (s *Store) insecure(registry string) bool {
	if slices.Contains(s.cfg.Insecure, registry) {
		return true
	}
	host := registry
	if i := strings.LastIndex(registry, ":"); i >= 0 && !strings.HasSuffix(registry, "]") {
		host = registry[:i]
	}
	return slices.Contains(s.cfg.Insecure, host)
}

// schemeGuard refuses plain-HTTP requests to hosts not listed as insecure. go-containerregistry
// falls back to HTTP by itself for loopback and private (RFC 1918) registries; kip allows that
// only for registries the cell was told are insecure.
type schemeGuard struct {
	base     http.RoundTripper
	insecure func(host string) bool
}

func (g *schemeGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.insecure(req.URL.Host) {
		return nil, fmt.Errorf("refusing plain HTTP to registry %s: it is not listed as insecure", req.URL.Host)
	}
	return g.base.RoundTrip(req)
}
