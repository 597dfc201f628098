package local

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The state directory holds everything the backend knows, so a new Backend (after a restart
// of kip) sees the cells an earlier one made:
//
//	<StateDir>/lock                   flock taken around every reservation and release
//	<StateDir>/tokens/<sha256(token)> the id of the cell a client token launched
//	<StateDir>/cells/<id>/launch.lock flock held while the cell boots
//	<StateDir>/cells/<id>/meta.json   cellMeta
//	<StateDir>/cells/<id>/tags.json   the cell's tags
//	<StateDir>/cells/<id>/ip          the cell's address (the IP pool is the set of these files)
//	<StateDir>/cells/<id>/secrets/    a tmpfs holding bootstrap: LaunchSpec.BootstrapData,
//	                                  handed to the agent (<id>/bootstrap for a process-only cell)
//	<StateDir>/cells/<id>/agent.log   the agent's stdout and stderr
//	<StateDir>/cells/<id>/agent/      the agent's --state-dir

// stagingPrefix names a cell directory still being written; it is renamed into place whole,
// so readers never see a cell with some of its files missing.
const stagingPrefix = ".new-"

// Phases of a cell in meta.json.
const (
	phaseLaunching   = "launching"
	phaseRunning     = "running"
	phaseTerminating = "terminating"
)

// cellMeta is what the backend records about a cell besides its tags and IP.
type cellMeta struct {
	ID           string    `json:"id"`
	CellID       string    `json:"cellID"`
	InstanceType string    `json:"instanceType"`
	TokenHash    string    `json:"tokenHash,omitempty"`
	LaunchTime   time.Time `json:"launchTime"`
	Phase        string    `json:"phase"`
	ProcessOnly  bool      `json:"processOnly,omitempty"`
	Netns        string    `json:"netns,omitempty"`
	HostVeth     string    `json:"hostVeth,omitempty"`
	Bridge       string    `json:"bridge,omitempty"`
	// SecurityGroups are the cell's groups (LaunchSpec.SecurityGroups, else the defaults).
	SecurityGroups []string `json:"securityGroups,omitempty"`
	// Cgroups are the absolute cgroup directories of the cell, one per hierarchy.
	Cgroups []string `json:"cgroups,omitempty"`
	// PID and PIDStart (clock ticks since boot, /proc/<pid>/stat field 22) identify the
	// agent; a recycled pid has another start time and is never signalled.
	PID      int    `json:"pid,omitempty"`
	PIDStart uint64 `json:"pidStart,omitempty"`
}

// store is the on-disk state of one backend.
type store struct {
	dir string
}

func (s *store) cellsDir() string          { return filepath.Join(s.dir, "cells") }
func (s *store) cellDir(id string) string  { return filepath.Join(s.dir, "cells", id) }
func (s *store) tokenPath(h string) string { return filepath.Join(s.dir, "tokens", h) }

func (s *store) init() error {
	for _, d := range []string{s.cellsDir(), filepath.Join(s.dir, "tokens")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating state directory %s: %w", d, err)
		}
	}
	return nil
}

// sweepStaging removes the staging directories of cells whose recording was cut short (their
// launcher died between writing the files and renaming the directory into place). A cell is
// staged and renamed under the store lock, so with the lock held every staging directory is
// such a leftover; it holds only files (nothing was booted from it). The lock must be held.
func (s *store) sweepStaging() error {
	stale, err := filepath.Glob(filepath.Join(s.cellsDir(), stagingPrefix+"*"))
	if err != nil {
		return err
	}
	for _, d := range stale {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("removing the unfinished cell record %s: %w", d, err)
		}
	}
	return nil
}

// lock takes the store's exclusive file lock; it works between processes and between
// goroutines of one process (each call opens its own file description).
func (s *store) lock() (unlock func(), err error) {
	return flock(filepath.Join(s.dir, "lock"), true)
}

// launchLock takes the cell's launch lock, held by whoever boots the cell until the boot has
// succeeded or been undone. With wait false it fails with unix.EWOULDBLOCK when held.
func (s *store) launchLock(id string, wait bool) (unlock func(), err error) {
	return flock(filepath.Join(s.cellDir(id), "launch.lock"), wait)
}

// flock opens (creating) path and takes an exclusive lock on it.
func flock(path string, wait bool) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	how := unix.LOCK_EX
	if !wait {
		how |= unix.LOCK_NB
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// tokenCell returns the id of the cell launched with the token hash h, or "".
func (s *store) tokenCell(h string) (string, error) {
	b, err := os.ReadFile(s.tokenPath(h))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading client token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ids lists the cell ids that have a directory.
func (s *store) ids() ([]string, error) {
	ents, err := os.ReadDir(s.cellsDir())
	if err != nil {
		return nil, fmt.Errorf("listing cells in %s: %w", s.cellsDir(), err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), stagingPrefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// usedIPs returns the addresses recorded by every cell.
func (s *store) usedIPs() (map[string]bool, error) {
	ids, err := s.ids()
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, id := range ids {
		b, err := os.ReadFile(filepath.Join(s.cellDir(id), "ip"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading address of cell %s: %w", id, err)
		}
		used[strings.TrimSpace(string(b))] = true
	}
	return used, nil
}

// allocIP returns the first host address of subnet that is neither reserved nor used.
// The caller holds the lock and records the address in the cell's ip file.
func allocIP(subnet *net.IPNet, reserved net.IP, used map[string]bool) (net.IP, error) {
	base := subnet.IP.To4()
	ones, bits := subnet.Mask.Size()
	size := uint32(1) << uint(bits-ones)
	start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	for off := uint32(1); off+1 < size; off++ { // skip the network and broadcast addresses
		n := start + off
		ip := net.IPv4(byte(n>>24), byte(n>>16), byte(n>>8), byte(n)).To4()
		if ip.Equal(reserved) || used[ip.String()] {
			continue
		}
		return ip, nil
	}
	return nil, fmt.Errorf("address pool %s is exhausted (%d addresses in use)", subnet, len(used))
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", filepath.Base(path), err)
	}
	return writeFile(path, b)
}

// writeFile writes atomically: a reader sees the old or the new content, never a torn one.
func writeFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decoding %s: %w", path, err)
	}
	return nil
}

// cellRecord is one cell as read back from disk.
type cellRecord struct {
	meta cellMeta
	tags map[string]string
	ip   string
}

// read returns the cell's record; an error wrapping fs.ErrNotExist when it has none.
func (s *store) read(id string) (*cellRecord, error) {
	dir := s.cellDir(id)
	var r cellRecord
	if err := readJSON(filepath.Join(dir, "meta.json"), &r.meta); err != nil {
		return nil, fmt.Errorf("reading cell %s: %w", id, err)
	}
	if err := readJSON(filepath.Join(dir, "tags.json"), &r.tags); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading tags of cell %s: %w", id, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "ip")); err == nil {
		r.ip = strings.TrimSpace(string(b))
	}
	return &r, nil
}
