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
	if err := os.MkdirAll(filepath.Join(procSys, "net/ipv4"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"net/ipv4/ip_local_port_range", "net/ipv4/tcp_syncookies"} {
		if err := os.WriteFile(filepath.Join(procSys, f), []byte("0"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pod := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{
		{Name: "net.ipv4.ip_local_port_range", Value: "20000 30000"},
		{Name: "net/ipv4/tcp_syncookies", Value: "1"},
		{Name: "kernel.shm_rmid_forced", Value: "1"},
	}}}}
	per, err := podSysctls(procSys, pod)
	if err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]string{"net/ipv4/ip_local_port_range": "20000 30000", "net/ipv4/tcp_syncookies": "1"} {
		if b, _ := os.ReadFile(filepath.Join(procSys, f)); string(b) != want {
			t.Errorf("%s = %q, want %q", f, b, want)
		}
	}
	if len(per) != 1 || per["kernel.shm_rmid_forced"] != "1" {
		t.Errorf("per-container sysctls %v, want only kernel.shm_rmid_forced", per)
	}

	// A sysctl the kernel does not have makes the request invalid.
	pod.Spec.SecurityContext.Sysctls = []corev1.Sysctl{{Name: "net.ipv4.tcp_notsent_lowat", Value: "1"}}
	if _, err := podSysctls(procSys, pod); !cellapi.IsInvalid(err) {
		t.Errorf("err = %v, want Invalid", err)
	}
	if per, err := podSysctls(procSys, &corev1.Pod{}); err != nil || per != nil {
		t.Errorf("no securityContext: %v, %v", per, err)
	}
}
