package agent_test

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// An ephemeral container put into a running pod runs once, with its env and the pod's volume,
// in its target container's PID namespace (it sees the target's process), and its status and
// logs come back under its name; putting the list again starts nothing new.
func TestEphemeralContainerJoinsTarget(t *testing.T) {
	h := newHarness(t, fastBackOff)
	p := newPod("eph", corev1.RestartPolicyNever, shell("app", h.img("busybox"), `echo hi > /scratch/note; exec sleep 300`))
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}}
	p.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Running != nil })

	dbg := shell("dbg", h.img("busybox"), `echo "env=$GREETING note=$(cat /s/note) pid1=$(cat /proc/1/cmdline | tr '\0' ' ')"`)
	dbg.Env = []corev1.EnvVar{{Name: "GREETING", Value: "hello"}}
	dbg.VolumeMounts = []corev1.VolumeMount{{Name: "scratch", MountPath: "/s"}}
	e := &cellapi.EphemeralContainers{UID: string(p.UID), Containers: []corev1.EphemeralContainer{{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon(dbg), TargetContainerName: "app",
	}}}
	if _, err := h.client.PutEphemeralContainers(t.Context(), &cellapi.EphemeralContainers{UID: "other", Containers: e.Containers}); !cellapi.IsNotFound(err) {
		t.Errorf("put for another pod = %v, want NotFound", err)
	}
	if _, err := h.client.PutEphemeralContainers(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	terminated := func(s *cellapi.PodStatus) bool {
		return len(s.EphemeralContainerStatuses) == 1 && s.EphemeralContainerStatuses[0].State.Terminated != nil
	}
	seen := h.watchUntil(60*time.Second, terminated)
	if cs := seen[len(seen)-1].EphemeralContainerStatuses[0]; cs.State.Terminated.ExitCode != 0 || cs.RestartCount != 0 {
		t.Errorf("dbg status %+v, want exit 0 and no restart", cs)
	}
	if got := h.logs("dbg", cellapi.LogOptions{}); !strings.HasPrefix(got, "env=hello note=hi pid1=sleep 300") {
		t.Errorf("dbg logs %q, want env=hello note=hi pid1=sleep 300", got)
	}
	st, err := h.client.PutEphemeralContainers(t.Context(), e)
	if err != nil {
		t.Fatal(err)
	}
	if !terminated(st) || st.ContainerStatuses[0].State.Running == nil {
		t.Errorf("after a second put: %s; want dbg still terminated and app running", describe(st))
	}
	h.deletePod(time.Second)
}
