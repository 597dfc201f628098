// Package cgroups is Kip's one place that knows how cell runtimes use the host's cgroups: it
// detects the layout once (cgroup v1, v1 with a cgroup2 "unified" beside it, or cgroup v2
// only), makes and sizes a cell's cgroups and moves its agent in (the local backend), reads
// usage and sets limits below the agent's own cgroup (the agent), and removes both, including
// what runc leaves outside a cell in hybrid mode.
//
// Every path follows runc's rule for a relative cgroupsPath, since runc is what puts
// containers into cgroups: in each v1 hierarchy it goes below the caller's own cgroup; on a
// cgroup v2-only host below the parent of the caller's own cgroup (which, holding processes,
// could not give controllers to children); and runc 1.1 in hybrid mode puts it at the root
// of the "unified" hierarchy instead (see StrayPodDirs).
//
// The cgroupfs reads and writes are github.com/opencontainers/cgroups' (runc's own cgroup
// code). The package imports nothing of Kip: the agent and the host side both use it.
package cgroups

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/cgroups"
)

// Mode is a host's cgroup layout.
type Mode int

const (
	// Legacy: cgroup v1 hierarchies only.
	Legacy Mode = iota + 1
	// Hybrid: cgroup v1 hierarchies plus a cgroup2 one (conventionally "unified") without
	// controllers.
	Hybrid
	// Unified: one cgroup v2 hierarchy mounted at the root.
	Unified
)

func (m Mode) String() string {
	switch m {
	case Legacy:
		return "legacy (cgroup v1)"
	case Hybrid:
		return "hybrid (cgroup v1 + cgroup2)"
	case Unified:
		return "unified (cgroup v2)"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// hierarchy is one mounted cgroup hierarchy.
type hierarchy struct {
	dir string // directory under the root: "memory", "cpu,cpuacct", "unified"; "" when unified
	key string // its key in /proc/self/cgroup: "memory", "name=systemd"; "" for cgroup2
}

func (h hierarchy) v2() bool { return h.key == "" }

// has reports whether controller is one of a v1 hierarchy's (a mount of several is named
// after them joined by commas).
func (h hierarchy) has(controller string) bool {
	return !h.v2() && slices.Contains(strings.Split(h.dir, ","), controller)
}

// FS is the cgroup filesystem mounted at a root, as one process sees it. The layout is
// detected once, by Open; the process's own cgroups are read from its /proc/<pid>/cgroup file
// on every use, because the local backend moves a freshly started agent into its cell.
type FS struct {
	root string
	self string
	mode Mode
	hs   []hierarchy
}

// Open detects the layout of the cgroup filesystem mounted at root (normally /sys/fs/cgroup)
// for the process whose cgroup file is self (normally /proc/self/cgroup). A v2 hierarchy is
// told by its cgroup.controllers file; a v1 hierarchy by its name, matched against self's
// controllers. Hierarchies that self does not list are left out; none at all is an error.
func Open(root, self string) (*FS, error) {
	own, err := cgroups.ParseCgroupFile(self)
	if err != nil {
		return nil, fmt.Errorf("reading own cgroups: %w", err)
	}
	f := &FS{root: root, self: self}
	if isV2(root) {
		f.mode = Unified
		if _, ok := own[""]; ok {
			f.hs = []hierarchy{{}}
		}
	} else {
		ents, err := os.ReadDir(root)
		if err != nil {
			return nil, fmt.Errorf("listing cgroup hierarchies in %s: %w", root, err)
		}
		f.mode = Legacy
		for _, e := range ents {
			if !e.IsDir() { // skips the cpu -> cpu,cpuacct style symlinks
				continue
			}
			if isV2(filepath.Join(root, e.Name())) {
				if _, ok := own[""]; ok {
					f.hs = append(f.hs, hierarchy{dir: e.Name()})
					f.mode = Hybrid
				}
				continue
			}
			if key := v1Key(e.Name(), own); key != "" {
				f.hs = append(f.hs, hierarchy{dir: e.Name(), key: key})
			}
		}
	}
	if len(f.hs) == 0 {
		return nil, fmt.Errorf("reading own cgroups: no hierarchy of %s is mounted under %s", self, root)
	}
	return f, nil
}

// isV2 reports whether dir is a cgroup2 directory.
func isV2(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "cgroup.controllers"))
	return err == nil
}

// v1Key returns the key in own of the v1 hierarchy mounted as dir, "" when own has none.
func v1Key(dir string, own map[string]string) string {
	for _, c := range strings.Split(dir, ",") {
		for _, key := range []string{c, "name=" + c} {
			if _, ok := own[key]; ok {
				return key
			}
		}
	}
	return ""
}

// Mode returns the layout Open detected.
func (f *FS) Mode() Mode { return f.mode }

// place is a hierarchy, the process's own cgroup in it, and the directory below which a
// relative path lands there.
type place struct {
	h    hierarchy
	own  string // "/process_api/12c5"
	base string
}

// places reads the process's own cgroups and returns, for each hierarchy, where a relative
// cgroup path lands (see the package comment).
func (f *FS) places() ([]place, error) {
	own, err := cgroups.ParseCgroupFile(f.self)
	if err != nil {
		return nil, fmt.Errorf("reading own cgroups: %w", err)
	}
	var out []place
	for _, h := range f.hs {
		p, ok := own[h.key]
		if !ok {
			continue
		}
		base := filepath.Join(f.root, h.dir, p)
		if f.mode == Unified {
			base = filepath.Join(f.root, filepath.Dir(p))
		}
		out = append(out, place{h: h, own: p, base: base})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("reading own cgroups: no hierarchy of %s is mounted under %s", f.self, f.root)
	}
	return out, nil
}

// Dirs returns the directory of the relative cgroup path rel in every hierarchy, as runc
// would place it for this process (but for the hybrid-mode quirk: see StrayPodDirs).
func (f *FS) Dirs(rel string) ([]string, error) {
	if err := checkRel(rel); err != nil {
		return nil, err
	}
	ps, err := f.places()
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, filepath.Join(p.base, rel))
	}
	return out, nil
}

// Dir returns the directory of rel (relative to where this process's relative cgroup paths
// land; "" is that place itself) in the hierarchy holding controller, or "" when no mounted
// hierarchy has it. On a cgroup v2-only host every controller the root offers is there.
func (f *FS) Dir(controller, rel string) string {
	ps, err := f.places()
	if err != nil {
		return ""
	}
	for _, p := range ps {
		if p.h.has(controller) || f.mode == Unified && f.offers(controller) {
			return filepath.Join(p.base, rel)
		}
	}
	return ""
}

// offers reports whether the cgroup v2 root lists controller in cgroup.controllers.
func (f *FS) offers(controller string) bool {
	s, err := cgroups.ReadFile(f.root, "cgroup.controllers")
	return err == nil && slices.Contains(strings.Fields(s), controller)
}

// v2Dir returns rel's directory in the cgroup v2 hierarchy of a Unified host.
func (f *FS) v2Dir(rel string) (string, error) {
	ds, err := f.Dirs(rel)
	if err != nil {
		return "", err
	}
	return ds[0], nil
}

// checkRel refuses a path that is absolute or leaves the directory it is relative to.
func checkRel(rel string) error {
	if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") || strings.Contains(rel, "/../") || strings.HasSuffix(rel, "/..") {
		return fmt.Errorf("cgroup path %q must be relative and stay below its parent", rel)
	}
	return nil
}
