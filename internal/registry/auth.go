package registry

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
)

// Credentials are the user name and password that writes to a registry started
// WithWriteAuth must carry (HTTP basic auth).
type Credentials struct {
	Username, Password string
}

// Authenticator returns c for go-containerregistry's remote.WithAuth.
func (c Credentials) Authenticator() authn.Authenticator {
	return &authn.Basic{Username: c.Username, Password: c.Password}
}

// NewCredentials makes user "kip" with a random 256-bit password.
func NewCredentials() (Credentials, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return Credentials{}, fmt.Errorf("making registry credentials: %w", err)
	}
	return Credentials{Username: "kip", Password: base64.RawURLEncoding.EncodeToString(b)}, nil
}

// WithWriteAuth makes every request that can change the registry (any method but GET and
// HEAD: uploads, manifest PUTs, deletes) carry HTTP basic auth with c; others get 401 with a
// WWW-Authenticate challenge, so clients with the credentials retry with them. Reads stay
// anonymous: cells pull without credentials.
func WithWriteAuth(c Credentials) Option { return func(o *options) { o.creds = &c } }

// WithHostOnlyWrites refuses (403) writes whose client address is not one of this host's own
// addresses (the network namespace the registry runs in): a cell, a network namespace of
// its own on the bridge, reaches the registry from its cell address and cannot write even
// with the credentials, while the host's pushers (kip up's seeding, make images, the
// conformance image builder), which reach the bridge address from the host, can.
func WithHostOnlyWrites() Option { return func(o *options) { o.hostOnly = true } }

// Auth returns the authenticator writes to r need: its credentials when it was started
// WithWriteAuth, else anonymous.
func (r *Registry) Auth() authn.Authenticator {
	if r.creds == nil {
		return authn.Anonymous
	}
	return r.creds.Authenticator()
}

func isWrite(r *http.Request) bool { return r.Method != http.MethodGet && r.Method != http.MethodHead }

// guardWrites wraps h with the write checks of o.
func guardWrites(h http.Handler, creds *Credentials, hostOnly bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isWrite(r) {
			h.ServeHTTP(w, r)
			return
		}
		if hostOnly && !fromThisHost(r.RemoteAddr) {
			writeRegistryError(w, http.StatusForbidden, "DENIED", "writes are accepted only from the registry's host")
			return
		}
		if creds != nil {
			u, p, ok := r.BasicAuth()
			if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(creds.Username)) != 1 ||
				subtle.ConstantTimeCompare([]byte(p), []byte(creds.Password)) != 1 {
				w.Header().Set("WWW-Authenticate", `Basic realm="kip registry"`)
				writeRegistryError(w, http.StatusUnauthorized, "UNAUTHORIZED", "writes need the registry's credentials")
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// fromThisHost reports whether remoteAddr ("ip:port") is a loopback address or one of the
// addresses of this network namespace's interfaces.
func fromThisHost(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	if ip.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}

func writeRegistryError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}

// DockerConfigFile is the name of the file WriteDockerConfig keeps in its directory; point
// DOCKER_CONFIG at the directory and docker, crane and go-containerregistry's default
// keychain use the credentials.
const DockerConfigFile = "config.json"

// dockerConfig is the part of a Docker config.json that holds credentials.
type dockerConfig struct {
	Auths map[string]dockerAuth `json:"auths"`
}

type dockerAuth struct {
	Auth string `json:"auth"`
}

// LoadOrMakeCredentials returns the credentials recorded in dir/config.json (a Docker
// config written by WriteDockerConfig), or new ones when there are none, so that the same
// credentials serve every run.
func LoadOrMakeCredentials(dir string) (Credentials, error) {
	cfg, err := readDockerConfig(dir)
	if err != nil {
		return Credentials{}, err
	}
	for _, a := range cfg.Auths {
		if c, ok := decodeAuth(a.Auth); ok && c.Username == "kip" {
			return c, nil
		}
	}
	return NewCredentials()
}

// WriteDockerConfig records creds for host (the registry's "ip:port", which may change
// between runs) in dir/config.json, keeping its other entries. The directory is 0700 and
// the file 0600.
func WriteDockerConfig(dir, host string, creds Credentials) error {
	cfg, err := readDockerConfig(dir)
	if err != nil {
		return err
	}
	if cfg.Auths == nil {
		cfg.Auths = map[string]dockerAuth{}
	}
	cfg.Auths[host] = dockerAuth{Auth: base64.StdEncoding.EncodeToString([]byte(creds.Username + ":" + creds.Password))}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("writing registry credentials: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("writing registry credentials: %w", err)
	}
	path := filepath.Join(dir, DockerConfigFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing registry credentials: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing registry credentials: %w", err)
	}
	return nil
}

func readDockerConfig(dir string) (dockerConfig, error) {
	path := filepath.Join(dir, DockerConfigFile)
	var cfg dockerConfig
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("reading registry credentials: %w", err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, fmt.Errorf("reading registry credentials %s: %w", path, err)
	}
	return cfg, nil
}

func decodeAuth(s string) (Credentials, bool) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return Credentials{}, false
	}
	u, p, ok := strings.Cut(string(b), ":")
	return Credentials{Username: u, Password: p}, ok && p != ""
}
