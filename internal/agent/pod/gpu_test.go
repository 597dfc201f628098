package pod

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/agent/gpu"
	"github.com/kip-dev/kip/internal/cellapi"
)

// A pod asking for GPUs on a cell without any is refused (Invalid, naming the resource)
// before anything is done: no pod directory, no container.
func TestStartRefusesGPUsTheCellLacks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pod")
	one := resource.MustParse("1")
	req := &cellapi.PodRequest{Pod: &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "cuda", UID: "gpu-uid"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "main", Image: "busybox"},
			{Name: "train", Image: "cuda", Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{gpu.ResourceNVIDIA: one}}},
		}},
	}}
	// No Runtime, Images or Cgroups: Start must fail before it needs them.
	_, err := Start(Config{Dir: dir, GPU: gpu.Config{DevRoot: t.TempDir(), CDIDirs: []string{}}}, req)
	if !cellapi.IsInvalid(err) {
		t.Fatalf("err = %v, want kind Invalid", err)
	}
	for _, want := range []string{"spec.containers[1].resources.limits[nvidia.com/gpu]", `container "train" asks for 1 nvidia.com/gpu, but this cell has 0 NVIDIA GPUs`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err %q lacks %q", err, want)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the pod directory was made: %v", err)
	}
}
