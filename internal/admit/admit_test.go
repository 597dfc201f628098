package admit

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"
)

func TestPod(t *testing.T) {
	vol := func(name string, src corev1.VolumeSource) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: src}
	}
	tests := []struct {
		name      string
		volumes   []corev1.Volume
		wantField string
	}{
		{"no volumes", nil, ""},
		{"supported", []corev1.Volume{
			vol("a", corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}),
			vol("b", corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}),
			vol("c", corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{}}),
			vol("d", corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{}}),
			vol("e", corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}),
		}, ""},
		{"pvc", []corev1.Volume{
			vol("a", corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}),
			vol("data", corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "x"}}),
		}, "spec.volumes[1].persistentVolumeClaim"},
		{"hostPath", []corev1.Volume{vol("h", corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}})}, "spec.volumes[0].hostPath"},
		{"no source", []corev1.Volume{vol("x", corev1.VolumeSource{})}, "spec.volumes[0]"},
		{"emptyDir in memory, with a size", []corev1.Volume{vol("m", corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("1Mi"))}})}, ""},
		{"emptyDir on disk, with a size", []corev1.Volume{vol("d", corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			SizeLimit: ptr.To(resource.MustParse("1Mi"))}})}, ""},
		{"emptyDir in huge pages", []corev1.Volume{
			vol("a", corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}),
			vol("h", corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumHugePages}}),
		}, "spec.volumes[1].emptyDir.medium"},
		{"emptyDir in 2Mi huge pages", []corev1.Volume{vol("h", corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: "HugePages-2Mi"}})}, "spec.volumes[0].emptyDir.medium"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Pod(&corev1.Pod{Spec: corev1.PodSpec{Volumes: tt.volumes}}, Node{})
			wantRefusal(t, err, tt.wantField)
		})
	}
}

func TestContainerSecurity(t *testing.T) {
	tests := []struct {
		name      string
		sc        *corev1.SecurityContext
		init      bool
		wantField string
	}{
		{"none", nil, false, ""},
		{"drop all, add one", &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_BIND_SERVICE"}}}, false, ""},
		{"privileged", &corev1.SecurityContext{Privileged: ptrTo(true)}, false, "spec.containers[1].securityContext.privileged"},
		{"privileged init container", &corev1.SecurityContext{Privileged: ptrTo(true)}, true, "spec.initContainers[0].securityContext.privileged"},
		{"not privileged", &corev1.SecurityContext{Privileged: ptrTo(false)}, false, ""},
		{"default procMount", &corev1.SecurityContext{ProcMount: ptrTo(corev1.DefaultProcMount)}, false, ""},
		{"unmasked procMount", &corev1.SecurityContext{ProcMount: ptrTo(corev1.UnmaskedProcMount)}, true, "spec.initContainers[0].securityContext.procMount"},
		{"add ALL", &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"CHOWN", "all"}}}, false, "spec.containers[1].securityContext.capabilities.add[1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}, {Name: "b"}}}}
			if tt.init {
				pod.Spec.InitContainers = []corev1.Container{{Name: "i", SecurityContext: tt.sc}}
			} else {
				pod.Spec.Containers[1].SecurityContext = tt.sc
			}
			err := Pod(pod, Node{})
			wantRefusal(t, err, tt.wantField)
		})
	}
}

// TestAllowPrivileged: node.allowPrivileged admits privileged containers; without it the
// refusal names the field and the config setting.
func TestAllowPrivileged(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "a", SecurityContext: &corev1.SecurityContext{Privileged: ptrTo(true)}}}}}
	if err := Pod(pod, Node{AllowPrivileged: true}); err != nil {
		t.Errorf("allowed: %v", err)
	}
	err := Pod(pod, Node{})
	wantRefusal(t, err, "spec.containers[0].securityContext.privileged")
	if err == nil || !strings.Contains(err.Error(), "node.allowPrivileged") {
		t.Errorf("refusal %v does not name node.allowPrivileged", err)
	}
}

func ptrTo[T any](v T) *T { return &v }

func TestSysctls(t *testing.T) {
	tests := []struct {
		name      string
		sysctls   []corev1.Sysctl
		wantField string
	}{
		{"safe", []corev1.Sysctl{{Name: "net.ipv4.tcp_syncookies", Value: "1"}, {Name: "kernel.shm_rmid_forced", Value: "1"}}, ""},
		{"safe with slashes", []corev1.Sysctl{{Name: "net/ipv4/ip_local_port_range", Value: "1024 65000"}}, ""},
		{"unsafe", []corev1.Sysctl{{Name: "net.ipv4.tcp_syncookies", Value: "1"}, {Name: "kernel.msgmax", Value: "1"}}, "spec.securityContext.sysctls[1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Pod(&corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{Sysctls: tt.sysctls}}}, Node{})
			if ae := wantRefusal(t, err, tt.wantField); ae != nil && ae.PodReason != SysctlForbidden {
				t.Fatalf("err = %v, want a SysctlForbidden refusal of %s", err, tt.wantField)
			}
		})
	}
	if got := SysctlName("net/ipv4/conf/eno2.100/rp_filter"); got != "net.ipv4.conf.eno2/100.rp_filter" {
		t.Errorf("SysctlName = %q", got)
	}
}

func TestNamespaces(t *testing.T) {
	for _, tt := range []struct {
		name      string
		spec      corev1.PodSpec
		wantField string
	}{
		{"defaults", corev1.PodSpec{}, ""},
		{"hostIPC is the cell's", corev1.PodSpec{HostIPC: true}, ""},
		{"hostNetwork is the cell's", corev1.PodSpec{HostNetwork: true}, ""},
		{"hostPID", corev1.PodSpec{HostPID: true}, "spec.hostPID"},
		{"hostUsers true", corev1.PodSpec{HostUsers: ptrTo(true)}, ""},
		{"hostUsers false", corev1.PodSpec{HostUsers: ptrTo(false)}, "spec.hostUsers"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := Pod(&corev1.Pod{Spec: tt.spec}, Node{})
			wantRefusal(t, err, tt.wantField)
		})
	}
}

// TestPorts: the pod shares its cell's network with the agent, so the agent's port is refused
// as a containerPort or hostPort (TCP); other ports and protocols are the pod's.
func TestPorts(t *testing.T) {
	ctr := func(ps ...corev1.ContainerPort) corev1.PodSpec {
		return corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ps}}}
	}
	for _, tt := range []struct {
		name      string
		spec      corev1.PodSpec
		wantField string
	}{
		{"ordinary ports", ctr(corev1.ContainerPort{ContainerPort: 80, HostPort: 8080}), ""},
		{"the agent's port over UDP", ctr(corev1.ContainerPort{ContainerPort: 6421, Protocol: corev1.ProtocolUDP}), ""},
		{"hostPort", ctr(corev1.ContainerPort{ContainerPort: 80}, corev1.ContainerPort{ContainerPort: 81, HostPort: 6421}), "spec.containers[0].ports[1].hostPort"},
		{"containerPort", ctr(corev1.ContainerPort{ContainerPort: 6421, Protocol: corev1.ProtocolTCP}), "spec.containers[0].ports[0].containerPort"},
		{"init container", corev1.PodSpec{InitContainers: []corev1.Container{{Name: "i", Ports: []corev1.ContainerPort{{ContainerPort: 6421}}}}},
			"spec.initContainers[0].ports[0].containerPort"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantRefusal(t, Pod(&corev1.Pod{Spec: tt.spec}, Node{}), tt.wantField)
		})
	}
}

// wantRefusal fails t unless err refuses field, or, for field "", unless err is nil.
func wantRefusal(t *testing.T, err error, field string) *Error {
	t.Helper()
	var ae *Error
	switch {
	case field == "" && err != nil:
		t.Fatalf("refused: %v", err)
	case field != "" && (!errors.As(err, &ae) || ae.Field != field):
		t.Fatalf("err = %v, want a refusal of %s", err, field)
	}
	return ae
}

func TestSeccomp(t *testing.T) {
	localhost := &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptrTo("my.json")}
	outside := &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptrTo("../etc/x.json")}
	for _, tt := range []struct {
		name      string
		pod       *corev1.Pod
		wantField string
	}{
		{"runtime default", &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}}}, ""},
		{"pod localhost", &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{SeccompProfile: localhost}}}, ""},
		{"localhost without a name", &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost}}}},
			"spec.securityContext.seccompProfile.localhostProfile"},
		{"container localhost outside the root", &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a",
			SecurityContext: &corev1.SecurityContext{SeccompProfile: outside}}}}},
			"spec.containers[0].securityContext.seccompProfile.localhostProfile"},
	} {
		t.Run(tt.name, func(t *testing.T) { wantRefusal(t, Pod(tt.pod, Node{}), tt.wantField) })
	}
}

// TestLocalhostProfiles: the profiles a pod names are read under the root, once each; a
// missing or malformed one is refused naming the field that asks for it and the path.
func TestLocalhostProfiles(t *testing.T) {
	const good = `{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}`
	files := map[string]string{
		"/root/seccomp/deny-mkdir.json": good,
		"/root/seccomp/docker.json":     `{"defaultAction":"SCMP_ACT_ALLOW","archMap":[]}`,
		"/root/seccomp/empty.json":      `{}`,
	}
	var reads []string
	read := func(path string) ([]byte, error) {
		reads = append(reads, path)
		if b, ok := files[path]; ok {
			return []byte(b), nil
		}
		return nil, fmt.Errorf("open %s: %w", path, fs.ErrNotExist)
	}
	prof := func(name string) *corev1.SeccompProfile {
		return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptrTo(name)}
	}
	pod := &corev1.Pod{Spec: corev1.PodSpec{
		SecurityContext: &corev1.PodSecurityContext{SeccompProfile: prof("deny-mkdir.json")},
		Containers: []corev1.Container{
			{Name: "a", SecurityContext: &corev1.SecurityContext{SeccompProfile: prof("deny-mkdir.json")}},
			{Name: "b", SecurityContext: &corev1.SecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}}},
		},
	}}
	got, err := LocalhostProfiles(pod, "/root/seccomp", read)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || string(got["deny-mkdir.json"]) != good || len(reads) != 1 {
		t.Errorf("profiles %q after reads %q; want deny-mkdir.json read once", got, reads)
	}
	if p, err := ParseSeccompProfile(got["deny-mkdir.json"]); err != nil || p.DefaultAction != "SCMP_ACT_ALLOW" || len(p.Syscalls) != 1 {
		t.Errorf("parsed %+v, %v", p, err)
	}
	for _, tt := range []struct{ name, file, wantInMsg string }{
		{"missing", "nope.json", `cannot load seccomp profile "/root/seccomp/nope.json"`},
		{"docker keys", "docker.json", "archMap"},
		{"no default action", "empty.json", "defaultAction"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bad := pod.DeepCopy()
			bad.Spec.InitContainers = []corev1.Container{{Name: "i", SecurityContext: &corev1.SecurityContext{SeccompProfile: prof(tt.file)}}}
			_, err := LocalhostProfiles(bad, "/root/seccomp", read)
			wantRefusal(t, err, "spec.initContainers[0].securityContext.seccompProfile.localhostProfile")
			if err == nil || !strings.Contains(err.Error(), tt.wantInMsg) {
				t.Errorf("err %v, want %q in it", err, tt.wantInMsg)
			}
		})
	}
}
