package image

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The shared directory (Config.Shared) is used by every store on the host at once, each in
// its own agent process. What keeps them apart:
//
//	lock                  flock: shared while a store unpacks, leases or cleans up;
//	                      exclusive while Collect removes images
//	locks/<key>           flock: held while one store unpacks image <key>
//	images/<key>/size     the sum of the image's file sizes, for the cap
//	images/<key>/config.json  its mtime is the image's last use (LRU)
//	leases/<id>.json      the images one store has pulled or looked up; live while the
//	                      store's own Root (its owner) exists
//	tmp/<key>-<n>         an unpack in progress; left by a crash when locks/<key> is free
//	tmp/gc-<key>-<n>      an image Collect took out of images/ and is deleting

// lease is one store's claim on the images it uses: Collect never removes them while the
// owner directory, the store's Root, exists. On the local backend that Root is inside the
// cell's directory, which Terminate removes, so a cell whose agent died still protects the
// images its containers run on.
type lease struct {
	Owner  string   `json:"owner"`
	Images []string `json:"images"`
}

// leaseID names a store's lease after its Root, so a restarted agent takes up its own.
func leaseID(root string) string {
	sum := sha256.Sum256([]byte(root))
	return hex.EncodeToString(sum[:16])
}

// loadLease reads the store's lease left by an earlier agent on the same Root.
func (s *Store) loadLease() error {
	b, err := os.ReadFile(s.leaseFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading lease: %w", err)
	}
	var l lease
	if json.Unmarshal(b, &l) != nil {
		return nil // rewritten at the next pull
	}
	for _, k := range l.Images {
		s.leased[k] = true
	}
	return nil
}

// leaseImage adds key to the store's lease. Call with the shared lock held, so that
// Collect sees the lease before it looks for images to remove.
func (s *Store) leaseImage(key string) error {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	if s.leased[key] {
		return nil
	}
	s.leased[key] = true
	b, err := json.Marshal(lease{Owner: s.cfg.Root, Images: slices.Sorted(mapKeys(s.leased))})
	if err == nil {
		err = writeAtomic(s.leaseFile, b)
	}
	if err != nil {
		delete(s.leased, key)
		return fmt.Errorf("recording lease on image %s: %w", key, err)
	}
	return nil
}

func mapKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// Close gives up the store's lease: the images it used become collectable. A store whose
// Root is removed (the local backend's Terminate) gives them up without Close.
func (s *Store) Close() error {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	clear(s.leased)
	if err := os.Remove(s.leaseFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing lease: %w", err)
	}
	return nil
}

// liveLeases returns the images the live leases hold and removes the leases whose owner
// is gone. Call with the exclusive lock held.
func (s *Store) liveLeases() (map[string]bool, error) {
	ents, err := os.ReadDir(s.leases)
	if err != nil {
		return nil, fmt.Errorf("listing leases: %w", err)
	}
	inUse := map[string]bool{}
	for _, e := range ents {
		p := filepath.Join(s.leases, e.Name())
		if !strings.HasSuffix(e.Name(), ".json") {
			_ = os.Remove(p) // a lease write that crashed half-way
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading lease %s: %w", e.Name(), err)
		}
		var l lease
		if err := json.Unmarshal(b, &l); err != nil || l.Owner == "" {
			// Unreadable: keep everything rather than guess. It is replaced atomically, so
			// this is not a torn write; it needs a person.
			return nil, fmt.Errorf("lease %s is not valid JSON with an owner", p)
		}
		if _, err := os.Stat(l.Owner); errors.Is(err, fs.ErrNotExist) {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("removing stale lease %s: %w", p, err)
			}
			continue
		}
		for _, k := range l.Images {
			inUse[k] = true
		}
	}
	return inUse, nil
}

// touch marks image key as used now, for the least-recently-used order of Collect.
func (s *Store) touch(key string) {
	now := time.Now()
	_ = os.Chtimes(filepath.Join(s.images, key, configName), now, now)
}

// Collect drops the leases of stores whose Root is gone and, with a cap, removes unpacked
// images that no live store leases, least recently used first, until the images add up to
// at most Config.MaxSharedBytes. It does nothing while another store is pulling (it runs
// again after the next pull). An image in a live lease is never removed, even when those
// alone exceed the cap.
func (s *Store) Collect() error {
	unlock, ok, err := tryLock(s.lockPath, unix.LOCK_EX)
	if err != nil || !ok {
		return err
	}
	doomed, err := s.collectLocked()
	unlock()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, d := range doomed {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("removing collected image: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("collecting images: %w", err)
	}
	return nil
}

// collectLocked drops dead leases, moves the images to remove into tmp and returns their
// new paths.
func (s *Store) collectLocked() ([]string, error) {
	inUse, err := s.liveLeases()
	if err != nil || s.cfg.MaxSharedBytes <= 0 {
		return nil, err
	}
	ents, err := os.ReadDir(s.images)
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	type unpacked struct {
		key  string
		size int64
		used time.Time
	}
	var all []unpacked
	var total int64
	for _, e := range ents {
		dir := filepath.Join(s.images, e.Name())
		st, err := os.Stat(filepath.Join(dir, configName))
		if err != nil {
			continue // not an unpacked image
		}
		size := readSize(dir)
		all = append(all, unpacked{key: e.Name(), size: size, used: st.ModTime()})
		total += size
	}
	if total <= s.cfg.MaxSharedBytes {
		return nil, nil
	}
	slices.SortFunc(all, func(a, b unpacked) int { return cmp.Or(a.used.Compare(b.used), strings.Compare(a.key, b.key)) })
	var doomed []string
	for _, u := range all {
		if total <= s.cfg.MaxSharedBytes {
			break
		}
		if inUse[u.key] {
			continue
		}
		to := filepath.Join(s.tmp, "gc-"+u.key+"-"+randSuffix())
		if err := os.Rename(filepath.Join(s.images, u.key), to); err != nil {
			return doomed, fmt.Errorf("taking out image %s: %w", u.key, err)
		}
		_ = os.Remove(filepath.Join(s.locks, u.key))
		doomed = append(doomed, to)
		total -= u.size
	}
	return doomed, nil
}

// readSize reads an unpacked image's recorded size; 0 when it has none (an unpack by an
// older agent), which makes it the first to go when unused.
func readSize(dir string) int64 {
	b, err := os.ReadFile(filepath.Join(dir, sizeName))
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

const sizeName = "size"

// cleanTmp removes what crashed unpacks and collections left in tmp: an unpack whose
// image lock nobody holds is no one's any more. Call with the shared lock held.
func (s *Store) cleanTmp() error {
	ents, err := os.ReadDir(s.tmp)
	if err != nil {
		return fmt.Errorf("listing %s: %w", s.tmp, err)
	}
	var errs []error
	for _, e := range ents {
		p := filepath.Join(s.tmp, e.Name())
		if strings.HasPrefix(e.Name(), "gc-") {
			errs = append(errs, os.RemoveAll(p))
			continue
		}
		i := strings.LastIndexByte(e.Name(), '-')
		if i <= 0 {
			errs = append(errs, os.RemoveAll(p)) // no store makes such names
			continue
		}
		unlock, free, err := tryLock(filepath.Join(s.locks, e.Name()[:i]), unix.LOCK_EX)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if free {
			errs = append(errs, os.RemoveAll(p))
			unlock()
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing leftover unpacks: %w", err)
	}
	return nil
}

// lockFile takes a flock (unix.LOCK_SH or LOCK_EX) on path, creating the file, and waits
// for it until ctx ends. The returned function releases it.
func lockFile(ctx context.Context, path string, how int) (unlock func(), err error) {
	unlock, ok, err := tryLock(path, how)
	if err != nil || ok {
		return unlock, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	fd := int(f.Fd())
	done := make(chan error, 1)
	go func() {
		for {
			err := unix.Flock(fd, how)
			if !errors.Is(err, unix.EINTR) {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		return sync.OnceFunc(func() { f.Close() }), nil
	case <-ctx.Done():
		// The lock may still come; let it go as soon as it does.
		go func() { <-done; f.Close() }()
		return nil, ctx.Err()
	}
}

// tryLock takes a flock on path if it is free at once; ok false when another holds it.
func tryLock(path string, how int) (unlock func(), ok bool, err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("opening lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("locking %s: %w", path, err)
	}
	return sync.OnceFunc(func() { f.Close() }), true, nil
}

// writeAtomic writes b to path through a temporary file in the same directory.
func writeAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

func randSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
