package gpu

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// Assignment is what one container gets: its GPUs' device nodes and, for NVIDIA, the
// control nodes, the driver's files and NVIDIA_VISIBLE_DEVICES.
type Assignment struct {
	// Resource is what it asked for; Indices the GPUs it got (the N of /dev/nvidiaN, or of
	// the AMD GPUs in render node order).
	Resource corev1.ResourceName
	Indices  []int
	Devices  []Device
	// Files are read-only binds: host path → path in the container.
	Files map[string]string
	Env   []string
	// cdiNames are applied through cache instead of Devices and Files.
	cdiNames []string
	cache    *cdi.Cache
}

// ShortageError is a pod asking for more GPUs than the cell has.
type ShortageError struct {
	// Field is the request's path in the pod ("spec.containers[0].resources.limits[nvidia.com/gpu]").
	Field   string
	Message string
}

func (e *ShortageError) Error() string { return e.Field + ": " + e.Message }

// Requested is how many of res container c asks for (its limit, else its request; the API
// server requires both equal for extended resources).
func Requested(c *corev1.Container, res corev1.ResourceName) (int, string) {
	if q, ok := c.Resources.Limits[res]; ok {
		return int(q.Value()), "limits"
	}
	if q, ok := c.Resources.Requests[res]; ok {
		return int(q.Value()), "requests"
	}
	return 0, ""
}

// Wants reports whether any container of pod asks for a GPU.
func Wants(pod *corev1.Pod) bool {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			for _, res := range []corev1.ResourceName{ResourceNVIDIA, ResourceAMD} {
				if n, _ := Requested(&list[i], res); n > 0 {
					return true
				}
			}
		}
	}
	return false
}

// Allocate discovers the cell's GPUs (cfg) and gives each container of pod that asks for
// some its own, by container name. Containers that run together (app containers and
// sidecars) get disjoint GPUs; an init container, which runs alone before the app
// containers, may get GPUs they get later, as kubelet's device manager reuses them, but not
// those of a sidecar. A pod asking for more than the cell has is a *ShortageError, before
// anything runs. A pod asking for none discovers nothing.
func Allocate(cfg Config, pod *corev1.Pod) (map[string]*Assignment, error) {
	if !Wants(pod) {
		return nil, nil
	}
	inv, err := Discover(cfg)
	if err != nil {
		return nil, err
	}
	out := map[string]*Assignment{}
	for _, res := range []corev1.ResourceName{ResourceNVIDIA, ResourceAMD} {
		total := inv.count(res)
		held := make([]bool, total)
		take := func(n int, free func(int) bool) []int {
			var got []int
			for i := 0; i < total && len(got) < n; i++ {
				if free(i) {
					got = append(got, i)
				}
			}
			if len(got) < n {
				return nil
			}
			return got
		}
		type ask struct {
			c       *corev1.Container
			field   string
			n       int
			sidecar bool
		}
		var together, inits []ask
		for i := range pod.Spec.InitContainers {
			c := &pod.Spec.InitContainers[i]
			if n, where := Requested(c, res); n > 0 {
				a := ask{c, fmt.Sprintf("spec.initContainers[%d].resources.%s[%s]", i, where, res), n, false}
				if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
					a.sidecar = true
					together = append(together, a)
				} else {
					inits = append(inits, a)
				}
			}
		}
		for i := range pod.Spec.Containers {
			c := &pod.Spec.Containers[i]
			if n, where := Requested(c, res); n > 0 {
				together = append(together, ask{c, fmt.Sprintf("spec.containers[%d].resources.%s[%s]", i, where, res), n, false})
			}
		}
		sidecars := map[int]bool{}
		for _, a := range together {
			got := take(a.n, func(i int) bool { return !held[i] })
			if got == nil {
				used := 0
				for _, h := range held {
					if h {
						used++
					}
				}
				return nil, &ShortageError{Field: a.field, Message: fmt.Sprintf("container %q asks for %d %s, but this cell has %d %s (%d held by the pod's other containers)", a.c.Name, a.n, res, total, inv.describe(res), used)}
			}
			for _, i := range got {
				held[i] = true
				if a.sidecar {
					sidecars[i] = true
				}
			}
			out[a.c.Name] = inv.assign(res, got)
		}
		for _, a := range inits {
			got := take(a.n, func(i int) bool { return !sidecars[i] })
			if got == nil {
				return nil, &ShortageError{Field: a.field, Message: fmt.Sprintf("init container %q asks for %d %s, but this cell has %d %s (%d held by sidecars)", a.c.Name, a.n, res, total, inv.describe(res), len(sidecars))}
			}
			out[a.c.Name] = inv.assign(res, got)
		}
	}
	return out, nil
}

func (inv *Inventory) count(res corev1.ResourceName) int {
	if res == ResourceNVIDIA {
		return len(inv.NVIDIA)
	}
	if inv.AMDKFD == nil {
		return 0 // no ROCm driver: the GPUs cannot be used
	}
	return len(inv.AMDRender)
}

func (inv *Inventory) describe(res corev1.ResourceName) string {
	if res == ResourceNVIDIA {
		return "NVIDIA GPUs (/dev/nvidia<N>)"
	}
	return "AMD GPUs (/dev/kfd and /dev/dri/renderD<N>)"
}

// assign makes the assignment of GPUs got (positions in the inventory's lists).
func (inv *Inventory) assign(res corev1.ResourceName, got []int) *Assignment {
	a := &Assignment{Resource: res, Files: map[string]string{}}
	if res == ResourceAMD {
		a.Devices = append(a.Devices, *inv.AMDKFD)
		for _, i := range got {
			a.Indices = append(a.Indices, i)
			a.Devices = append(a.Devices, inv.AMDRender[i])
		}
		return a
	}
	var visible []string
	for _, i := range got {
		n := inv.NVIDIAIndex[i]
		a.Indices = append(a.Indices, n)
		visible = append(visible, strconv.Itoa(n))
		a.Devices = append(a.Devices, inv.NVIDIA[i])
		if inv.cdi != nil {
			name := string(ResourceNVIDIA) + "=" + strconv.Itoa(n)
			if inv.cdi.GetDevice(name) != nil {
				a.cdiNames = append(a.cdiNames, name)
			}
		}
	}
	a.Env = append(a.Env, "NVIDIA_VISIBLE_DEVICES="+strings.Join(visible, ","))
	if len(a.cdiNames) == len(got) {
		a.cache = inv.cdi // the vendor's spec says how, for every GPU
		a.Devices = nil
		return a
	}
	a.cdiNames = nil
	a.Devices = append(a.Devices, inv.NVIDIAControl...)
	for host, ctr := range inv.NVIDIAFiles {
		a.Files[host] = ctr
	}
	return a
}

// CDI reports whether the assignment is applied through the instance's CDI spec.
func (a *Assignment) CDI() bool { return a.cache != nil }

// Apply edits the container's spec: with CDI, the vendor's edits for each GPU; else its
// device nodes (created in the container's /dev and allowed in its device cgroup, with their
// real major and minor numbers), the driver's files bound read-only under
// ContainerLibDir/ContainerBinDir (added to LD_LIBRARY_PATH and PATH), and the env.
func (a *Assignment) Apply(s *specs.Spec) error {
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	if s.Linux.Resources == nil {
		s.Linux.Resources = &specs.LinuxResources{}
	}
	if s.Process == nil {
		s.Process = &specs.Process{}
	}
	if a.cache != nil {
		if unresolved, err := a.cache.InjectDevices(s, a.cdiNames...); err != nil {
			return fmt.Errorf("applying the CDI spec of %s (unresolved: %v): %w", strings.Join(a.cdiNames, ", "), unresolved, err)
		}
	}
	for _, d := range a.Devices {
		mode := os.FileMode(0o666)
		var uid, gid uint32
		s.Linux.Devices = slices.DeleteFunc(s.Linux.Devices, func(x specs.LinuxDevice) bool { return x.Path == d.Path })
		s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: d.Path, Type: d.Type, Major: d.Major, Minor: d.Minor, FileMode: &mode, UID: &uid, GID: &gid})
		major, minor := d.Major, d.Minor
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: d.Type, Major: &major, Minor: &minor, Access: "rwm"})
	}
	var libs, bins bool
	hosts := make([]string, 0, len(a.Files))
	for h := range a.Files {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	for _, h := range hosts {
		dst := a.Files[h]
		libs = libs || strings.HasPrefix(dst, ContainerLibDir+"/")
		bins = bins || strings.HasPrefix(dst, ContainerBinDir+"/")
		s.Mounts = append(s.Mounts, specs.Mount{Destination: dst, Type: "bind", Source: h, Options: []string{"rbind", "rprivate", "ro", "nosuid", "nodev"}})
	}
	env := slices.Clone(a.Env)
	if libs {
		env = append(env, "LD_LIBRARY_PATH="+ContainerLibDir)
	}
	if bins {
		env = append(env, "PATH="+ContainerBinDir)
	}
	for _, e := range env {
		s.Process.Env = setEnv(s.Process.Env, e)
	}
	return nil
}

// setEnv sets kv in env: NVIDIA_VISIBLE_DEVICES replaces any value, PATH and
// LD_LIBRARY_PATH are appended to the image's.
func setEnv(env []string, kv string) []string {
	k, v, _ := strings.Cut(kv, "=")
	for i, e := range env {
		ek, ev, _ := strings.Cut(e, "=")
		if ek != k {
			continue
		}
		if (k == "PATH" || k == "LD_LIBRARY_PATH") && ev != "" {
			if slices.Contains(strings.Split(ev, ":"), v) {
				return env
			}
			env[i] = k + "=" + ev + ":" + v
		} else {
			env[i] = kv
		}
		return env
	}
	if k == "PATH" {
		kv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:" + v
	}
	return append(env, kv)
}
