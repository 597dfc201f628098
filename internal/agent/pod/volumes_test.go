package pod

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kip-dev/kip/internal/cellapi"
)

// volumePod is a Pod with only what UpdateVolumes uses, its volumes laid out as Start does.
func volumePod(t *testing.T) *Pod {
	t.Helper()
	p := &corev1.Pod{}
	p.UID = "uid-1"
	p.Spec.Volumes = []corev1.Volume{
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}},
		{Name: "sec", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{}}},
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	dir := t.TempDir()
	for _, v := range []string{"cfg", "sec"} {
		vdir := filepath.Join(dir, volumesDir, v)
		os.MkdirAll(vdir, 0o755)
		if _, err := writeAtomic(vdir, map[string]cellapi.File{"k": {Data: []byte(v + "1")}}, t0, nil); err != nil {
			t.Fatal(err)
		}
	}
	req := &cellapi.PodRequest{Pod: p}
	return &Pod{cfg: Config{Dir: dir, Clock: testclock.NewFakeClock(t0)}, req: req, spec: &p.Spec}
}

func TestValidateVolumeUpdate(t *testing.T) {
	p := volumePod(t)
	cases := []struct {
		name, vol, path, want string
	}{
		{"configMap volume", "cfg", "k", ""},
		{"unknown volume", "nope", "k", `volumes[nope]: pod uid-1 has no such volume`},
		{"emptyDir refused", "scratch", "k", "only configMap, secret, downwardAPI and projected volumes"},
		{"reserved name", "cfg", "..data", "must not begin with '..'"},
		{"climbing path", "sec", "a/../../b", "must not contain .."},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := p.ValidateVolumeUpdate(&cellapi.VolumeUpdate{UID: "uid-1", Volumes: map[string]cellapi.VolumeFiles{
				tc.vol: {Files: map[string]cellapi.File{tc.path: {Data: []byte("x")}}},
			}})
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("err %v, want none", err)
			case tc.want != "" && (!cellapi.IsInvalid(err) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err %v, want Invalid containing %q", err, tc.want)
			}
		})
	}
}

func TestUpdateVolumes(t *testing.T) {
	p := volumePod(t)
	u := &cellapi.VolumeUpdate{UID: "uid-1", Volumes: map[string]cellapi.VolumeFiles{
		"cfg": {Files: map[string]cellapi.File{"k": {Data: []byte("cfg2")}}},
		"sec": {Files: map[string]cellapi.File{"k": {Data: []byte("sec1")}}}, // as before
	}}
	updated, err := p.UpdateVolumes(u)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(updated, []string{"cfg"}) {
		t.Errorf("updated %v, want [cfg]", updated)
	}
	if s := mustRead(t, filepath.Join(p.cfg.Dir, volumesDir, "cfg", "k")); s != "cfg2" {
		t.Errorf("cfg/k = %q, want cfg2", s)
	}
	if updated, err := p.UpdateVolumes(u); err != nil || len(updated) != 0 {
		t.Errorf("the same update again = %v, %v; want nothing updated", updated, err)
	}
	p.stopping = true
	if _, err := p.UpdateVolumes(u); !cellapi.IsConflict(err) {
		t.Errorf("update while stopping = %v, want Conflict", err)
	}
}
