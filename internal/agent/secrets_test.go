package agent_test

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/testenv"
)

// Secrets stay off the cell's disk, and their files have kubelet's modes. A pod with secret
// volumes (defaultMode unset, as kip sends it: 0644; and 0400), a projected token and an env
// var from the secret runs; while it runs, no file on the state directory's filesystem holds
// the secret's bytes (the volumes are tmpfs mounts, as kubelet's memory-backed secret and
// projected volumes; config.json and runc's state are on the agent's tmpfs). The container
// sees the modes kubelet gives: without fsGroup as sent, with fsGroup the group read bit
// added, group fsGroup, and the token (sent 0600, owned by the pod's runAsUser) 0640.
func TestSecretsOnTmpfs(t *testing.T) {
	tests := []struct {
		name string
		sc   *corev1.PodSecurityContext
		// the token as kip's podrequest sends it for this securityContext
		tokenMode  int32
		tokenOwner *int64
		want       string
	}{{
		name: "no fsGroup", tokenMode: 0o644,
		want: "dir 1777 0 0\ndefault 644 0 0\n0400 400 0 0\ntoken 644 0 0\n",
	}, {
		name: "fsGroup and runAsUser", sc: &corev1.PodSecurityContext{FSGroup: ptr.To[int64](2000), RunAsUser: ptr.To[int64](1000)},
		tokenMode: 0o600, tokenOwner: ptr.To[int64](1000),
		want: "dir 3777 0 2000\ndefault 644 0 2000\n0400 440 0 2000\ntoken 640 1000 2000\n",
	}}
	h := newHarness(t, fastBackOff)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			secret := []byte("s3cr3t-" + randTag() + randTag() + randTag())
			token := []byte("token-" + randTag() + randTag() + randTag())
			p := newPod("secrets", corev1.RestartPolicyNever, shell("app", h.img("busybox"), `
f() { echo "$1 $(stat -L -c '%a %u %g' "$2")"; }
f dir /s-default; f default /s-default/key; f 0400 /s-0400/key; f token /tok/token
[ "$SECRET_ENV" = "$(cat /s-default/key)" ] || echo env differs
echo done; sleep 3600`))
			p.Spec.SecurityContext = tc.sc
			p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1)
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "SECRET_ENV", Value: string(secret)}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{
				{Name: "s-default", MountPath: "/s-default"}, {Name: "s-0400", MountPath: "/s-0400"}, {Name: "tok", MountPath: "/tok"}}
			p.Spec.Volumes = []corev1.Volume{
				{Name: "s-default", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s"}}},
				{Name: "s-0400", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s", DefaultMode: ptr.To[int32](0o400)}}},
				{Name: "tok", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}}},
			}
			req := &cellapi.PodRequest{Pod: p, Volumes: map[string]cellapi.VolumeFiles{
				"s-default": {Files: map[string]cellapi.File{"key": {Data: secret, Mode: 0o644}}},
				"s-0400":    {Files: map[string]cellapi.File{"key": {Data: secret, Mode: 0o400}}},
				"tok":       {Files: map[string]cellapi.File{"token": {Data: token, Mode: tc.tokenMode, Owner: tc.tokenOwner}}},
			}}
			if _, err := h.client.PutPod(t.Context(), req); err != nil {
				t.Fatal(err)
			}
			h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool {
				return s.ContainerStatuses[0].State.Running != nil || s.ContainerStatuses[0].State.Terminated != nil
			})
			deadline := time.Now().Add(30 * time.Second)
			out := ""
			for !strings.HasSuffix(out, "done\n") && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
				out = h.logs("app", cellapi.LogOptions{})
			}
			if got := strings.TrimSuffix(out, "done\n"); got != tc.want {
				t.Errorf("in the container:\n%s\nwant:\n%s", got, tc.want)
			}
			for _, s := range [][]byte{secret, token} {
				if found := testenv.FilesOnDiskHolding(t, h.stateDir, s); len(found) > 0 {
					t.Errorf("%q is on the state directory's disk in %v", s, found)
				}
			}
			h.deletePod(time.Second)
		})
	}
}
