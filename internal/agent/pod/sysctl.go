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

// podSysctls sets the pod's spec.securityContext.sysctls. The net.* ones belong to the pod's
// network namespace, which is the cell's and the agent's own: they are written here, under
// procSys, once. The others (kernel.shm_rmid_forced, IPC-namespaced) go into every
// container's OCI spec, returned. kip admitted only kubelet's safe sysctls; a kernel that
// refuses one makes the request invalid.
func podSysctls(procSys string, pod *corev1.Pod) (perContainer map[string]string, err error) {
	sc := pod.Spec.SecurityContext
	if sc == nil {
		return nil, nil
	}
	for _, s := range sc.Sysctls {
		name := admit.SysctlName(s.Name)
		if !strings.HasPrefix(name, "net.") {
			if perContainer == nil {
				perContainer = map[string]string{}
			}
			perContainer[name] = s.Value
			continue
		}
		path := filepath.Join(procSys, strings.ReplaceAll(name, ".", "/"))
		if err := writeExisting(path, s.Value); err != nil {
			return nil, cellapi.Errorf(cellapi.KindInvalid, "setting sysctl %s=%q: %v", s.Name, s.Value, err)
		}
	}
	return perContainer, nil
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
