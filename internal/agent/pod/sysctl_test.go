package pod

import (
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

func TestPodSysctls(t *testing.T) {
	procSys := t.TempDir()
	for _, d := range []string{"net/ipv4", "kernel"} {
		if err := os.MkdirAll(filepath.Join(procSys, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"net/ipv4/ip_local_port_range", "net/ipv4/tcp_syncookies", "kernel/shm_rmid_forced"} {
		if err := os.WriteFile(filepath.Join(procSys, f), []byte("0"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pod := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{
		{Name: "net.ipv4.ip_local_port_range", Value: "20000 30000"},
		{Name: "net/ipv4/tcp_syncookies", Value: "1"},
		{Name: "kernel.shm_rmid_forced", Value: "1"},
	}}}}
	if err := podSysctls(procSys, pod); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]string{"net/ipv4/ip_local_port_range": "20000 30000", "net/ipv4/tcp_syncookies": "1", "kernel/shm_rmid_forced": "1"} {
		if b, _ := os.ReadFile(filepath.Join(procSys, f)); string(b) != want {
			t.Errorf("%s = %q, want %q", f, b, want)
		}
	}

	// A sysctl the kernel does not have makes the request invalid.
	pod.Spec.SecurityContext.Sysctls = []corev1.Sysctl{{Name: "net.ipv4.tcp_notsent_lowat", Value: "1"}}
	if err := podSysctls(procSys, pod); !cellapi.IsInvalid(err) {
		t.Errorf("err = %v, want Invalid", err)
	}
	if err := podSysctls(procSys, &corev1.Pod{}); err != nil {
		t.Errorf("no securityContext: %v", err)
	}
}
