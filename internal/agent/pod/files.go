package pod

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/agent/logs"
	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/poddns"
	"github.com/kip-dev/kip/internal/podenv"
)

// Layout of a pod directory:
//
//	etc/{hosts,hostname,resolv.conf}     bind-mounted into every container
//	shm/                                 the pod's /dev/shm, a tmpfs bound into every container
//	volumes/<name>/                      emptyDir, or the files of a configMap/secret/... volume
//	containers/<name>/<run>/             the bundle of one container run (config.json, rootfs)
//	logs/<name>/<run>.log                the CRI log of one container run
//	uts                                  the pod's UTS namespace, bind-mounted (sandbox.Pin)
const (
	etcDir        = "etc"
	volumesDir    = "volumes"
	containersDir = "containers"
	logsDir       = "logs"
	utsName       = "uts"
)

// writePodFiles creates the pod directory with its /etc files and volumes. The names and
// resolv.conf follow kubelet's rules (internal/poddns) in the request's cluster domain and
// DNS, with hostResolv, the cell's own resolv.conf, as the host's; what kubelet would record
// as warning events is returned. Secret, projected and downwardAPI volumes are written on a
// tmpfs of their own (mountAPIDataTmpfs), sized with cellMemory, so their files never reach
// a disk.
func writePodFiles(dir string, req *cellapi.PodRequest, podIP, hostResolv string, cellMemory int64) (poddns.Names, []poddns.Warning, error) {
	p := req.Pod
	names, err := poddns.PodNames(p, req.ClusterDomain)
	if err != nil {
		return poddns.Names{}, nil, err
	}
	host, err := poddns.ParseResolvConf(hostResolv)
	if err != nil {
		return poddns.Names{}, nil, fmt.Errorf("reading the cell's resolv.conf: %w", err)
	}
	resolv, warns := poddns.Resolv(p, poddns.Cluster{DNS: req.ClusterDNS, Domain: req.ClusterDomain}, host)
	if err := os.MkdirAll(filepath.Join(dir, etcDir), 0o755); err != nil {
		return poddns.Names{}, nil, fmt.Errorf("creating pod directory: %w", err)
	}
	var hosts strings.Builder
	hosts.WriteString("# Kubernetes-managed hosts file (written by kip-cell).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if podIP != "" {
		if names.Domain != "" {
			fmt.Fprintf(&hosts, "%s\t%s\t%s\n", podIP, names.FQDN(), names.Hostname)
		} else {
			fmt.Fprintf(&hosts, "%s\t%s\n", podIP, names.Hostname)
		}
	}
	for _, ha := range p.Spec.HostAliases {
		fmt.Fprintf(&hosts, "%s\t%s\n", ha.IP, strings.Join(ha.Hostnames, "\t"))
	}
	for name, data := range map[string]string{"hosts": hosts.String(), "hostname": names.Kernel + "\n", "resolv.conf": resolv.String()} {
		if err := os.WriteFile(filepath.Join(dir, etcDir, name), []byte(data), 0o644); err != nil {
			return poddns.Names{}, nil, fmt.Errorf("writing pod %s: %w", name, err)
		}
	}
	for _, v := range p.Spec.Volumes {
		vdir := filepath.Join(dir, volumesDir, v.Name)
		if err := os.MkdirAll(vdir, 0o777); err != nil {
			return poddns.Names{}, nil, fmt.Errorf("creating volume %s: %w", v.Name, err)
		}
		if v.EmptyDir != nil {
			// emptyDir is world-writable like kubelet's, so non-root containers can use it.
			if err := os.Chmod(vdir, 0o777); err != nil {
				return poddns.Names{}, nil, fmt.Errorf("creating volume %s: %w", v.Name, err)
			}
		}
		if isAPIDataVolume(&v) {
			if memoryBackedAPIData(&v) {
				if err := mountAPIDataTmpfs(vdir, p, cellMemory); err != nil {
					return poddns.Names{}, nil, fmt.Errorf("creating volume %s: %w", v.Name, err)
				}
			}
			// configMap, secret, downwardAPI and projected volumes update in place (atomic.go).
			if _, err := writeAtomic(vdir, req.Volumes[v.Name].Files, time.Now(), podFSGroup(p)); err != nil {
				return poddns.Names{}, nil, fmt.Errorf("writing volume %s: %w", v.Name, err)
			}
			continue
		}
		for rel, f := range req.Volumes[v.Name].Files {
			if err := writeVolumeFile(vdir, rel, f); err != nil {
				return poddns.Names{}, nil, fmt.Errorf("writing volume %s file %s: %w", v.Name, rel, err)
			}
		}
	}
	return names, warns, nil
}

// isAPIDataVolume reports whether v is a configMap, secret, downwardAPI or projected volume:
// kip sends its files, the agent lays them out with the atomic writer and updates them while
// the pod runs, and containers always mount it read-only, as kubelet does.
func isAPIDataVolume(v *corev1.Volume) bool {
	return v.ConfigMap != nil || v.Secret != nil || v.DownwardAPI != nil || v.Projected != nil
}

func writeVolumeFile(vdir, rel string, f cellapi.File) error {
	root, err := os.OpenRoot(vdir)
	if err != nil {
		return err
	}
	defer root.Close()
	if d := filepath.Dir(rel); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	mode := fs.FileMode(f.Mode) & fs.ModePerm
	if mode == 0 {
		mode = 0o644
	}
	if err := root.WriteFile(rel, f.Data, mode); err != nil {
		return err
	}
	return root.Chmod(rel, mode)
}

// containerMounts returns the bind mounts of one container: the pod's /etc files and shared
// /dev/shm (shm.go), then its volumeMounts. A subPath that does not exist is created as a directory, as kubelet does.
// configMap, secret, downwardAPI and projected volumes are mounted read-only whatever the
// volumeMount says (kubelet's ReadOnlyAPIDataVolumes), and a subPath of one is bound at the
// file or directory it resolves to now, inside the current data directory: like kubelet's
// subPath bind it keeps the content the container started with, and later updates of the
// volume do not reach it.
func containerMounts(dir string, spec *corev1.PodSpec, c *corev1.Container) ([]runtime.Mount, error) {
	ms := []runtime.Mount{
		{Source: filepath.Join(dir, etcDir, "hosts"), Destination: "/etc/hosts"},
		{Source: filepath.Join(dir, etcDir, "hostname"), Destination: "/etc/hostname"},
		{Source: filepath.Join(dir, etcDir, "resolv.conf"), Destination: "/etc/resolv.conf"},
	}
	if m, ok := shmMount(dir, c); ok {
		ms = append(ms, m)
	}
	apiData := map[string]bool{}
	for i := range spec.Volumes {
		apiData[spec.Volumes[i].Name] = isAPIDataVolume(&spec.Volumes[i])
	}
	for _, m := range c.VolumeMounts {
		src := filepath.Join(dir, volumesDir, m.Name)
		subPath, err := mountSubPath(m, c.Env)
		if err != nil {
			return nil, err
		}
		if subPath != "" {
			vdir := src
			root, err := os.OpenRoot(vdir)
			if err != nil {
				return nil, fmt.Errorf("opening volume %s: %w", m.Name, err)
			}
			_, err = root.Lstat(subPath)
			if errors.Is(err, fs.ErrNotExist) {
				err = root.MkdirAll(subPath, 0o777)
			}
			if err == nil {
				// Refuse a subPath that resolves outside the volume through a symlink.
				var f *os.File
				if f, err = root.Open(subPath); err == nil {
					f.Close()
				}
			}
			root.Close()
			if err == nil {
				src, err = resolveInside(vdir, subPath)
			}
			if err != nil {
				return nil, fmt.Errorf("volumeMount %s subPath %q: %w", m.Name, subPath, err)
			}
		}
		ms = append(ms, runtime.Mount{Source: src, Destination: m.MountPath, ReadOnly: m.ReadOnly || apiData[m.Name]})
	}
	return ms, nil
}

// ConfigError is a container whose configuration cannot be made from its spec (kubelet's
// generateContainerConfig failing): its waiting reason is CreateContainerConfigError.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// mountSubPath returns the subPath of a volumeMount: subPath as written, or subPathExpr with
// its $(VAR) references expanded from the container's env, as kubelet's
// ExpandContainerVolumeMounts does: env is the container's, already resolved by kip (envFrom,
// valueFrom, service links), never the image's; a reference to a variable that is unset or
// empty fails the container ("missing value for A, B"), as does an absolute result or one
// with a ".." element, with kubelet's messages (ConfigError).
func mountSubPath(m corev1.VolumeMount, env []corev1.EnvVar) (string, error) {
	if m.SubPathExpr == "" {
		return m.SubPath, nil
	}
	vars := make(map[string]string, len(env))
	for _, e := range env {
		vars[e.Name] = e.Value
	}
	missing := map[string]bool{}
	sub := podenv.Expand(m.SubPathExpr, func(name string) (string, bool) {
		v := vars[name]
		if v == "" {
			missing[name] = true
		}
		return v, true
	})
	if len(missing) > 0 {
		names := slices.Sorted(maps.Keys(missing))
		return "", &ConfigError{fmt.Errorf("missing value for %s", strings.Join(names, ", "))}
	}
	if sub == "" {
		return "", nil
	}
	if path.IsAbs(sub) {
		return "", &ConfigError{fmt.Errorf("error SubPath `%s` must not be an absolute path", sub)}
	}
	if slices.Contains(strings.Split(sub, "/"), "..") {
		return "", &ConfigError{fmt.Errorf("unable to provision SubPath `%s`: must not contain '..'", sub)}
	}
	return sub, nil
}

// resolveInside returns vdir/rel with every symlink resolved, refusing a result outside vdir.
// Bound at its resolved path, a subPath of an atomically written volume stays on the data
// directory of the moment, as kubelet's subPath bind does.
func resolveInside(vdir, rel string) (string, error) {
	base, err := filepath.EvalSymlinks(vdir)
	if err != nil {
		return "", err
	}
	p, err := filepath.EvalSymlinks(filepath.Join(base, rel))
	if err != nil {
		return "", err
	}
	if r, err := filepath.Rel(base, p); err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", fmt.Errorf("resolves to %s, outside the volume", p)
	}
	return p, nil
}

// terminationLogName is the file in a run's bundle mounted at terminationMessagePath.
const terminationLogName = "termination-log"

// Limits kubelet applies to termination messages.
const (
	maxTerminationMessage = 4096
	fallbackLogLines      = 80
	fallbackLogBytes      = 2048
)

// terminationMessage is what kubelet reports as a terminated container's message: the file
// at terminationMessagePath (at most 4 KiB), or with FallbackToLogsOnError and a failed run,
// the tail of its log as `kubectl logs --tail=80` gives it (the container's own bytes: an
// unterminated last line gets no newline), at most its last 2 KiB.
func terminationMessage(c *corev1.Container, termLog, logPath string, exitCode int) string {
	if f, err := os.Open(termLog); err == nil {
		b := make([]byte, maxTerminationMessage)
		n, _ := io.ReadFull(f, b)
		f.Close()
		if n > 0 {
			return string(b[:n])
		}
	}
	if c.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError || exitCode == 0 {
		return ""
	}
	var out bytes.Buffer
	tail := int64(fallbackLogLines)
	if err := logs.Serve(context.Background(), &out, logPath, cellapi.LogOptions{TailLines: &tail}); err != nil {
		return fmt.Sprintf("Error on reading termination message from logs: %v", err)
	}
	b := out.Bytes()
	if len(b) > fallbackLogBytes {
		b = b[len(b)-fallbackLogBytes:]
	}
	return string(b)
}

func hasEnv(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}
