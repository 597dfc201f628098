package imagebuild

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
)

// tripletDirs maps GOARCH to Debian's multiarch library directory name.
var tripletDirs = map[string]string{
	"amd64":   "x86_64-linux-gnu",
	"arm64":   "aarch64-linux-gnu",
	"386":     "i386-linux-gnu",
	"arm":     "arm-linux-gnueabihf",
	"ppc64le": "powerpc64le-linux-gnu",
	"s390x":   "s390x-linux-gnu",
	"riscv64": "riscv64-linux-gnu",
}

// DefaultLibraryDirs are where the host's dynamic linker looks for the shared libraries of a
// binary built for Debian on this architecture, in its order.
func DefaultLibraryDirs() []string {
	var dirs []string
	if t, ok := tripletDirs[runtime.GOARCH]; ok {
		dirs = append(dirs, "/lib/"+t, "/usr/lib/"+t)
	}
	return append(dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib")
}

// sharedObject is one file a dynamic binary needs at run time: the dynamic loader (its
// PT_INTERP) or a library it names in DT_NEEDED, directly or through another library.
type sharedObject struct {
	// Path is where the binary or the loader looks for it: the PT_INTERP path for the
	// loader, the first library directory holding the name for a library.
	Path string
	// Real is the host file after symlinks; two paths with the same Real share one copy.
	Real string
}

// sharedObjects lists the loader and every library bin needs, transitively, resolved from
// dirs as the loader would (first directory holding the name wins). A static binary needs
// none. The list is sorted by discovery, which is deterministic for a given binary and host.
func sharedObjects(bin string, dirs []string) ([]sharedObject, error) {
	var out []sharedObject
	seen := map[string]bool{}
	queue := []string{bin}
	for len(queue) > 0 {
		file := queue[0]
		queue = queue[1:]
		f, err := elf.Open(file)
		if err != nil {
			return nil, fmt.Errorf("reading ELF %s: %w", file, err)
		}
		interp, needed, err := dynamicInfo(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("reading ELF %s: %w", file, err)
		}
		if interp != "" && !seen[interp] {
			seen[interp] = true
			real, err := filepath.EvalSymlinks(interp)
			if err != nil {
				return nil, fmt.Errorf("resolving the dynamic loader %s of %s: %w", interp, file, err)
			}
			out = append(out, sharedObject{Path: interp, Real: real})
		}
		for _, name := range needed {
			if seen[name] {
				continue
			}
			seen[name] = true
			p, real, err := findLibrary(name, dirs)
			if err != nil {
				return nil, fmt.Errorf("resolving %s, needed by %s: %w", name, file, err)
			}
			out = append(out, sharedObject{Path: p, Real: real})
			queue = append(queue, real)
		}
	}
	return out, nil
}

// dynamicInfo returns f's PT_INTERP path (empty for a static binary) and its DT_NEEDED names.
func dynamicInfo(f *elf.File) (string, []string, error) {
	var interp string
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "", nil, fmt.Errorf("reading PT_INTERP: %w", err)
		}
		for len(b) > 0 && b[len(b)-1] == 0 {
			b = b[:len(b)-1]
		}
		interp = string(b)
	}
	needed, err := f.ImportedLibraries()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return "", nil, fmt.Errorf("reading DT_NEEDED: %w", err)
	}
	return interp, needed, nil
}

// findLibrary returns the first dirs/name that exists and the file it resolves to.
func findLibrary(name string, dirs []string) (string, string, error) {
	if path.IsAbs(name) {
		real, err := filepath.EvalSymlinks(name)
		return name, real, err
	}
	for _, d := range dirs {
		p := path.Join(d, name)
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return p, real, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", "", err
		}
	}
	return "", "", fmt.Errorf("%s is in none of %v", name, dirs)
}

// SharedLibrary is one file a dynamically linked binary loads at run time.
type SharedLibrary struct {
	// Path is where the binary or the loader looks for it (the PT_INTERP path, or the first
	// library directory holding the name); an image must have it there.
	Path string
	// Real is the host file after symlinks, whose contents the image needs.
	Real string
}

// SharedLibraries lists the dynamic loader and every library bin needs, transitively,
// resolved from dirs (DefaultLibraryDirs when empty) as the loader would: what an image needs
// beside a dynamically linked binary (a plain `go build` with cgo) to run it. A static binary
// needs none.
func SharedLibraries(bin string, dirs []string) ([]SharedLibrary, error) {
	if len(dirs) == 0 {
		dirs = DefaultLibraryDirs()
	}
	objs, err := sharedObjects(bin, dirs)
	if err != nil {
		return nil, err
	}
	out := make([]SharedLibrary, len(objs))
	for i, o := range objs {
		out[i] = SharedLibrary(o)
	}
	return out, nil
}
