// Package image pulls OCI images for the cell agent, unpacks each image once per digest into a
// store on disk, and gives each container a writable overlayfs on top of the unpacked rootfs.
//
// Layout under Config.Root:
//
//	images/<algo>-<hex>/rootfs   the flattened, unpacked image (read-only by convention)
//	images/<algo>-<hex>/config.json  the image config, so a restarted agent can reuse the unpack
//	tmp/                          unpacks in progress; renamed into images/ when complete
//
// Unqualified names follow docker's convention against Config.DefaultRegistry: "nginx" is
// "<DefaultRegistry>/library/nginx:latest", "me/app" is "<DefaultRegistry>/me/app:latest".
// So a test or demo registry must hold images pushed as "library/<name>" for plain names.
package image

import (
	"context"
	"errors"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// Config configures a Store.
type Config struct {
	// Root is the directory holding unpacked images.
	Root string
	// DefaultRegistry replaces docker.io for unqualified names ("nginx"); empty means docker.io.
	DefaultRegistry string
	// Insecure lists registries (host or host:port) reached over plain HTTP.
	Insecure []string
}

// Image is one pulled and unpacked image.
type Image struct {
	// Ref is the reference as given by the pod ("nginx").
	Ref string
	// Digest is the manifest digest that was pulled ("sha256:...").
	Digest string
	// ImageID is what kubelet reports as containerStatus.imageID: "<repo>@sha256:...".
	ImageID string
	// RootFS is the unpacked image root; never write into it, use MountRootFS.
	RootFS string
	// Config is the image's runtime config (Entrypoint, Cmd, Env, WorkingDir, User, ...).
	Config v1.Config
}

// Store pulls and unpacks images. It is safe for concurrent use.
type Store struct {
	cfg Config
}

// NewStore makes a store rooted at cfg.Root, creating the directory.
func NewStore(cfg Config) (*Store, error) {
	return nil, errors.New("image store: not implemented yet")
}

// Pull resolves ref, fetches its manifest for this platform, and unpacks it unless the same
// digest is already unpacked. auths are matched to the registry by host; without a match the
// pull is anonymous. A reference that does not parse gives an error for which
// IsInvalidReference is true.
func (s *Store) Pull(ctx context.Context, ref string, auths []cellapi.RegistryAuth) (*Image, error) {
	return nil, errors.New("pulling image: not implemented yet")
}

// MountRootFS mounts an overlayfs with img's rootfs as the lower layer and upper/work
// directories under dir, and returns the mount point (dir/rootfs). unmount detaches the
// overlay and removes everything it created under dir.
func (s *Store) MountRootFS(img *Image, dir string) (rootfs string, unmount func() error, err error) {
	return "", nil, errors.New("mounting rootfs: not implemented yet")
}

// IsInvalidReference reports whether err says an image reference does not parse.
func IsInvalidReference(err error) bool { return false }
