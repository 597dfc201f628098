package pod

import (
	"fmt"
	"path/filepath"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// ValidateVolumeUpdate checks u against the pod it is for: every volume it names must be a
// configMap, secret, downwardAPI or projected volume of the pod, and every path a valid
// volume path. It returns an error of kind Invalid naming the first problem.
func (p *Pod) ValidateVolumeUpdate(u *cellapi.VolumeUpdate) error {
	for name, vf := range u.Volumes {
		i := slices.IndexFunc(p.spec.Volumes, func(v corev1.Volume) bool { return v.Name == name })
		if i < 0 {
			return cellapi.Errorf(cellapi.KindInvalid, "invalid volume update: volumes[%s]: pod %s has no such volume", name, p.UID())
		}
		if !isAPIDataVolume(&p.spec.Volumes[i]) {
			return cellapi.Errorf(cellapi.KindInvalid, "invalid volume update: volumes[%s]: only configMap, secret, downwardAPI and projected volumes are updated", name)
		}
		for rel := range vf.Files {
			if err := checkVolumePath(rel); err != nil {
				return cellapi.Errorf(cellapi.KindInvalid, "invalid volume update: volumes[%s].files[%s]: %v", name, rel, err)
			}
		}
	}
	return nil
}

// UpdateVolumes rewrites the volumes named in u with the atomic writer and returns the names
// of those that changed, sorted. u must have passed ValidateVolumeUpdate. Updates run one at
// a time and never after Stop began (an error of kind Conflict), so the pod directory is not
// removed under a write. Containers see the new files through the volume's links; a subPath
// mount keeps the files it started with.
func (p *Pod) UpdateVolumes(u *cellapi.VolumeUpdate) ([]string, error) {
	p.volMu.Lock()
	defer p.volMu.Unlock()
	p.mu.Lock()
	stopping := p.stopping
	p.mu.Unlock()
	if stopping {
		return nil, cellapi.Errorf(cellapi.KindConflict, "pod %s is stopping; its volumes are no longer updated", p.UID())
	}
	names := make([]string, 0, len(u.Volumes))
	for name := range u.Volumes {
		names = append(names, name)
	}
	slices.Sort(names)
	var updated []string
	for _, name := range names {
		changed, err := writeAtomic(filepath.Join(p.cfg.Dir, volumesDir, name), u.Volumes[name].Files, p.cfg.Clock.Now(), podFSGroup(p.req.Pod))
		if changed {
			updated = append(updated, name)
		}
		if err != nil {
			return updated, fmt.Errorf("updating volume %s of pod %s: %w", name, p.UID(), err)
		}
	}
	return updated, nil
}
