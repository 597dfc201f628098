package pod

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// subPathExpr expands from the container's env with kubelet's rules and messages.
func TestMountSubPath(t *testing.T) {
	env := []corev1.EnvVar{{Name: "POD", Value: "web-0"}, {Name: "NS", Value: "prod"}, {Name: "EMPTY"}, {Name: "ABS", Value: "/etc"}, {Name: "UP", Value: ".."}}
	for _, tc := range []struct {
		name          string
		m             corev1.VolumeMount
		want, wantErr string
	}{
		{"plain subPath", corev1.VolumeMount{SubPath: "a/b"}, "a/b", ""},
		{"no subPath", corev1.VolumeMount{}, "", ""},
		{"one var", corev1.VolumeMount{SubPathExpr: "$(POD)"}, "web-0", ""},
		{"two vars", corev1.VolumeMount{SubPathExpr: "logs/$(NS)/$(POD)"}, "logs/prod/web-0", ""},
		{"escaped", corev1.VolumeMount{SubPathExpr: "$$(POD)x"}, "$(POD)x", ""},
		{"no reference", corev1.VolumeMount{SubPathExpr: "fixed"}, "fixed", ""},
		{"missing", corev1.VolumeMount{SubPathExpr: "$(NOPE)/$(EMPTY)/$(POD)"}, "", "missing value for EMPTY, NOPE"},
		{"absolute", corev1.VolumeMount{SubPathExpr: "$(ABS)/x"}, "", "error SubPath `/etc/x` must not be an absolute path"},
		{"backstep", corev1.VolumeMount{SubPathExpr: "a/$(UP)/$(UP)"}, "", "unable to provision SubPath `a/../..`: must not contain '..'"},
		{"dots in a name", corev1.VolumeMount{SubPathExpr: "$(UP)x"}, "..x", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := mountSubPath(tc.m, env)
			if tc.wantErr != "" {
				var ce *ConfigError
				if !errors.As(err, &ce) || err.Error() != tc.wantErr {
					t.Fatalf("mountSubPath = %q, %v; want ConfigError %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("mountSubPath = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// A subPathExpr mount binds the expanded directory of the volume, created if missing.
func TestContainerMountsSubPathExpr(t *testing.T) {
	dir := t.TempDir()
	vdir := filepath.Join(dir, volumesDir, "data")
	if err := os.MkdirAll(vdir, 0o777); err != nil {
		t.Fatal(err)
	}
	spec := &corev1.PodSpec{Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}}
	c := &corev1.Container{
		Env:          []corev1.EnvVar{{Name: "POD_NAME", Value: "web-0"}},
		VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data", SubPathExpr: "pods/$(POD_NAME)"}},
	}
	ms, err := containerMounts(dir, spec, c)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(vdir, "pods", "web-0")
	if last := ms[len(ms)-1]; last.Source != want || last.Destination != "/data" {
		t.Errorf("mount %+v, want %s on /data", last, want)
	}
	if fi, err := os.Stat(want); err != nil || !fi.IsDir() {
		t.Errorf("subPath directory not created: %v", err)
	}
	c.Env = nil
	if _, err := containerMounts(dir, spec, c); !errors.As(err, new(*ConfigError)) {
		t.Errorf("containerMounts without the variable = %v, want a ConfigError", err)
	}
}
