package ec2fake

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestStrayPodsOfFinishedPods: a pod whose containers have all exited has no process left in
// the cell, but runc's directories for it in the cell's v1 hierarchies still name it, so its
// cgroup2 part outside the cell is found (and removed with the cell).
func TestStrayPodsOfFinishedPods(t *testing.T) {
	cell := t.TempDir()
	memory := filepath.Join(cell, "memory", "kip", "lc-1")
	cpu := filepath.Join(cell, "cpu", "kip", "lc-1")
	for _, d := range []string{
		filepath.Join(memory, "kip", "uid-a", "main", "1"),
		filepath.Join(memory, "kip", "uid-b"),
		filepath.Join(cpu, "agent", "kip", "uid-a", "main"),
		filepath.Join(cpu, "other"),
	} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got := strayPods([]string{memory, cpu})
	slices.Sort(got)
	if want := []string{"uid-a", "uid-b"}; !slices.Equal(got, want) {
		t.Errorf("strayPods = %v, want %v", got, want)
	}
}
