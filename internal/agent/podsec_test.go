package agent_test

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// subPathExpr expands from the container's env: the init container writes through its
// expanded subPath, the app sees the file under that directory of the whole volume, and a
// container whose expression names an unset variable waits with CreateContainerConfigError.
func TestSubPathExpr(t *testing.T) {
	h := newHarness(t, fastBackOff)
	p := newPod("subpathexpr", corev1.RestartPolicyNever,
		shell("app", h.img("busybox"), "cat /all/pods/web-0/msg"),
		shell("bad", h.img("busybox"), "true"))
	p.Spec.InitContainers = []corev1.Container{shell("prepare", h.img("busybox"), "echo from-web-0 > /data/msg")}
	p.Spec.InitContainers[0].Env = []corev1.EnvVar{{Name: "POD_NAME", Value: "web-0"}}
	p.Spec.InitContainers[0].VolumeMounts = []corev1.VolumeMount{{Name: "shared", MountPath: "/data", SubPathExpr: "pods/$(POD_NAME)"}}
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "shared", MountPath: "/all"}}
	p.Spec.Containers[1].VolumeMounts = []corev1.VolumeMount{{Name: "shared", MountPath: "/data", SubPathExpr: "$(MISSING)"}}
	p.Spec.Volumes = []corev1.Volume{{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool {
		app, bad := s.ContainerStatuses[0].State, s.ContainerStatuses[1].State
		return app.Terminated != nil && bad.Waiting != nil && bad.Waiting.Reason == "CreateContainerConfigError"
	})
	st, err := h.client.GetPod(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if term := st.ContainerStatuses[0].State.Terminated; term.ExitCode != 0 {
		t.Errorf("app %s", describe(st))
	}
	if w := st.ContainerStatuses[1].State.Waiting; w == nil || !strings.Contains(w.Message, "missing value for MISSING") {
		t.Errorf("bad container %s, want waiting with %q", describe(st), "missing value for MISSING")
	}
	if got, want := h.logs("app", cellapi.LogOptions{}), "from-web-0\n"; got != want {
		t.Errorf("app logs %q, want %q", got, want)
	}
	h.deletePod(time.Second)
}

// Every container of a pod shares its /dev/shm, a 64 MiB tmpfs, as under kubelet: the reader
// sees the file the writer (another container) left there, and the mount is gone once the
// pod is deleted (deletePod checks that no mount is left).
func TestPodSharesDevShm(t *testing.T) {
	h := newHarness(t, fastBackOff)
	p := newPod("shm", corev1.RestartPolicyNever,
		shell("writer", h.img("busybox"), "echo from-writer > /dev/shm/msg; sleep 30"),
		shell("reader", h.img("busybox"), `i=0; while [ ! -e /dev/shm/msg ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
cat /dev/shm/msg; df -k /dev/shm | tail -1 | awk '{print $2}'; touch /dev/shm/x; chmod +x /dev/shm/x; /dev/shm/x 2>/dev/null || echo noexec`))
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[1].State.Terminated != nil })
	if got, want := h.logs("reader", cellapi.LogOptions{}), "from-writer\n65536\nnoexec\n"; got != want {
		t.Errorf("reader logs %q, want %q", got, want)
	}
	h.deletePod(time.Second)
}

// fsGroup as under kubelet: a non-root container (uid 1000, fsGroup 2000) writes the emptyDir
// (setgid to 2000, so its files get group 2000) and reads a secret file of mode 0440 that
// fsGroup makes group-readable, through the atomic writer's links.
func TestFSGroupVolumeOwnership(t *testing.T) {
	h := newHarness(t, fastBackOff)
	p := newPod("fsgroup", corev1.RestartPolicyNever, shell("app", h.img("busybox"),
		`id -u; echo hi > /data/f && stat -c '%g %a' /data /data/f; cat /secret/token; echo; stat -L -c '%g %a' /secret/token`))
	uid, gid := int64(1000), int64(2000)
	p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: &uid, FSGroup: &gid}
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}, {Name: "secret", MountPath: "/secret"}}
	p.Spec.Volumes = []corev1.Volume{
		{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s"}}},
	}
	req := &cellapi.PodRequest{Pod: p, Volumes: map[string]cellapi.VolumeFiles{
		"secret": {Files: map[string]cellapi.File{"token": {Data: []byte("s3cret"), Mode: 0o440}}},
	}}
	if _, err := h.client.PutPod(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	seen := h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodSucceeded || s.Phase == corev1.PodFailed })
	if last := seen[len(seen)-1]; last.Phase != corev1.PodSucceeded {
		t.Errorf("pod %s; logs %q", describe(last), h.logs("app", cellapi.LogOptions{}))
	}
	if got, want := h.logs("app", cellapi.LogOptions{}), "1000\n2000 2777\n2000 644\ns3cret\n2000 440\n"; got != want {
		t.Errorf("app logs %q, want %q", got, want)
	}
	h.deletePod(time.Second)
}

// seccompProfile RuntimeDefault (pod level here) refuses a new user namespace with EPERM,
// which the same container does unconfined (container level Unconfined overriding the pod's).
func TestSeccompRuntimeDefault(t *testing.T) {
	h := newHarness(t, fastBackOff)
	script := `unshare -r true 2>/tmp/err && echo allowed || cat /tmp/err`
	p := newPod("seccomp", corev1.RestartPolicyNever, shell("confined", h.img("busybox"), script), shell("unconfined", h.img("busybox"), script))
	p.Spec.SecurityContext = &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	p.Spec.Containers[1].SecurityContext = &corev1.SecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}}
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodSucceeded || s.Phase == corev1.PodFailed })
	if got := h.logs("confined", cellapi.LogOptions{}); !strings.Contains(got, "Operation not permitted") {
		t.Errorf("RuntimeDefault: unshare -r printed %q, want EPERM (Operation not permitted)", got)
	}
	if got, want := h.logs("unconfined", cellapi.LogOptions{}), "allowed\n"; got != want {
		t.Errorf("Unconfined: unshare -r printed %q, want %q", got, want)
	}
	h.deletePod(time.Second)
}
