package podrequest

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestEphemeralContainersResolveEnv(t *testing.T) {
	e := newResolverEnv(t, secret("db", map[string]string{"password": "s3cret"}), configMap("settings", map[string]string{"MODE": "fast"}))
	pod := basePod(corev1.Container{Name: "main"})
	pod.Spec.EphemeralContainers = []corev1.EphemeralContainer{{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{
			Name: "dbg", Image: "busybox",
			EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}},
			Env: []corev1.EnvVar{
				{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "db"}, Key: "password"}}},
				{Name: "B", Value: "$(MODE)-b"},
			},
			VolumeMounts: []corev1.VolumeMount{{Name: "v", MountPath: "/v"}},
		},
		TargetContainerName: "main",
	}}
	before := pod.DeepCopy()
	got, err := e.r.EphemeralContainers(t.Context(), pod)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("got %d containers, want 1", len(got))
	}
	c := got[0]
	env := map[string]string{}
	for _, v := range c.Env {
		if v.ValueFrom != nil {
			t.Errorf("env %s still has valueFrom", v.Name)
		}
		env[v.Name] = v.Value
	}
	if env["MODE"] != "fast" || env["PW"] != "s3cret" || env["B"] != "fast-b" {
		t.Errorf("env %v, want MODE=fast PW=s3cret B=fast-b", env)
	}
	if c.EnvFrom != nil || c.TargetContainerName != "main" || len(c.VolumeMounts) != 1 || c.Image != "busybox" {
		t.Errorf("container %+v: want envFrom cleared and target, mounts and image kept", c)
	}
	if !reflect.DeepEqual(before, pod) {
		t.Error("EphemeralContainers modified the pod")
	}

	pod.Spec.EphemeralContainers[0].Env = []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k"}}}}
	if _, err := e.r.EphemeralContainers(t.Context(), pod); !IsConfigError(err) {
		t.Errorf("with a missing mandatory secret = %v, want a ConfigError", err)
	}
}
