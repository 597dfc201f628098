package runtime

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/podenv"
)

// DefaultPath is added when neither the image nor the pod sets PATH, as containerd does.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultCPUPeriod is the CFS period (µs) used with CPU limits, as kubelet uses.
const DefaultCPUPeriod uint64 = 100000

// Process is the resolved process of a container.
type Process struct {
	Args           []string
	Env            []string
	Cwd            string
	UID, GID       uint32
	AdditionalGids []uint32
	// Terminal runs the process on a terminal (the container's tty: true).
	Terminal bool
}

// ResolveProcess merges a pod's container with its image config the way kubelet and the CRI
// runtimes do:
//   - command replaces the image Entrypoint and drops its Cmd; args replace Cmd;
//   - env is the image env, then the container's env (later names win); the container's env
//     arrives resolved and already $(VAR)-expanded (internal/podrequest does it, as kubelet),
//     so it is never expanded again here: a Secret value "pa$$word" stays "pa$$word";
//   - $(VAR) in command and args expands from the container's env only, as kubelet's
//     does: the image's env is the runtime's, unknown to kubelet's expansion;
//   - workingDir falls back to the image's, then "/";
//   - the user is securityContext.runAsUser/runAsGroup, else the image's User ("uid",
//     "uid:gid", "name" or "name:group", looked up in the rootfs's /etc/passwd and /etc/group);
//     AdditionalGids are the groups /etc/group lists that user in (imageGroups).
//
// rootfs is the container's root directory, read for the user lookup only.
func ResolveProcess(c *corev1.Container, img v1.Config, rootfs string) (Process, error) {
	var p Process
	env := mergeEnv(img.Env, c.Env)
	lookup := make(map[string]string, len(c.Env))
	for _, e := range c.Env {
		lookup[e.Name] = e.Value
	}
	var args []string
	switch {
	case len(c.Command) > 0:
		args = append(expandAll(c.Command, lookup), expandAll(c.Args, lookup)...)
	case len(c.Args) > 0:
		args = append(append([]string(nil), img.Entrypoint...), expandAll(c.Args, lookup)...)
	default:
		args = append(append([]string(nil), img.Entrypoint...), img.Cmd...)
	}
	if len(args) == 0 {
		return p, fmt.Errorf("container %s: no command specified: neither the pod nor the image sets one", c.Name)
	}
	p.Args = args
	p.Env = env
	p.Cwd = c.WorkingDir
	if p.Cwd == "" {
		p.Cwd = img.WorkingDir
	}
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	if !strings.HasPrefix(p.Cwd, "/") {
		return p, fmt.Errorf("container %s: workingDir %q is not absolute", c.Name, p.Cwd)
	}
	uid, gid, err := resolveUser(c, img.User, rootfs)
	if err != nil {
		return p, fmt.Errorf("container %s: %w", c.Name, err)
	}
	p.UID, p.GID = uid, gid
	if p.AdditionalGids, err = imageGroups(rootfs, uid, img.User, c.SecurityContext); err != nil {
		return p, fmt.Errorf("container %s: %w", c.Name, err)
	}
	return p, nil
}

// imageGroups are the groups the image's /etc/group lists the container's user as a member
// of, as containerd adds them under kubelet's default supplementalGroupsPolicy (Merge): the
// user is the image's by name, else the /etc/passwd entry of the uid; a group named after the
// user is its primary one, not a supplementary one. No user name (a uid without an entry, an
// image without /etc/passwd or /etc/group) adds none.
func imageGroups(rootfs string, uid uint32, imageUser string, sc *corev1.SecurityContext) ([]uint32, error) {
	name, _, _ := strings.Cut(imageUser, ":")
	if _, err := strconv.ParseUint(name, 10, 32); err == nil || name == "" || (sc != nil && sc.RunAsUser != nil) {
		e, err := lookupFile(rootfs, "/etc/passwd", func(f []string) bool { return len(f) >= 3 && f[2] == strconv.FormatUint(uint64(uid), 10) })
		if errors.Is(err, errNoEntry) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("looking up user %d: %w", uid, err)
		}
		name = e[0]
	}
	var gids []uint32
	_, err := lookupFile(rootfs, "/etc/group", func(f []string) bool {
		if len(f) >= 4 && f[0] != name && slices.Contains(strings.Split(f[3], ","), name) {
			if g, err := strconv.ParseUint(f[2], 10, 32); err == nil {
				gids = append(gids, uint32(g))
			}
		}
		return false // read every line
	})
	if err != nil && !errors.Is(err, errNoEntry) {
		return nil, fmt.Errorf("reading the image's groups: %w", err)
	}
	return gids, nil
}

func mergeEnv(image []string, container []corev1.EnvVar) []string {
	out := make([]string, 0, len(image)+len(container)+1)
	idx := map[string]int{}
	set := func(kv string) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			return
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	for _, kv := range image {
		set(kv)
	}
	for _, e := range container {
		set(e.Name + "=" + e.Value)
	}
	if _, ok := idx["PATH"]; !ok {
		out = append(out, DefaultPath)
	}
	return out
}

func expandAll(in []string, env map[string]string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = expand(s, env)
	}
	return out
}

// expand replaces $(VAR) in s with its value in env, as kubelet does (see podenv.Expand).
func expand(s string, env map[string]string) string {
	return podenv.Expand(s, func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	})
}

func resolveUser(c *corev1.Container, imageUser, rootfs string) (uint32, uint32, error) {
	var uid, gid uint32
	userPart, groupPart, _ := strings.Cut(imageUser, ":")
	uidKnown := false
	if sc := c.SecurityContext; sc != nil && sc.RunAsUser != nil {
		if *sc.RunAsUser < 0 || *sc.RunAsUser > 1<<31 {
			return 0, 0, fmt.Errorf("securityContext.runAsUser %d is out of range", *sc.RunAsUser)
		}
		uid, uidKnown = uint32(*sc.RunAsUser), true
		userPart = strconv.FormatUint(uint64(uid), 10)
	}
	if !uidKnown && userPart != "" {
		if n, err := strconv.ParseUint(userPart, 10, 32); err == nil {
			uid = uint32(n)
		} else {
			e, err := lookupFile(rootfs, "/etc/passwd", func(f []string) bool { return len(f) >= 4 && f[0] == userPart })
			if err != nil {
				return 0, 0, fmt.Errorf("looking up image user %q: %w", userPart, err)
			}
			n, _ := strconv.ParseUint(e[2], 10, 32)
			g, _ := strconv.ParseUint(e[3], 10, 32)
			uid, gid = uint32(n), uint32(g)
			if groupPart == "" {
				groupPart = e[3]
			}
		}
	}
	// Without an explicit group, the primary group comes from /etc/passwd when the uid has an
	// entry there, else 0.
	if groupPart == "" && userPart != "" {
		if e, err := lookupFile(rootfs, "/etc/passwd", func(f []string) bool { return len(f) >= 4 && f[2] == userPart }); err == nil {
			g, _ := strconv.ParseUint(e[3], 10, 32)
			gid = uint32(g)
		}
	}
	if groupPart != "" {
		if n, err := strconv.ParseUint(groupPart, 10, 32); err == nil {
			gid = uint32(n)
		} else {
			e, err := lookupFile(rootfs, "/etc/group", func(f []string) bool { return len(f) >= 3 && f[0] == groupPart })
			if err != nil {
				return 0, 0, fmt.Errorf("looking up image group %q: %w", groupPart, err)
			}
			n, _ := strconv.ParseUint(e[2], 10, 32)
			gid = uint32(n)
		}
	}
	if sc := c.SecurityContext; sc != nil && sc.RunAsGroup != nil {
		if *sc.RunAsGroup < 0 || *sc.RunAsGroup > 1<<31 {
			return 0, 0, fmt.Errorf("securityContext.runAsGroup %d is out of range", *sc.RunAsGroup)
		}
		gid = uint32(*sc.RunAsGroup)
	}
	return uid, gid, nil
}

// errNoEntry says a passwd/group lookup found nothing.
var errNoEntry = errors.New("no such entry")

// lookupFile finds the first colon-separated line of name inside rootfs matching. The file is
// opened through os.Root so a symlink in the image cannot point outside the rootfs.
func lookupFile(rootfs, name string, match func([]string) bool) ([]string, error) {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := root.Open(strings.TrimPrefix(name, "/"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w (the image has no %s)", name, errNoEntry, name)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if match(fields) {
			return fields, nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%s: %w", name, errNoEntry)
}

// ResourcesOf turns a container's limits and requests into cgroup settings as kubelet does:
// memory limit; CPU quota from the CPU limit over a 100ms period; CPU shares from the request
// (or the limit when no request is set), at least 2.
func ResourcesOf(r corev1.ResourceRequirements) Resources {
	var out Resources
	if m, ok := r.Limits[corev1.ResourceMemory]; ok {
		out.MemoryLimitBytes = m.Value()
	}
	if cpu, ok := r.Limits[corev1.ResourceCPU]; ok && cpu.MilliValue() > 0 {
		out.CPUPeriod = DefaultCPUPeriod
		q := cpu.MilliValue() * int64(DefaultCPUPeriod) / 1000
		if q < 1000 {
			q = 1000 // the kernel's minimum quota is 1ms
		}
		out.CPUQuota = q
	}
	req, ok := r.Requests[corev1.ResourceCPU]
	if !ok {
		req, ok = r.Limits[corev1.ResourceCPU]
	}
	if ok {
		sh := uint64(req.MilliValue()) * 1024 / 1000
		if sh < 2 {
			sh = 2
		}
		out.CPUShares = sh
	}
	return out
}

// Within caps r at c, the limits that bind the container's cgroup from above (its cell's),
// so that a limit above the cell's size starts, as one above a node's size does under
// kubelet, and the cell's limit binds: a CPU quota above c's ratio of quota to period
// becomes c's ratio over r's period (cgroup v1 refuses a child's quota above a parent's,
// cgroup v2 takes it and ignores it); a memory limit above c's becomes c's (neither version
// refuses it, but the container's own cgroup then holds the limit that is hit, and its OOM
// evidence). The shares and everything the pod reports (the declared limits, the downward
// API's limits.cpu) are left as they are.
func (r Resources) Within(c cgroups.Ceiling) Resources {
	if c.CPUQuota > 0 && c.CPUPeriod > 0 && r.CPUQuota > 0 {
		p := r.CPUPeriod
		if p == 0 {
			p = DefaultCPUPeriod
		}
		// floor(c.CPUQuota * p / c.CPUPeriod), never above c's ratio; in floats, as the
		// product may overflow.
		if q := int64(float64(c.CPUQuota) * float64(p) / float64(c.CPUPeriod)); r.CPUQuota > q {
			r.CPUQuota = q
		}
	}
	if c.MemoryBytes > 0 && r.MemoryLimitBytes > c.MemoryBytes {
		r.MemoryLimitBytes = c.MemoryBytes
	}
	return r
}
