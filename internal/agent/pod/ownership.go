package pod

import (
	"io/fs"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
)

// Volume ownership for pod.spec.securityContext.fsGroup, as kubelet's
// pkg/volume/volume_linux.go (VolumeOwnership.ChangePermissions) does it for the volumes kip
// supports: every file, directory and link of the volume, its root included, gets group
// fsGroup (lchown, so a link's target is not followed); files and directories add the group
// bits rw (0660) on a writable volume (emptyDir) or r (0440) on a read-only one (configMap,
// secret, downwardAPI, projected), directories also x for user and group (0110) and setgid,
// so that files created later inherit the group. These volume plugins pass no
// fsGroupChangePolicy, so the change is always recursive (OnRootMismatch only matters for
// other volume kinds) and, as kubelet, per-file failures are not errors.
const (
	fsGroupRWMask   fs.FileMode = 0o660
	fsGroupROMask   fs.FileMode = 0o440
	fsGroupExecMask fs.FileMode = 0o110
)

// podFSGroup returns the pod's fsGroup, or nil.
func podFSGroup(p *corev1.Pod) *int64 {
	if sc := p.Spec.SecurityContext; sc != nil {
		return sc.FSGroup
	}
	return nil
}

// fsGroupMode is the mode kubelet leaves on a file or directory of mode m.
func fsGroupMode(m fs.FileMode, readOnly bool) fs.FileMode {
	mask := fsGroupRWMask
	if readOnly {
		mask = fsGroupROMask
	}
	if m.IsDir() {
		mask |= fsGroupExecMask | fs.ModeSetgid
	}
	return m&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) | mask
}

// setVolumeOwnership applies fsGroup gid to everything under root, root included.
func setVolumeOwnership(root *os.Root, gid int64, readOnly bool) error {
	return fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		_ = root.Lchown(p, -1, int(gid))
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		info, err := root.Lstat(p)
		if err != nil {
			return err
		}
		if m := fsGroupMode(info.Mode(), readOnly); m != info.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) {
			_ = root.Chmod(p, m)
		}
		return nil
	})
}

// setEmptyDirOwnership applies the pod's fsGroup to its emptyDir volumes under dir (after
// any tmpfs is mounted on them), as kubelet's emptyDir SetUpAt does.
func setEmptyDirOwnership(dir string, p *corev1.Pod) error {
	gid := podFSGroup(p)
	if gid == nil {
		return nil
	}
	for _, v := range p.Spec.Volumes {
		if v.EmptyDir == nil {
			continue
		}
		root, err := os.OpenRoot(filepath.Join(dir, volumesDir, v.Name))
		if err != nil {
			return err
		}
		err = setVolumeOwnership(root, *gid, false)
		root.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
