package runtime

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/kip-dev/kip/internal/cgroups"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func ptr[T any](v T) *T { return &v }

func testRootFS(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
	group := "root:x:0:\nwww-data:x:33:\nstaff:x:50:\nwheel:x:10:root,www\nwww:x:34:www\nadm:x:4:www\n"
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte(passwd), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte(group), 0o644)
	return root
}

func TestResolveProcessCommandAndArgs(t *testing.T) {
	img := v1.Config{Entrypoint: []string{"/entry"}, Cmd: []string{"cmd-arg"}, Env: []string{"PATH=/img/bin", "A=image", "B=b"}}
	cases := []struct {
		name      string
		c         corev1.Container
		img       v1.Config
		want      []string
		wantErr   string
		wantEnv   []string
		wantCwd   string
		imageWdir string
	}{
		{name: "image defaults", want: []string{"/entry", "cmd-arg"}, img: img},
		{name: "command replaces entrypoint and drops cmd", c: corev1.Container{Command: []string{"/bin/sh"}}, img: img, want: []string{"/bin/sh"}},
		{name: "command and args", c: corev1.Container{Command: []string{"/bin/sh"}, Args: []string{"-c", "x"}}, img: img, want: []string{"/bin/sh", "-c", "x"}},
		{name: "args replace cmd", c: corev1.Container{Args: []string{"a1", "a2"}}, img: img, want: []string{"/entry", "a1", "a2"}},
		{name: "args without entrypoint", c: corev1.Container{Args: []string{"/bin/echo", "hi"}}, want: []string{"/bin/echo", "hi"}},
		{name: "nothing to run", wantErr: "no command specified"},
		{
			// As kubelet: env values arrive expanded (never again here), and command/args
			// expand from the container's env only, not the image's (B).
			name: "env merge and expansion",
			c: corev1.Container{
				Command: []string{"echo", "$(A)", "$(B)", "$$(A)", "$(NOPE)", "$(S)"},
				Env:     []corev1.EnvVar{{Name: "A", Value: "pod"}, {Name: "C", Value: "$(B)-c"}, {Name: "S", Value: "pa$$word"}},
			},
			img:     img,
			want:    []string{"echo", "pod", "$(B)", "$(A)", "$(NOPE)", "pa$$word"},
			wantEnv: []string{"PATH=/img/bin", "A=pod", "B=b", "C=$(B)-c", "S=pa$$word"},
		},
		{name: "default PATH", c: corev1.Container{Command: []string{"x"}}, wantEnv: []string{DefaultPath}},
		{name: "workingDir from image", c: corev1.Container{Command: []string{"x"}}, img: v1.Config{WorkingDir: "/srv"}, wantCwd: "/srv"},
		{name: "workingDir from pod wins", c: corev1.Container{Command: []string{"x"}, WorkingDir: "/pod"}, img: v1.Config{WorkingDir: "/srv"}, wantCwd: "/pod"},
		{name: "relative workingDir", c: corev1.Container{Command: []string{"x"}}, img: v1.Config{WorkingDir: "srv"}, wantErr: "not absolute"},
	}
	root := testRootFS(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.Name = "c"
			p, err := ResolveProcess(&tc.c, tc.img, root)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want != nil && !reflect.DeepEqual(p.Args, tc.want) {
				t.Errorf("args = %q, want %q", p.Args, tc.want)
			}
			if tc.wantEnv != nil && !reflect.DeepEqual(p.Env, tc.wantEnv) {
				t.Errorf("env = %q, want %q", p.Env, tc.wantEnv)
			}
			wantCwd := tc.wantCwd
			if wantCwd == "" {
				wantCwd = "/"
			}
			if p.Cwd != wantCwd {
				t.Errorf("cwd = %q, want %q", p.Cwd, wantCwd)
			}
		})
	}
}

func TestResolveUser(t *testing.T) {
	root := testRootFS(t)
	cases := []struct {
		name      string
		imageUser string
		sc        *corev1.SecurityContext
		uid, gid  uint32
		groups    []uint32 // from the image's /etc/group
		wantErr   string
	}{
		{name: "default root", groups: []uint32{10}},
		{name: "numeric uid in passwd", imageUser: "33", uid: 33, gid: 34, groups: []uint32{10, 4}},
		{name: "numeric uid not in passwd", imageUser: "1234", uid: 1234, gid: 0},
		{name: "uid:gid", imageUser: "1234:99", uid: 1234, gid: 99},
		{name: "name", imageUser: "www", uid: 33, gid: 34, groups: []uint32{10, 4}},
		{name: "name:group", imageUser: "www:staff", uid: 33, gid: 50, groups: []uint32{10, 4}},
		{name: "unknown name", imageUser: "ghost", wantErr: `image user "ghost"`},
		{name: "unknown group", imageUser: "www:ghosts", wantErr: `image group "ghosts"`},
		{name: "runAsUser wins", imageUser: "www", sc: &corev1.SecurityContext{RunAsUser: ptr(int64(65534))}, uid: 65534, gid: 65534},
		{name: "runAsGroup", sc: &corev1.SecurityContext{RunAsUser: ptr(int64(7)), RunAsGroup: ptr(int64(8))}, uid: 7, gid: 8},
		{name: "negative runAsUser", sc: &corev1.SecurityContext{RunAsUser: ptr(int64(-1))}, wantErr: "runAsUser"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &corev1.Container{Name: "c", Command: []string{"x"}, SecurityContext: tc.sc}
			p, err := ResolveProcess(c, v1.Config{User: tc.imageUser}, root)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.UID != tc.uid || p.GID != tc.gid {
				t.Errorf("uid:gid = %d:%d, want %d:%d", p.UID, p.GID, tc.uid, tc.gid)
			}
			if !slices.Equal(p.AdditionalGids, tc.groups) {
				t.Errorf("groups from the image %v, want %v", p.AdditionalGids, tc.groups)
			}
		})
	}
}

func TestPasswdSymlinkCannotEscapeRootFS(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	if err := os.Symlink("/etc/passwd", filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	c := &corev1.Container{Name: "c", Command: []string{"x"}}
	if _, err := ResolveProcess(c, v1.Config{User: "root"}, root); err == nil {
		t.Fatal("resolved a user through a symlink that leaves the rootfs")
	}
}

func TestResourcesOf(t *testing.T) {
	q := resource.MustParse
	cases := []struct {
		name string
		r    corev1.ResourceRequirements
		want Resources
	}{
		{name: "none"},
		{name: "memory limit", r: corev1.ResourceRequirements{Limits: corev1.ResourceList{"memory": q("64Mi")}}, want: Resources{MemoryLimitBytes: 64 << 20}},
		{name: "cpu limit only", r: corev1.ResourceRequirements{Limits: corev1.ResourceList{"cpu": q("500m")}}, want: Resources{CPUQuota: 50000, CPUPeriod: 100000, CPUShares: 512}},
		{name: "cpu request and limit", r: corev1.ResourceRequirements{Requests: corev1.ResourceList{"cpu": q("250m")}, Limits: corev1.ResourceList{"cpu": q("2")}}, want: Resources{CPUQuota: 200000, CPUPeriod: 100000, CPUShares: 256}},
		{name: "tiny request", r: corev1.ResourceRequirements{Requests: corev1.ResourceList{"cpu": q("1m")}}, want: Resources{CPUShares: 2}},
		{name: "tiny limit", r: corev1.ResourceRequirements{Limits: corev1.ResourceList{"cpu": q("1m")}}, want: Resources{CPUQuota: 1000, CPUPeriod: 100000, CPUShares: 2}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := ResourcesOf(tc.r); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestWithin: limits above the cell's ceiling come down to it (CPU by ratio, over the
// container's period); those within it, the shares, and containers without limits stay.
func TestWithin(t *testing.T) {
	cell := cgroups.Ceiling{CPUQuota: 25000, CPUPeriod: 100000, MemoryBytes: 256 << 20}
	cases := []struct {
		name string
		r    Resources
		c    cgroups.Ceiling
		want Resources
	}{
		{name: "64 CPUs in a quarter-CPU cell",
			r:    Resources{CPUQuota: 6400000, CPUPeriod: 100000, CPUShares: 102},
			c:    cell,
			want: Resources{CPUQuota: 25000, CPUPeriod: 100000, CPUShares: 102}},
		{name: "within the cell",
			r:    Resources{CPUQuota: 20000, CPUPeriod: 100000, CPUShares: 204, MemoryLimitBytes: 64 << 20},
			c:    cell,
			want: Resources{CPUQuota: 20000, CPUPeriod: 100000, CPUShares: 204, MemoryLimitBytes: 64 << 20}},
		{name: "exactly the cell",
			r:    Resources{CPUQuota: 25000, CPUPeriod: 100000, MemoryLimitBytes: 256 << 20},
			c:    cell,
			want: Resources{CPUQuota: 25000, CPUPeriod: 100000, MemoryLimitBytes: 256 << 20}},
		{name: "memory above the cell",
			r:    Resources{MemoryLimitBytes: 64 << 30},
			c:    cell,
			want: Resources{MemoryLimitBytes: 256 << 20}},
		{name: "no limits stay unlimited",
			r:    Resources{CPUShares: 2},
			c:    cell,
			want: Resources{CPUShares: 2}},
		{name: "no ceiling",
			r:    Resources{CPUQuota: 6400000, CPUPeriod: 100000, MemoryLimitBytes: 64 << 30},
			want: Resources{CPUQuota: 6400000, CPUPeriod: 100000, MemoryLimitBytes: 64 << 30}},
		{name: "another period: the ratio counts",
			r:    Resources{CPUQuota: 100000, CPUPeriod: 100000},
			c:    cgroups.Ceiling{CPUQuota: 50000, CPUPeriod: 200000},
			want: Resources{CPUQuota: 25000, CPUPeriod: 100000}},
		{name: "period unset is the default one",
			r:    Resources{CPUQuota: 400000},
			c:    cell,
			want: Resources{CPUQuota: 25000}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.r.Within(tc.c); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestBuildSpec(t *testing.T) {
	cc := ContainerConfig{
		RootFS:      "/b/rootfs",
		Process:     Process{Args: []string{"/bin/sh"}, Env: []string{"A=1"}, Cwd: "/", UID: 5, GID: 6},
		Hostname:    "web",
		Mounts:      []Mount{{Source: "/pod/etc/hosts", Destination: "/etc/hosts"}, {Source: "/pod/v/data", Destination: "/data", ReadOnly: true}},
		Resources:   Resources{MemoryLimitBytes: 1 << 20, CPUQuota: 50000, CPUPeriod: 100000, CPUShares: 512},
		CgroupsPath: "kip/uid/c/0",
	}
	s, err := BuildSpec(cc)
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == "network" || ns.Type == "ipc" {
			t.Errorf("spec has a %s namespace; the pod's containers share the cell's", ns.Type)
		}
	}
	if len(s.Linux.Namespaces) != 3 {
		t.Errorf("namespaces = %v, want pid, uts, mount", s.Linux.Namespaces)
	}
	if *s.Linux.Resources.Memory.Limit != 1<<20 || *s.Linux.Resources.CPU.Quota != 50000 || *s.Linux.Resources.CPU.Shares != 512 {
		t.Errorf("resources = %+v", s.Linux.Resources)
	}
	if s.Process.User.UID != 5 || s.Process.User.GID != 6 || s.Hostname != "web" || s.Linux.CgroupsPath != "kip/uid/c/0" {
		t.Errorf("process/hostname/cgroups wrong: %+v %q %q", s.Process.User, s.Hostname, s.Linux.CgroupsPath)
	}
	dests := map[string][]string{}
	for _, m := range s.Mounts {
		dests[m.Destination] = m.Options
	}
	for _, d := range []string{"/proc", "/dev", "/dev/pts", "/dev/shm", "/sys", "/etc/hosts", "/data"} {
		if _, ok := dests[d]; !ok {
			t.Errorf("no mount at %s", d)
		}
	}
	if !reflect.DeepEqual(dests["/data"], []string{"rbind", "rprivate", "ro"}) {
		t.Errorf("/data options = %v, want read-only bind", dests["/data"])
	}

	for _, bad := range []func(*ContainerConfig){
		func(c *ContainerConfig) { c.RootFS = "rel" },
		func(c *ContainerConfig) { c.Process.Args = nil },
		func(c *ContainerConfig) { c.CgroupsPath = "/abs" },
		func(c *ContainerConfig) { c.Mounts = []Mount{{Source: "/x", Destination: "../etc"}} },
	} {
		c := cc
		bad(&c)
		if _, err := BuildSpec(c); err == nil {
			t.Errorf("BuildSpec accepted %+v", c)
		}
	}
}
