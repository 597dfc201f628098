package pod

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

func TestValidate(t *testing.T) {
	good := func() *cellapi.PodRequest {
		return &cellapi.PodRequest{Pod: &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", UID: "0b6f-uid"},
			Spec: corev1.PodSpec{
				Volumes:    []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
				Containers: []corev1.Container{{Name: "a", Image: "busybox", VolumeMounts: []corev1.VolumeMount{{Name: "v", MountPath: "/v"}}}},
			},
		}}
	}
	if err := Validate(good()); err != nil {
		t.Fatalf("valid request rejected: %v", err)
	}
	cases := []struct {
		name string
		mut  func(*cellapi.PodRequest)
		want string
	}{
		{"nil pod", func(r *cellapi.PodRequest) { r.Pod = nil }, "pod: required"},
		{"no uid", func(r *cellapi.PodRequest) { r.Pod.UID = "" }, "pod.metadata.uid: required"},
		{"uid with slash", func(r *cellapi.PodRequest) { r.Pod.UID = "../etc" }, "pod.metadata.uid"},
		{"bad policy", func(r *cellapi.PodRequest) { r.Pod.Spec.RestartPolicy = "Sometimes" }, "pod.spec.restartPolicy"},
		{"no containers", func(r *cellapi.PodRequest) { r.Pod.Spec.Containers = nil }, "pod.spec.containers: at least one"},
		{"bad name", func(r *cellapi.PodRequest) { r.Pod.Spec.Containers[0].Name = "A_B" }, "pod.spec.containers[0].name"},
		{"dup name", func(r *cellapi.PodRequest) {
			r.Pod.Spec.InitContainers = []corev1.Container{{Name: "a", Image: "x"}}
		}, "pod.spec.containers[0].name: duplicate"},
		{"no image", func(r *cellapi.PodRequest) { r.Pod.Spec.Containers[0].Image = " " }, "pod.spec.containers[0].image: required"},
		{"relative workingDir", func(r *cellapi.PodRequest) { r.Pod.Spec.Containers[0].WorkingDir = "srv" }, "workingDir"},
		{"undeclared volume", func(r *cellapi.PodRequest) { r.Pod.Spec.Containers[0].VolumeMounts[0].Name = "w" }, "volumeMounts[0].name"},
		{"relative mountPath", func(r *cellapi.PodRequest) { r.Pod.Spec.Containers[0].VolumeMounts[0].MountPath = "v" }, "mountPath"},
		{"escaping subPath", func(r *cellapi.PodRequest) { r.Pod.Spec.Containers[0].VolumeMounts[0].SubPath = "a/../../x" }, "subPath"},
		{"subPath and subPathExpr", func(r *cellapi.PodRequest) {
			r.Pod.Spec.Containers[0].VolumeMounts[0].SubPath = "a"
			r.Pod.Spec.Containers[0].VolumeMounts[0].SubPathExpr = "$(A)"
		}, "volumeMounts[0].subPathExpr: subPath and subPathExpr are mutually exclusive"},
		{"hostPath", func(r *cellapi.PodRequest) {
			r.Pod.Spec.Volumes[0].VolumeSource = corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}
		}, "only emptyDir"},
		{"emptyDir in huge pages", func(r *cellapi.PodRequest) {
			r.Pod.Spec.Volumes[0].EmptyDir.Medium = corev1.StorageMediumHugePages
		}, "pod.spec.volumes[0].emptyDir.medium"},
		{"files for unknown volume", func(r *cellapi.PodRequest) {
			r.Volumes = map[string]cellapi.VolumeFiles{"nope": {}}
		}, `volume "nope"`},
		{"escaping file", func(r *cellapi.PodRequest) {
			r.Volumes = map[string]cellapi.VolumeFiles{"v": {Files: map[string]cellapi.File{"../x": {}}}}
		}, "volumes[v].files[../x]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := good()
			tc.mut(r)
			err := Validate(r)
			if err == nil || !cellapi.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want Invalid containing %q", err, tc.want)
			}
		})
	}
}
