package agent_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// A running container sees an update of its configMap volume through the volume mount, while
// its subPath mount of the same volume keeps the content it started with and the volume stays
// read-only, as under kubelet.
func TestUpdateVolumesReachRunningContainer(t *testing.T) {
	h := newHarness(t, fastBackOff)
	p := newPod("vols", corev1.RestartPolicyNever, shell("app", h.img("busybox"), `
touch /cfg/x 2>/dev/null && echo cfg-writable
echo started
i=0
while [ "$(cat /cfg/greeting)" != v2 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "cfg=$(cat /cfg/greeting) extra=$(cat /cfg/extra 2>/dev/null) fixed=$(cat /fixed/greeting)"`))
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{
		{Name: "cfg", MountPath: "/cfg"}, // not ReadOnly: the agent makes it so
		{Name: "cfg", MountPath: "/fixed/greeting", SubPath: "greeting"},
	}
	p.Spec.Volumes = []corev1.Volume{
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}},
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	req := &cellapi.PodRequest{Pod: p, Volumes: map[string]cellapi.VolumeFiles{
		"cfg": {Files: map[string]cellapi.File{"greeting": {Data: []byte("v1"), Mode: 0o644}}},
	}}
	if _, err := h.client.PutPod(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Running != nil })
	deadline := time.Now().Add(30 * time.Second)
	for h.logs("app", cellapi.LogOptions{}) == "" && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}

	v2 := map[string]cellapi.VolumeFiles{"cfg": {Files: map[string]cellapi.File{
		"greeting": {Data: []byte("v2"), Mode: 0o644}, "extra": {Data: []byte("new"), Mode: 0o644},
	}}}
	if _, err := h.client.UpdateVolumes(t.Context(), &cellapi.VolumeUpdate{UID: "other", Volumes: v2}); !cellapi.IsNotFound(err) {
		t.Errorf("update for another pod = %v, want NotFound", err)
	}
	bad := map[string]cellapi.VolumeFiles{"scratch": {Files: map[string]cellapi.File{"a": {Data: []byte("x")}}}}
	if _, err := h.client.UpdateVolumes(t.Context(), &cellapi.VolumeUpdate{UID: string(p.UID), Volumes: bad}); !cellapi.IsInvalid(err) {
		t.Errorf("update of an emptyDir = %v, want Invalid", err)
	}
	st, err := h.client.UpdateVolumes(t.Context(), &cellapi.VolumeUpdate{UID: string(p.UID), Volumes: v2})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Updated) != 1 || st.Updated[0] != "cfg" {
		t.Errorf("updated %v, want [cfg]", st.Updated)
	}
	seen := h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodSucceeded || s.Phase == corev1.PodFailed })
	if last := seen[len(seen)-1]; last.Phase != corev1.PodSucceeded {
		t.Fatalf("pod %s", describe(last))
	}
	if got, want := h.logs("app", cellapi.LogOptions{}), "started\ncfg=v2 extra=new fixed=v1\n"; got != want {
		t.Errorf("app logs %q, want %q", got, want)
	}
	h.deletePod(time.Second)
	if _, err := h.client.UpdateVolumes(t.Context(), &cellapi.VolumeUpdate{UID: string(p.UID), Volumes: v2}); !cellapi.IsNotFound(err) {
		t.Errorf("update after delete = %v, want NotFound", err)
	}
}
