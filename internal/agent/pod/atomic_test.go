package pod

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

var t0 = time.Date(2026, 1, 2, 15, 4, 5, 123456789, time.UTC)

// tsDirs lists the timestamped data directories in vdir.
func tsDirs(t *testing.T, vdir string) []string {
	t.Helper()
	ents, err := os.ReadDir(vdir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if isTsDirName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

// visible lists vdir's entries that do not begin with "..", with their link targets.
func visible(t *testing.T, vdir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(vdir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "..") {
			continue
		}
		target, err := os.Readlink(filepath.Join(vdir, e.Name()))
		if err != nil {
			target = "NOT A LINK"
		}
		out[e.Name()] = target
	}
	return out
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWriteAtomicLayoutAndModes(t *testing.T) {
	vdir := t.TempDir()
	changed, err := writeAtomic(vdir, map[string]cellapi.File{
		"a":            {Data: []byte("A1"), Mode: 0o644},
		"dir/b":        {Data: []byte("B1"), Mode: 0o400},
		"dir/deep/c":   {Data: []byte("C1"), Mode: 0o755},
		"zero-mode":    {Data: []byte("Z")},
		"./clean/../d": {Data: []byte("D")}, // path.Clean form is what lands
	}, t0, nil)
	if err != nil || !changed {
		t.Fatalf("first write = %v, %v; want changed, nil", changed, err)
	}
	ts := tsDirs(t, vdir)
	if len(ts) != 1 || !strings.HasPrefix(ts[0], "..2026_01_02_15_04_05.") {
		t.Fatalf("data directories %v, want one named ..2026_01_02_15_04_05.<n>", ts)
	}
	if target, err := os.Readlink(filepath.Join(vdir, dataDirName)); err != nil || target != ts[0] {
		t.Errorf("..data -> %q (%v), want %q", target, err, ts[0])
	}
	want := map[string]string{"a": "..data/a", "dir": "..data/dir", "zero-mode": "..data/zero-mode", "d": "..data/d"}
	if got := visible(t, vdir); !equalMaps(got, want) {
		t.Errorf("visible entries %v, want %v", got, want)
	}
	if st, _ := os.Stat(filepath.Join(vdir, ts[0])); st.Mode().Perm() != 0o755 {
		t.Errorf("data directory mode %v, want 0755", st.Mode().Perm())
	}
	for p, m := range map[string]fs.FileMode{"a": 0o644, "dir/b": 0o400, "dir/deep/c": 0o755, "zero-mode": 0o644} {
		st, err := os.Stat(filepath.Join(vdir, p))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != m {
			t.Errorf("%s mode %v, want %v", p, st.Mode().Perm(), m)
		}
	}
	if got := mustRead(t, filepath.Join(vdir, "dir/deep/c")); got != "C1" {
		t.Errorf("dir/deep/c = %q through the links, want C1", got)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestWriteAtomicUpdate(t *testing.T) {
	v1 := map[string]cellapi.File{
		"a":     {Data: []byte("A1"), Mode: 0o644},
		"dir/b": {Data: []byte("B1"), Mode: 0o644},
		"dir/c": {Data: []byte("C1"), Mode: 0o644},
		"gone":  {Data: []byte("G1"), Mode: 0o644},
	}
	cases := []struct {
		name        string
		next        map[string]cellapi.File
		wantChanged bool
		wantVisible []string
		wantContent map[string]string
		wantAbsent  []string
	}{
		{"unchanged", v1, false, []string{"a", "dir", "gone"}, map[string]string{"a": "A1", "dir/b": "B1"}, nil},
		{"content changes, files added and removed", map[string]cellapi.File{
			"a":     {Data: []byte("A2"), Mode: 0o644},
			"dir/b": {Data: []byte("B1"), Mode: 0o644},
			"new":   {Data: []byte("N2"), Mode: 0o644},
		}, true, []string{"a", "dir", "new"}, map[string]string{"a": "A2", "dir/b": "B1", "new": "N2"}, []string{"gone", "dir/c"}},
		{"only a mode changes", map[string]cellapi.File{
			"a": {Data: []byte("A1"), Mode: 0o600}, "dir/b": v1["dir/b"], "dir/c": v1["dir/c"], "gone": v1["gone"],
		}, true, []string{"a", "dir", "gone"}, map[string]string{"a": "A1"}, nil},
		{"a file disappears", map[string]cellapi.File{
			"a": v1["a"], "dir/b": v1["dir/b"], "gone": v1["gone"],
		}, true, []string{"a", "dir", "gone"}, map[string]string{"dir/b": "B1"}, []string{"dir/c"}},
		{"everything disappears (an optional source deleted)", map[string]cellapi.File{}, true, nil, nil, []string{"a", "dir", "gone"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vdir := t.TempDir()
			if _, err := writeAtomic(vdir, v1, t0, nil); err != nil {
				t.Fatal(err)
			}
			old := tsDirs(t, vdir)[0]
			changed, err := writeAtomic(vdir, tc.next, t0.Add(time.Second), nil)
			if err != nil {
				t.Fatal(err)
			}
			if changed != tc.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tc.wantChanged)
			}
			ts := tsDirs(t, vdir)
			if len(ts) != 1 {
				t.Fatalf("data directories %v, want exactly one", ts)
			}
			if tc.wantChanged == (ts[0] == old) {
				t.Errorf("data directory %s, was %s; changed %v", ts[0], old, tc.wantChanged)
			}
			target, _ := os.Readlink(filepath.Join(vdir, dataDirName))
			if target != ts[0] {
				t.Errorf("..data -> %q, want %q", target, ts[0])
			}
			if _, err := os.Lstat(filepath.Join(vdir, newDataDirName)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("..data_tmp left behind: %v", err)
			}
			got := visible(t, vdir)
			if len(got) != len(tc.wantVisible) {
				t.Errorf("visible %v, want %v", got, tc.wantVisible)
			}
			for _, v := range tc.wantVisible {
				if got[v] != "..data/"+v {
					t.Errorf("visible %s -> %q, want ..data/%s", v, got[v], v)
				}
			}
			for p, want := range tc.wantContent {
				if s := mustRead(t, filepath.Join(vdir, p)); s != want {
					t.Errorf("%s = %q, want %q", p, s, want)
				}
			}
			for _, p := range tc.wantAbsent {
				if _, err := os.Stat(filepath.Join(vdir, p)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s still there: %v", p, err)
				}
			}
			if tc.name == "only a mode changes" {
				if st, _ := os.Stat(filepath.Join(vdir, "a")); st.Mode().Perm() != 0o600 {
					t.Errorf("a mode %v, want 0600", st.Mode().Perm())
				}
			}
		})
	}
}

// An unchanged payload recreates a user-visible link that went missing (kubelet issue 121472).
func TestWriteAtomicRestoresMissingLink(t *testing.T) {
	vdir := t.TempDir()
	files := map[string]cellapi.File{"a": {Data: []byte("A"), Mode: 0o644}}
	if _, err := writeAtomic(vdir, files, t0, nil); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(vdir, "a"))
	if changed, err := writeAtomic(vdir, files, t0, nil); err != nil || changed {
		t.Fatalf("rewrite = %v, %v; want unchanged, nil", changed, err)
	}
	if s := mustRead(t, filepath.Join(vdir, "a")); s != "A" {
		t.Errorf("a = %q, want A", s)
	}
}

// A ..data link planted in the volume (the volume is read-only in containers, but the agent
// does not rely on it) is refused rather than followed, and nothing outside is touched.
func TestWriteAtomicRefusesPlantedDataLink(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "keep"), []byte("x"), 0o644)
	for _, target := range []string{outside, "../" + filepath.Base(outside), "..2026_x/../../etc"} {
		vdir := t.TempDir()
		if err := os.Symlink(target, filepath.Join(vdir, dataDirName)); err != nil {
			t.Fatal(err)
		}
		_, err := writeAtomic(vdir, map[string]cellapi.File{"a": {Data: []byte("A")}}, t0, nil)
		if err == nil || !strings.Contains(err.Error(), "not a data directory") {
			t.Errorf("..data -> %s: err %v, want a refusal", target, err)
		}
	}
	if s := mustRead(t, filepath.Join(outside, "keep")); s != "x" {
		t.Errorf("file outside the volume changed: %q", s)
	}
}

// Readers racing updates see each file whole, old or new, never empty or mixed.
func TestWriteAtomicReadersSeeWholeFiles(t *testing.T) {
	vdir := t.TempDir()
	const size = 256 << 10
	version := func(b byte) map[string]cellapi.File {
		return map[string]cellapi.File{"big": {Data: bytes.Repeat([]byte{b}, size), Mode: 0o644}}
	}
	if _, err := writeAtomic(vdir, version('0'), t0, nil); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad []string
	var mu sync.Mutex
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				b, err := os.ReadFile(filepath.Join(vdir, "big"))
				if errors.Is(err, fs.ErrNotExist) {
					continue // resolved through a directory removed right after the swap
				}
				if err != nil || len(b) != size || bytes.Count(b, b[:1]) != size {
					mu.Lock()
					bad = append(bad, describeRead(b, err))
					mu.Unlock()
				}
			}
		}()
	}
	for i := range 200 {
		if _, err := writeAtomic(vdir, version(byte('0'+i%10)), t0.Add(time.Duration(i)*time.Millisecond), nil); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if len(bad) > 0 {
		t.Errorf("%d torn reads, first: %s", len(bad), bad[0])
	}
}

func describeRead(b []byte, err error) string {
	if err != nil {
		return err.Error()
	}
	if len(b) == 0 {
		return "empty"
	}
	return fmt.Sprintf("%d bytes starting %q, %d of them alike", len(b), b[:1], bytes.Count(b, b[:1]))
}

func TestCheckVolumePath(t *testing.T) {
	for p, ok := range map[string]bool{
		"a": true, "dir/b": true, "..a/b": false, "..data": false, "..": false, "a/../b": false,
		"/abs": false, "": false, "a/..b": true, strings.Repeat("x", 256): false, strings.Repeat("x/", 2049) + "y": false,
	} {
		if err := checkVolumePath(p); (err == nil) != ok {
			t.Errorf("checkVolumePath(%.20q) = %v, want ok %v", p, err, ok)
		}
	}
}

// A subPath of a configMap volume is bound at the file of the current data directory and
// read-only; after an update the volume shows the new file while the bound path still holds
// the old one (a bind mount keeps that inode), as with kubelet's subPath.
func TestSubPathOfUpdatedVolumeKeepsOldContent(t *testing.T) {
	dir := t.TempDir()
	vdir := filepath.Join(dir, volumesDir, "cfg")
	os.MkdirAll(vdir, 0o755)
	if _, err := writeAtomic(vdir, map[string]cellapi.File{"greeting": {Data: []byte("v1"), Mode: 0o644}}, t0, nil); err != nil {
		t.Fatal(err)
	}
	spec := &corev1.PodSpec{Volumes: []corev1.Volume{
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}},
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}}
	os.MkdirAll(filepath.Join(dir, volumesDir, "scratch"), 0o777)
	c := &corev1.Container{VolumeMounts: []corev1.VolumeMount{
		{Name: "cfg", MountPath: "/cfg"},
		{Name: "cfg", MountPath: "/fixed/greeting", SubPath: "greeting"},
		{Name: "scratch", MountPath: "/scratch"},
	}}
	ms, err := containerMounts(dir, spec, c)
	if err != nil {
		t.Fatal(err)
	}
	byDest := map[string]int{}
	for i, m := range ms {
		byDest[m.Destination] = i
	}
	whole, sub, scratch := ms[byDest["/cfg"]], ms[byDest["/fixed/greeting"]], ms[byDest["/scratch"]]
	if !whole.ReadOnly || !sub.ReadOnly {
		t.Errorf("configMap mounts read-only = %v, %v; want both read-only", whole.ReadOnly, sub.ReadOnly)
	}
	if scratch.ReadOnly {
		t.Error("emptyDir mount made read-only")
	}
	if whole.Source != vdir {
		t.Errorf("whole volume source %s, want %s", whole.Source, vdir)
	}
	realVdir, _ := filepath.EvalSymlinks(vdir)
	if !strings.HasPrefix(sub.Source, realVdir+"/..2026_") || filepath.Base(sub.Source) != "greeting" {
		t.Fatalf("subPath source %s, want the file inside the data directory", sub.Source)
	}
	if _, err := writeAtomic(vdir, map[string]cellapi.File{"greeting": {Data: []byte("v2"), Mode: 0o644}}, t0.Add(time.Second), nil); err != nil {
		t.Fatal(err)
	}
	if s := mustRead(t, filepath.Join(whole.Source, "greeting")); s != "v2" {
		t.Errorf("volume shows %q after the update, want v2", s)
	}
	if b, err := os.ReadFile(sub.Source); err == nil && string(b) == "v2" {
		t.Errorf("the subPath source now reads v2: a subPath mount would follow updates")
	}
}
