package pod

import (
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/admit"
	"github.com/kip-dev/kip/internal/cellapi"
)

// DefaultProcSys is where the kernel shows the sysctls of the agent's namespaces.
const DefaultProcSys = "/proc/sys"

// podSysctls sets the pod's spec.securityContext.sysctls. They are namespaced (network, IPC),
// and the pod's namespaces are the cell's, which the agent shares: each is written here, under
// procSys, before any container starts. kip admitted only kubelet's safe sysctls; one the
// kernel does not have makes the request invalid.
func podSysctls(procSys string, pod *corev1.Pod) error {
	sc := pod.Spec.SecurityContext
	if sc == nil {
		return nil
	}
	for _, s := range sc.Sysctls {
		path := filepath.Join(procSys, strings.ReplaceAll(admit.SysctlName(s.Name), ".", "/"))
		if err := writeExisting(path, s.Value); err != nil {
			return cellapi.Errorf(cellapi.KindInvalid, "setting sysctl %s=%q: %v", s.Name, s.Value, err)
		}
	}
	return nil
}

// writeExisting writes v to the file at path, which must exist (a sysctl the kernel has).
func writeExisting(path, v string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(v); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
