package image

import (
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kip-dev/kip/internal/cellapi"
)

// keychain resolves pull-secret credentials by registry host. A registry without an entry
// is pulled anonymously.
type keychain []cellapi.RegistryAuth

var _ authn.Keychain = keychain(nil)

func (k keychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	want := normalizeRegistry(res.RegistryStr())
	for _, a := range k {
		if normalizeRegistry(a.Registry) != want {
			continue
		}
		return authn.FromConfig(authn.AuthConfig{
			Username:      a.Username,
			Password:      a.Password,
			Auth:          a.Auth,
			IdentityToken: a.IdentityToken,
		}), nil
	}
	return authn.Anonymous, nil
}

// normalizeRegistry reduces the forms a docker config.json "auths" key takes
// ("https://index.docker.io/v1/", "docker.io", "10.0.0.1:5000") to a bare registry host.
func normalizeRegistry(r string) string {
	r = strings.TrimPrefix(r, "https://")
	r = strings.TrimPrefix(r, "http://")
	if i := strings.Index(r, "/"); i >= 0 {
		r = r[:i]
	}
	r = strings.ToLower(r)
	switch r {
	case "docker.io", "registry-1.docker.io", "index.docker.io":
		return name.DefaultRegistry
	}
	return r
}
