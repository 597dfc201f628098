package pod

import (
	"errors"
	"fmt"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kip-dev/kip/internal/admit"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/poddns"
)

// Validate checks what the agent relies on in a pod request and returns an error of kind
// Invalid naming the first bad field. Image references are not parsed here: a reference that
// does not parse is reported as the container's waiting reason InvalidImageName, as kubelet
// does. It is the one check of a request: Start relies on it and does not repeat it.
func Validate(req *cellapi.PodRequest) error {
	if req == nil || req.Pod == nil {
		return invalid("pod", "required")
	}
	p := req.Pod
	if p.UID == "" {
		return invalid("pod.metadata.uid", "required")
	}
	if errs := validation.IsDNS1123Subdomain(strings.ToLower(string(p.UID))); len(errs) > 0 || strings.ContainsAny(string(p.UID), "/_") {
		return invalid("pod.metadata.uid", fmt.Sprintf("%q is not a valid UID", p.UID))
	}
	switch p.Spec.RestartPolicy {
	case "", corev1.RestartPolicyAlways, corev1.RestartPolicyOnFailure, corev1.RestartPolicyNever:
	default:
		return invalid("pod.spec.restartPolicy", fmt.Sprintf("%q is not Always, OnFailure or Never", p.Spec.RestartPolicy))
	}
	if len(p.Spec.Containers) == 0 {
		return invalid("pod.spec.containers", "at least one container is required")
	}
	vols := map[string]bool{}
	for i, v := range p.Spec.Volumes {
		f := fmt.Sprintf("pod.spec.volumes[%d]", i)
		if errs := validation.IsDNS1123Label(v.Name); len(errs) > 0 {
			return invalid(f+".name", fmt.Sprintf("%q: %s", v.Name, strings.Join(errs, "; ")))
		}
		if vols[v.Name] {
			return invalid(f+".name", fmt.Sprintf("duplicate volume %q", v.Name))
		}
		vols[v.Name] = true
		if err := checkVolumeSource(f, v, req.Volumes); err != nil {
			return err
		}
	}
	for name, vf := range req.Volumes {
		if !vols[name] {
			return invalid("volumes", fmt.Sprintf("files given for volume %q that the pod does not declare", name))
		}
		for rel := range vf.Files {
			if err := checkVolumePath(rel); err != nil {
				return invalid(fmt.Sprintf("volumes[%s].files[%s]", name, rel), err.Error())
			}
		}
	}
	names := map[string]bool{}
	check := func(kind string, cs []corev1.Container) error {
		for i, c := range cs {
			f := fmt.Sprintf("pod.spec.%s[%d]", kind, i)
			if errs := validation.IsDNS1123Label(c.Name); len(errs) > 0 {
				return invalid(f+".name", fmt.Sprintf("%q: %s", c.Name, strings.Join(errs, "; ")))
			}
			if names[c.Name] {
				return invalid(f+".name", fmt.Sprintf("duplicate container name %q", c.Name))
			}
			names[c.Name] = true
			if c.RestartPolicy != nil && (kind != "initContainers" || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
				return invalid(f+".restartPolicy", fmt.Sprintf("%q: only init containers may set it, and only to Always (a sidecar)", *c.RestartPolicy))
			}
			if strings.TrimSpace(c.Image) == "" {
				return invalid(f+".image", "required")
			}
			if c.WorkingDir != "" && !path.IsAbs(c.WorkingDir) {
				return invalid(f+".workingDir", fmt.Sprintf("%q must be absolute", c.WorkingDir))
			}
			mounts := map[string]bool{}
			for j, m := range c.VolumeMounts {
				mf := fmt.Sprintf("%s.volumeMounts[%d]", f, j)
				if !vols[m.Name] {
					return invalid(mf+".name", fmt.Sprintf("volume %q is not declared in pod.spec.volumes", m.Name))
				}
				if !path.IsAbs(m.MountPath) || strings.Contains(m.MountPath, "..") {
					return invalid(mf+".mountPath", fmt.Sprintf("%q must be an absolute path without ..", m.MountPath))
				}
				if mounts[path.Clean(m.MountPath)] {
					return invalid(mf+".mountPath", fmt.Sprintf("%q is mounted twice", m.MountPath))
				}
				mounts[path.Clean(m.MountPath)] = true
				if m.SubPath != "" && m.SubPathExpr != "" {
					return invalid(mf+".subPathExpr", "subPath and subPathExpr are mutually exclusive")
				}
				if m.SubPath != "" {
					if err := checkRelPath(m.SubPath); err != nil {
						return invalid(mf+".subPath", err.Error())
					}
				}
			}
		}
		return nil
	}
	if err := check("initContainers", p.Spec.InitContainers); err != nil {
		return err
	}
	if err := check("containers", p.Spec.Containers); err != nil {
		return err
	}
	// Every Localhost seccomp profile the pod names is shipped and is a profile (kip reads
	// them under its node.seccompProfileRoot).
	for name, b := range req.SeccompProfiles {
		if _, err := admit.ParseSeccompProfile(b); err != nil {
			return invalid(fmt.Sprintf("seccompProfiles[%s]", name), err.Error())
		}
	}
	if _, err := admit.LocalhostProfiles(p, "", func(name string) ([]byte, error) {
		if b, ok := req.SeccompProfiles[name]; ok {
			return b, nil
		}
		return nil, errors.New("not in the pod request's seccompProfiles")
	}); err != nil {
		return cellapi.Errorf(cellapi.KindInvalid, "invalid pod request: pod.%v", err)
	}
	// Kubelet fails a pod whose names it cannot form (setHostnameAsFQDN over 64 characters).
	if _, err := poddns.PodNames(p, req.ClusterDomain); err != nil {
		return cellapi.Errorf(cellapi.KindInvalid, "invalid pod request: pod.spec.%s", err)
	}
	return nil
}

func checkVolumeSource(field string, v corev1.Volume, files map[string]cellapi.VolumeFiles) error {
	switch {
	case v.EmptyDir != nil:
		if m := v.EmptyDir.Medium; m != corev1.StorageMediumDefault && m != corev1.StorageMediumMemory {
			return invalid(field+".emptyDir.medium", fmt.Sprintf("volume %q: medium %s is not supported on a cell (only the default medium and Memory)", v.Name, m))
		}
		return nil
	case v.ConfigMap != nil, v.Secret != nil, v.Projected != nil, v.DownwardAPI != nil:
		return nil // contents come in PodRequest.Volumes; an absent optional source is empty
	default:
		if _, ok := files[v.Name]; ok {
			return nil
		}
		return invalid(field, fmt.Sprintf("volume %q: only emptyDir, configMap, secret, projected and downwardAPI volumes are supported on a cell", v.Name))
	}
}

// checkRelPath accepts a relative path that stays inside its directory.
func checkRelPath(p string) error {
	if p == "" || path.IsAbs(p) {
		return fmt.Errorf("%q must be a non-empty relative path", p)
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return fmt.Errorf("%q must not contain ..", p)
		}
	}
	return nil
}

func invalid(field, msg string) error {
	return cellapi.Errorf(cellapi.KindInvalid, "invalid pod request: %s: %s", field, msg)
}
