// Package image pulls OCI images for the cell agent, unpacks each image once per digest into a
// store on disk that the agents of one host may share, and gives each container a writable
// overlayfs on top of the unpacked rootfs.
//
// Layout under Config.Shared (Config.Root when empty), the content-addressed part:
//
//	images/<algo>-<hex>/rootfs   the flattened, unpacked image (read-only by convention)
//	images/<algo>-<hex>/config.json  the image config, so a restarted agent can reuse the unpack
//	images/<algo>-<hex>/size     the sum of its files' sizes
//	tmp/                          unpacks in progress; renamed into images/ when complete
//	lock, locks/, leases/         see shared.go
//
// and under Config.Root, this agent's own: refs/ (what each reference was pulled as here).
// A store uses an unpacked image only after it fetched the image's manifest from the
// registry itself, with its own credentials: sharing unpacks never shares access.
//
// Unqualified names follow docker's convention against Config.DefaultRegistry: "nginx" is
// "<DefaultRegistry>/library/nginx:latest", "me/app" is "<DefaultRegistry>/me/app:latest".
// So a test or demo registry must hold images pushed as "library/<name>" for plain names.
package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/singleflight"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kip-dev/kip/internal/cellapi"
)

// Config configures a Store.
type Config struct {
	// Root is this store's own directory: what its references were pulled as, and (unless
	// Shared is set) the unpacked images.
	Root string
	// Shared is the directory of unpacked images shared with the other stores of this host
	// (the local backend's image store, one per host); empty means Root. Stores sharing it
	// unpack each image once between them.
	Shared string
	// MaxSharedBytes caps the size of the unpacked images in Shared (the sum of their files'
	// sizes): after each pull, images that no live store uses are removed, least recently
	// used first, until the rest fit (Collect). 0 is no cap.
	MaxSharedBytes int64
	// DefaultRegistry replaces docker.io for unqualified names ("nginx"); empty means docker.io.
	DefaultRegistry string
	// Insecure lists registries (host or host:port) reached over plain HTTP.
	Insecure []string
	// MaxUnpackedBytes caps the sum of an image's file sizes once unpacked (kip's config
	// registry.maxUnpackedImageSize); 0 is no cap. A larger image fails to pull with an error
	// naming the limit, and nothing of it is kept.
	MaxUnpackedBytes int64
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

// Store pulls and unpacks images. It is safe for concurrent use, and several stores (or
// agent processes) may share a Shared directory: each image is unpacked by one of them
// under a file lock and renamed into place when complete.
type Store struct {
	cfg       Config
	images    string // Shared/images
	tmp       string // Shared/tmp
	locks     string // Shared/locks
	leases    string // Shared/leases
	lockPath  string // Shared/lock
	refs      string // Root/refs: what each reference was last pulled as, for Lookup
	leaseFile string // Shared/leases/<id>.json: this store's
	group     singleflight.Group

	leaseMu sync.Mutex
	leased  map[string]bool // the images in this store's lease

	// unpacks counts completed unpacks, for tests.
	unpacks atomic.Int64
}

// NewStore makes a store rooted at cfg.Root (its images in cfg.Shared, when set), creating
// its directories, taking up the lease an earlier agent on the same Root left, and removing
// the unpacks that crashed agents left half-done (those whose image lock is free).
func NewStore(cfg Config) (*Store, error) {
	if cfg.Root == "" {
		return nil, errors.New("creating image store: Root is empty")
	}
	if cfg.MaxSharedBytes < 0 {
		return nil, fmt.Errorf("creating image store: MaxSharedBytes %d is negative", cfg.MaxSharedBytes)
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("creating image store: resolving Root %q: %w", cfg.Root, err)
	}
	shared := root
	if cfg.Shared != "" {
		if shared, err = filepath.Abs(cfg.Shared); err != nil {
			return nil, fmt.Errorf("creating image store: resolving Shared %q: %w", cfg.Shared, err)
		}
	}
	if strings.ContainsAny(shared, ",:") {
		return nil, fmt.Errorf("creating image store: %q must not contain ',' or ':' (overlayfs options)", shared)
	}
	s := &Store{
		cfg:      cfg,
		images:   filepath.Join(shared, "images"),
		tmp:      filepath.Join(shared, "tmp"),
		locks:    filepath.Join(shared, "locks"),
		leases:   filepath.Join(shared, "leases"),
		lockPath: filepath.Join(shared, "lock"),
		refs:     filepath.Join(root, "refs"),
		leased:   map[string]bool{},
	}
	s.cfg.Root, s.cfg.Shared = root, shared
	s.leaseFile = filepath.Join(s.leases, leaseID(root)+".json")
	for _, d := range []string{s.images, s.tmp, s.locks, s.leases, s.refs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating image store: %w", err)
		}
	}
	if err := s.loadLease(); err != nil {
		return nil, fmt.Errorf("creating image store: %w", err)
	}
	unlock, err := lockFile(context.Background(), s.lockPath, unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("creating image store: %w", err)
	}
	defer unlock()
	if err := s.cleanTmp(); err != nil {
		return nil, fmt.Errorf("creating image store: %w", err)
	}
	return s, nil
}

// Pull resolves ref, fetches its manifest for this platform (linux/GOARCH, chosen from an
// index), and unpacks it unless the same image digest is already unpacked; concurrent pulls
// of one image share a single unpack. auths are matched to the registry by host; without a
// match the pull is anonymous. A reference that does not parse gives an error for which
// IsInvalidReference is true; a missing image one for which IsNotFound is true; refused
// credentials one for which IsUnauthorized is true.
func (s *Store) Pull(ctx context.Context, ref string, auths []cellapi.RegistryAuth) (*Image, error) {
	r, err := s.parseReference(ref)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(r,
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(keychain(auths)),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}),
		remote.WithUserAgent("kip-cell"),
		remote.WithTransport(&schemeGuard{base: remote.DefaultTransport, insecure: s.insecure}),
	)
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", r, err)
	}
	img, err := desc.Image()
	if err != nil {
		return nil, fmt.Errorf("pulling %s: resolving image for linux/%s: %w", r, runtime.GOARCH, err)
	}
	imgDigest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("pulling %s: computing image digest: %w", r, err)
	}
	key := imgDigest.Algorithm + "-" + imgDigest.Hex
	// The shared lock keeps Collect out from the unpack until the lease is recorded.
	unlock, err := lockFile(ctx, s.lockPath, unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", r, err)
	}
	var v any
	for {
		var shared bool
		v, err, shared = s.group.Do(key, func() (any, error) { return s.ensureUnpacked(ctx, key, img) })
		// The unpack ran under another caller's context, which ended: try again under ours.
		if err != nil && shared && ctx.Err() == nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			continue
		}
		break
	}
	if err == nil {
		err = s.leaseImage(key)
	}
	if err == nil {
		s.touch(key)
	}
	unlock()
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", r, err)
	}
	// A failed collection leaves the store over its cap until the next pull; it never
	// fails this one, whose image is leased.
	_ = s.Collect()
	out := &Image{
		Ref:     ref,
		Digest:  desc.Digest.String(),
		ImageID: repoName(r) + "@" + desc.Digest.String(),
		RootFS:  filepath.Join(s.images, key, "rootfs"),
		Config:  v.(*v1.ConfigFile).Config,
	}
	if err := s.remember(ref, key, out); err != nil {
		return nil, fmt.Errorf("pulling %s: %w", r, err)
	}
	return out, nil
}

// pulledRef is what a reference was last pulled as (refs/<sha256 of the reference>).
type pulledRef struct {
	Key     string `json:"key"`
	Digest  string `json:"digest"`
	ImageID string `json:"imageID"`
}

func (s *Store) refPath(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return filepath.Join(s.refs, hex.EncodeToString(sum[:]))
}

// remember records that ref was pulled as img (unpacked under images/key).
func (s *Store) remember(ref, key string, img *Image) error {
	b, err := json.Marshal(pulledRef{Key: key, Digest: img.Digest, ImageID: img.ImageID})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.refs, ".ref-*")
	if err != nil {
		return fmt.Errorf("recording the pulled reference: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("recording the pulled reference: %w", err)
	}
	tmp.Close()
	if err := os.Rename(tmp.Name(), s.refPath(ref)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("recording the pulled reference: %w", err)
	}
	return nil
}

// Lookup returns the image ref was last pulled as when it is still unpacked here, without
// asking any registry: what imagePullPolicy IfNotPresent and Never use.
func (s *Store) Lookup(ref string) (*Image, bool) {
	b, err := os.ReadFile(s.refPath(ref))
	if err != nil {
		return nil, false
	}
	var pr pulledRef
	if json.Unmarshal(b, &pr) != nil || pr.Key == "" || strings.ContainsAny(pr.Key, "/.") {
		return nil, false
	}
	unlock, err := lockFile(context.Background(), s.lockPath, unix.LOCK_SH)
	if err != nil {
		return nil, false
	}
	defer unlock()
	cf, err := readConfig(filepath.Join(s.images, pr.Key))
	if err != nil || s.leaseImage(pr.Key) != nil {
		return nil, false
	}
	s.touch(pr.Key)
	return &Image{Ref: ref, Digest: pr.Digest, ImageID: pr.ImageID, RootFS: filepath.Join(s.images, pr.Key, "rootfs"), Config: cf.Config}, true
}

// ensureUnpacked returns the config of the image unpacked under images/<key>, unpacking it
// first (into tmp, then renamed) when it is not there. Across processes the image's lock
// (locks/<key>) makes one unpack and the others wait for it. Call with the shared lock held.
func (s *Store) ensureUnpacked(ctx context.Context, key string, img v1.Image) (*v1.ConfigFile, error) {
	dir := filepath.Join(s.images, key)
	if cf, err := readConfig(dir); err == nil {
		return cf, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	unlock, err := lockFile(ctx, filepath.Join(s.locks, key), unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("waiting for another unpack of the image: %w", err)
	}
	defer unlock()
	if cf, err := readConfig(dir); err == nil {
		return cf, nil // another store unpacked it meanwhile
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading image config: %w", err)
	}
	tmp, err := os.MkdirTemp(s.tmp, key+"-")
	if err != nil {
		return nil, fmt.Errorf("making unpack directory: %w", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return nil, fmt.Errorf("making rootfs directory: %w", err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	size, err := untar(ctx, rc, rootfs, s.cfg.MaxUnpackedBytes)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return nil, fmt.Errorf("unpacking image: its files add up to more than this cell's limit of %s (kip config registry.maxUnpackedImageSize): %w",
				resource.NewQuantity(s.cfg.MaxUnpackedBytes, resource.BinarySI), err)
		}
		return nil, fmt.Errorf("unpacking image: %w", err)
	}
	raw, err := json.Marshal(cf)
	if err != nil {
		return nil, fmt.Errorf("encoding image config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, configName), raw, 0o600); err != nil {
		return nil, fmt.Errorf("writing image config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, sizeName), []byte(strconv.FormatInt(size, 10)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("writing image size: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another process may have finished the same unpack first; use its result.
		if cf2, err2 := readConfig(dir); err2 == nil {
			return cf2, nil
		}
		return nil, fmt.Errorf("moving unpacked image into place: %w", err)
	}
	done = true
	s.unpacks.Add(1)
	return cf, nil
}

const configName = "config.json"

// readConfig reads the config kept beside an unpacked rootfs; fs.ErrNotExist when the image
// is not unpacked.
func readConfig(dir string) (*v1.ConfigFile, error) {
	raw, err := os.ReadFile(filepath.Join(dir, configName))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("reading unpacked image config: %w", err)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parsing unpacked image config %s: %w", dir, err)
	}
	return cf, nil
}

// repoName is the repository as kubelet shows it in imageID: "docker.io/library/nginx" for
// Docker Hub (not go-containerregistry's "index.docker.io"), "<host>/<repo>" otherwise.
func repoName(r name.Reference) string {
	repo := r.Context()
	if repo.RegistryStr() == name.DefaultRegistry {
		return "docker.io/" + repo.RepositoryStr()
	}
	return repo.Name()
}
