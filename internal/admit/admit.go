// Package admit decides, before any cell launches, whether kip can run a pod as its spec asks:
// a field kip cannot honour is refused here with an error naming it, so a pod (or a Deployment
// of it) never launches cells only to fail on them. It is pure: no I/O.
package admit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// Error is a refusal: the field path kip cannot honour and why.
type Error struct {
	Field  string
	Reason string
	// PodReason is the reason the pod's status shows when kubelet has its own
	// (SysctlForbidden); empty means the caller's (InvalidSpec).
	PodReason string
}

// SysctlForbidden is kubelet's reason for a pod asking for a sysctl it does not allow.
const SysctlForbidden = "SysctlForbidden"

// safeSysctls are kubelet's safe, namespaced sysctls (pkg/kubelet/sysctl): a pod may set them
// without the node allowing unsafe ones, which kip's cells never do.
var safeSysctls = map[string]bool{
	"kernel.shm_rmid_forced": true, "net.ipv4.ip_local_port_range": true, "net.ipv4.tcp_syncookies": true,
	"net.ipv4.ping_group_range": true, "net.ipv4.ip_unprivileged_port_start": true,
	"net.ipv4.ip_local_reserved_ports": true, "net.ipv4.tcp_keepalive_time": true, "net.ipv4.tcp_fin_timeout": true,
	"net.ipv4.tcp_keepalive_intvl": true, "net.ipv4.tcp_keepalive_probes": true, "net.ipv4.tcp_rmem": true,
	"net.ipv4.tcp_wmem": true, "net.ipv4.tcp_slow_start_after_idle": true, "net.ipv4.tcp_notsent_lowat": true,
}

// SysctlName is a sysctl's name with dots as separators, as kubelet normalizes a name written
// with slashes ("net/ipv4/tcp_syncookies").
func SysctlName(name string) string {
	if !strings.Contains(name, "/") {
		return name
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.':
			return '/'
		case '/':
			return '.'
		}
		return r
	}, name)
}

func (e *Error) Error() string { return e.Field + ": " + e.Reason }

// supportedVolumes are the volume sources a cell can provide: emptyDir on the cell, and the
// API objects kip resolves into files (configMap, secret, downwardAPI, projected).
var supportedVolumes = map[string]bool{"emptyDir": true, "configMap": true, "secret": true, "downwardAPI": true, "projected": true}

// Node is the node's configuration admission reads (kip's config, node section).
type Node struct {
	// AllowPrivileged admits privileged containers (node.allowPrivileged, kubelet's
	// --allow-privileged); without it they are refused.
	AllowPrivileged bool
}

// Pod returns an *Error for the first field of pod kip cannot honour on node, nil when it
// can run it.
func Pod(pod *corev1.Pod, node Node) error {
	for i, v := range pod.Spec.Volumes {
		src := sourceName(v.VolumeSource)
		if src == "" {
			return &Error{Field: fmt.Sprintf("spec.volumes[%d]", i), Reason: fmt.Sprintf("volume %q has no source", v.Name)}
		}
		if !supportedVolumes[src] {
			return &Error{Field: fmt.Sprintf("spec.volumes[%d].%s", i, src),
				Reason: fmt.Sprintf("volume %q: %s volumes are not supported on kip's cells (only emptyDir, configMap, secret, downwardAPI and projected)", v.Name, src)}
		}
		if ed := v.EmptyDir; ed != nil && ed.Medium != corev1.StorageMediumDefault && ed.Medium != corev1.StorageMediumMemory {
			return &Error{Field: fmt.Sprintf("spec.volumes[%d].emptyDir.medium", i),
				Reason: fmt.Sprintf("volume %q: medium %s is not supported on kip's cells (they have no huge pages; only the default medium and Memory)", v.Name, ed.Medium)}
		}
	}
	if pod.Spec.HostPID {
		return &Error{Field: "spec.hostPID", Reason: "the cell's process namespace holds its agent; kip does not give it to pods"}
	}
	if pod.Spec.HostUsers != nil && !*pod.Spec.HostUsers {
		return &Error{Field: "spec.hostUsers", Reason: "a user namespace for the pod is not supported on kip's cells yet"}
	}
	if sc := pod.Spec.SecurityContext; sc != nil {
		if err := seccomp("spec.securityContext.seccompProfile", sc.SeccompProfile); err != nil {
			return err
		}
		for i, s := range sc.Sysctls {
			if !safeSysctls[SysctlName(s.Name)] {
				return &Error{Field: fmt.Sprintf("spec.securityContext.sysctls[%d]", i), PodReason: SysctlForbidden,
					Reason: fmt.Sprintf("forbidden sysctl: %q not allowlisted (kip's cells allow kubelet's safe sysctls only)", s.Name)}
			}
		}
	}
	for _, list := range []struct {
		field string
		ctrs  []corev1.Container
	}{{"initContainers", pod.Spec.InitContainers}, {"containers", pod.Spec.Containers}} {
		for i, c := range list.ctrs {
			if err := container(fmt.Sprintf("spec.%s[%d]", list.field, i), c.SecurityContext, node); err != nil {
				return err
			}
			if err := ports(fmt.Sprintf("spec.%s[%d]", list.field, i), c.Ports); err != nil {
				return err
			}
		}
	}
	return nil
}

// seccomp checks a Localhost profile's name: kip reads it under node.seccompProfileRoot
// (LocalhostProfiles), so it must be a path inside that directory. RuntimeDefault and
// Unconfined are admitted; README.md says what RuntimeDefault gets today.
func seccomp(field string, p *corev1.SeccompProfile) error {
	if p == nil || p.Type != corev1.SeccompProfileTypeLocalhost {
		return nil
	}
	if p.LocalhostProfile == nil || !filepath.IsLocal(*p.LocalhostProfile) {
		return &Error{Field: field + ".localhostProfile", Reason: "a Localhost profile needs localhostProfile, a relative path under the node's seccomp profile root"}
	}
	return nil
}

// LocalhostProfiles reads the Localhost seccomp profiles pod names (pod-level and its init
// and regular containers'), each root/localhostProfile as kubelet loads it from its seccomp
// root, with read (os.ReadFile), and returns them keyed by localhostProfile. A profile that
// cannot be read, or is not an OCI seccomp profile (ParseSeccompProfile), is an *Error
// naming the field that asks for it. pod must have passed Pod.
func LocalhostProfiles(pod *corev1.Pod, root string, read func(string) ([]byte, error)) (map[string][]byte, error) {
	var out map[string][]byte
	load := func(field string, p *corev1.SeccompProfile) error {
		if p == nil || p.Type != corev1.SeccompProfileTypeLocalhost || p.LocalhostProfile == nil {
			return nil
		}
		name := *p.LocalhostProfile
		if _, ok := out[name]; ok {
			return nil
		}
		path := filepath.Join(root, name)
		b, err := read(path)
		if err == nil {
			_, err = ParseSeccompProfile(b)
		}
		if err != nil {
			return &Error{Field: field + ".localhostProfile", Reason: fmt.Sprintf("cannot load seccomp profile %q: %v", path, err)}
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[name] = b
		return nil
	}
	if sc := pod.Spec.SecurityContext; sc != nil {
		if err := load("spec.securityContext.seccompProfile", sc.SeccompProfile); err != nil {
			return nil, err
		}
	}
	for _, list := range []struct {
		field string
		ctrs  []corev1.Container
	}{{"initContainers", pod.Spec.InitContainers}, {"containers", pod.Spec.Containers}} {
		for i, c := range list.ctrs {
			if c.SecurityContext == nil {
				continue
			}
			if err := load(fmt.Sprintf("spec.%s[%d].securityContext.seccompProfile", list.field, i), c.SecurityContext.SeccompProfile); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// ParseSeccompProfile reads a Localhost profile: the OCI runtime spec's linux.seccomp object
// in JSON (defaultAction, architectures, syscalls with names, action, errnoRet and args),
// which is Docker's profile format without its archMap, includes and excludes. A field it
// does not know is an error, so no part of a profile is silently dropped.
func ParseSeccompProfile(b []byte) (*specs.LinuxSeccomp, error) {
	var p specs.LinuxSeccomp
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("not an OCI seccomp profile: %w", err)
	}
	if p.DefaultAction == "" {
		return nil, errors.New("not an OCI seccomp profile: no defaultAction")
	}
	return &p, nil
}

// container refuses the security settings a cell cannot give a container.
func container(field string, sc *corev1.SecurityContext, node Node) error {
	if sc == nil {
		return nil
	}
	if err := seccomp(field+".securityContext.seccompProfile", sc.SeccompProfile); err != nil {
		return err
	}
	if sc.ProcMount != nil && *sc.ProcMount == corev1.UnmaskedProcMount {
		return &Error{Field: field + ".securityContext.procMount", Reason: "an unmasked /proc needs a user namespace (hostUsers: false), which kip's cells do not give pods yet"}
	}
	if sc.Privileged != nil && *sc.Privileged && !node.AllowPrivileged {
		return &Error{Field: field + ".securityContext.privileged", Reason: "privileged containers are not allowed on this node (kip's config has node.allowPrivileged false)"}
	}
	if sc.Capabilities != nil {
		for j, c := range sc.Capabilities.Add {
			if strings.EqualFold(string(c), "ALL") {
				return &Error{Field: fmt.Sprintf("%s.securityContext.capabilities.add[%d]", field, j), Reason: "ALL is not supported; name the capabilities to add"}
			}
		}
	}
	return nil
}

// ports refuses the cell agent's port: the pod shares its cell's network with the agent, so
// neither a containerPort nor a hostPort can take it.
func ports(field string, ps []corev1.ContainerPort) error {
	for j, p := range ps {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		if p.HostPort == cellapi.DefaultPort {
			return &Error{Field: fmt.Sprintf("%s.ports[%d].hostPort", field, j), Reason: fmt.Sprintf("port %d is the cell agent's; the pod cannot take it", cellapi.DefaultPort)}
		}
		if p.ContainerPort == cellapi.DefaultPort {
			return &Error{Field: fmt.Sprintf("%s.ports[%d].containerPort", field, j), Reason: fmt.Sprintf("port %d is the cell agent's; the pod cannot take it", cellapi.DefaultPort)}
		}
	}
	return nil
}

// sourceName is the JSON name of the volume source that is set ("persistentVolumeClaim"), or
// "" when none is.
func sourceName(s corev1.VolumeSource) string {
	v := reflect.ValueOf(s)
	t := v.Type()
	for i := range t.NumField() {
		if f := v.Field(i); f.Kind() == reflect.Pointer && !f.IsNil() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			return name
		}
	}
	return ""
}
