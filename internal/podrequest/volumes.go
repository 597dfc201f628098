package podrequest

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kip-dev/kip/internal/cellapi"
)

// defaultFileMode is the mode of volume files when neither the item nor the volume sets one.
const defaultFileMode int32 = 0o644

// ReasonContainerCreating is the waiting reason kubelet reports while a volume cannot be set up.
const ReasonContainerCreating = "ContainerCreating"

// volumes renders the contents of the pod's configMap, secret, downwardAPI and projected
// volumes. Other volume types (emptyDir, ...) need no content and get no entry.
func (r *Resolver) volumes(ctx context.Context, pod *corev1.Pod) (map[string]cellapi.VolumeFiles, error) {
	out := map[string]cellapi.VolumeFiles{}
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		files, ok, err := r.volume(ctx, pod, v)
		if err != nil {
			return nil, err
		}
		if ok {
			out[v.Name] = files
		}
	}
	return out, nil
}

// volume renders one volume; ok is false for volume types that carry no files.
func (r *Resolver) volume(ctx context.Context, pod *corev1.Pod, v *corev1.Volume) (cellapi.VolumeFiles, bool, error) {
	files := map[string]cellapi.File{}
	var err error
	switch {
	case v.ConfigMap != nil:
		err = r.configMapFiles(ctx, pod, v.Name, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, mode(v.ConfigMap.DefaultMode), files)
	case v.Secret != nil:
		err = r.secretFiles(ctx, pod, v.Name, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, mode(v.Secret.DefaultMode), files)
	case v.DownwardAPI != nil:
		err = r.downwardFiles(pod, v.Name, v.DownwardAPI.Items, mode(v.DownwardAPI.DefaultMode), files)
	case v.Projected != nil:
		err = r.projectedFiles(ctx, pod, v.Name, v.Projected, files)
	default:
		return cellapi.VolumeFiles{}, false, nil
	}
	if err != nil {
		return cellapi.VolumeFiles{}, false, err
	}
	return cellapi.VolumeFiles{Files: files}, true, nil
}

// VolumeUpdate renders the current files of a running pod's configMap, secret, downwardAPI
// and projected volumes, for the agent to update them as kubelet's periodic volume sync does.
// Each volume is resolved on its own: a volume that cannot be (a mandatory source deleted, a
// key gone) is left out, with its FailedMount Event, and its error joined into err, so the
// agent keeps its last files as kubelet does, while the others still update. An optional
// source that is gone yields no files for it, and they disappear from the volume, as under
// kubelet. Secrets and ConfigMaps are read from the caches only (they have synced by the time
// a pod runs); service account tokens come from the token cache, refreshed when due.
func (r *Resolver) VolumeUpdate(ctx context.Context, pod *corev1.Pod) (map[string]cellapi.VolumeFiles, error) {
	if err := r.waitSynced(ctx); err != nil {
		return nil, err
	}
	rr := *r
	rr.cacheOnly = true
	out := map[string]cellapi.VolumeFiles{}
	var errs []error
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		files, ok, err := rr.volume(ctx, pod, v)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("volume %s: %w", v.Name, err))
		case ok:
			out[v.Name] = files
		}
	}
	return out, errors.Join(errs...)
}

// ForgetPod drops what the resolver keeps for a pod that is gone (its tokens).
func (r *Resolver) ForgetPod(uid types.UID) { r.tokens.forgetPod(string(uid)) }

func mode(m *int32) int32 {
	if m == nil {
		return defaultFileMode
	}
	return *m
}

// mountErr emits kubelet's FailedMount Event and returns the error that keeps the pod waiting.
func (r *Resolver) mountErr(pod *corev1.Pod, volume string, format string, args ...any) error {
	msg := fmt.Sprintf("MountVolume.SetUp failed for volume %q : %s", volume, fmt.Sprintf(format, args...))
	r.warn(pod, ReasonFailedMount, "%s", msg)
	return &ConfigError{Reason: ReasonContainerCreating, Message: msg}
}

// addItems copies data into files: every key under its own name, or only the listed items.
func (r *Resolver) addItems(pod *corev1.Pod, volume, kind, name string, data map[string][]byte, items []corev1.KeyToPath, optional bool, defMode int32, files map[string]cellapi.File) error {
	if len(items) == 0 {
		for k, v := range data {
			files[k] = cellapi.File{Data: v, Mode: defMode}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return r.mountErr(pod, volume, "configuration key %q not found in %s %s/%s", it.Key, kind, pod.Namespace, name)
		}
		if err := checkPath(it.Path); err != nil {
			return r.mountErr(pod, volume, "items[%s].path: %v", it.Key, err)
		}
		files[it.Path] = cellapi.File{Data: v, Mode: modeOr(it.Mode, defMode)}
	}
	return nil
}

func modeOr(m *int32, def int32) int32 {
	if m == nil {
		return def
	}
	return *m
}

// checkPath refuses absolute paths and paths climbing out of the volume.
func checkPath(p string) error {
	if p == "" || path.IsAbs(p) {
		return fmt.Errorf("path %q must be relative and not empty", p)
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return fmt.Errorf("path %q must not contain '..'", p)
		}
	}
	return nil
}

func (r *Resolver) configMapFiles(ctx context.Context, pod *corev1.Pod, volume, name string, items []corev1.KeyToPath, optional *bool, defMode int32, files map[string]cellapi.File) error {
	opt := optional != nil && *optional
	cm, err := r.configMap(ctx, pod.Namespace, name)
	switch {
	case apierrors.IsNotFound(err) && opt:
		return nil
	case apierrors.IsNotFound(err):
		return r.mountErr(pod, volume, "configmap %q not found", name)
	case err != nil:
		return fmt.Errorf("reading configmap %s/%s for volume %s: %w", pod.Namespace, name, volume, err)
	}
	data := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return r.addItems(pod, volume, "ConfigMap", name, data, items, opt, defMode, files)
}

func (r *Resolver) secretFiles(ctx context.Context, pod *corev1.Pod, volume, name string, items []corev1.KeyToPath, optional *bool, defMode int32, files map[string]cellapi.File) error {
	opt := optional != nil && *optional
	s, err := r.secret(ctx, pod.Namespace, name)
	switch {
	case apierrors.IsNotFound(err) && opt:
		return nil
	case apierrors.IsNotFound(err):
		return r.mountErr(pod, volume, "secret %q not found", name)
	case err != nil:
		return fmt.Errorf("reading secret %s/%s for volume %s: %w", pod.Namespace, name, volume, err)
	}
	return r.addItems(pod, volume, "Secret", name, s.Data, items, opt, defMode, files)
}

func (r *Resolver) downwardFiles(pod *corev1.Pod, volume string, items []corev1.DownwardAPIVolumeFile, defMode int32, files map[string]cellapi.File) error {
	for _, it := range items {
		if err := checkPath(it.Path); err != nil {
			return r.mountErr(pod, volume, "items.path: %v", err)
		}
		var (
			v   string
			err error
		)
		switch {
		case it.FieldRef != nil:
			v, err = fieldValue(pod, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			if it.ResourceFieldRef.ContainerName == "" {
				err = fmt.Errorf("resourceFieldRef.containerName is required in a volume")
				break
			}
			v, err = r.resourceValue(pod, "", it.ResourceFieldRef)
		default:
			continue
		}
		if err != nil {
			return r.mountErr(pod, volume, "%s: %v", it.Path, err)
		}
		files[it.Path] = cellapi.File{Data: []byte(v), Mode: modeOr(it.Mode, defMode)}
	}
	return nil
}

func (r *Resolver) projectedFiles(ctx context.Context, pod *corev1.Pod, volume string, p *corev1.ProjectedVolumeSource, files map[string]cellapi.File) error {
	defMode := mode(p.DefaultMode)
	for _, src := range p.Sources {
		var err error
		switch {
		case src.ConfigMap != nil:
			err = r.configMapFiles(ctx, pod, volume, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, defMode, files)
		case src.Secret != nil:
			err = r.secretFiles(ctx, pod, volume, src.Secret.Name, src.Secret.Items, src.Secret.Optional, defMode, files)
		case src.DownwardAPI != nil:
			err = r.downwardFiles(pod, volume, src.DownwardAPI.Items, defMode, files)
		case src.ServiceAccountToken != nil:
			err = r.tokenFile(ctx, pod, volume, src.ServiceAccountToken, defMode, files)
		case src.ClusterTrustBundle != nil:
			err = r.mountErr(pod, volume, "clusterTrustBundle projections are not supported by kip")
		case src.PodCertificate != nil:
			err = r.mountErr(pod, volume, "podCertificate projections are not supported by kip")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// tokenFile asks the API server for a token bound to the pod (TokenRequest), as kubelet does
// for projected serviceAccountToken sources, and keeps it as kubelet's token manager does: the
// same token is served until 80% of its TTL (or 24 hours) has passed, then a new one is
// requested; if that fails, the old one is served until it expires.
func (r *Resolver) tokenFile(ctx context.Context, pod *corev1.Pod, volume string, src *corev1.ServiceAccountTokenProjection, defMode int32, files map[string]cellapi.File) error {
	if err := checkPath(src.Path); err != nil {
		return r.mountErr(pod, volume, "serviceAccountToken.path: %v", err)
	}
	if r.cfg.Client == nil {
		return r.mountErr(pod, volume, "no API client to request a service account token")
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	exp := int64(3600)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	// As kubelet's projected volume: with an fsUser or an fsGroup the token is 0600 (the
	// agent's fsGroup ownership then makes it 0640), owned by fsUser when there is one.
	fsUser := fsUserOf(pod)
	if fsUser != nil || (pod.Spec.SecurityContext != nil && pod.Spec.SecurityContext.FSGroup != nil) {
		defMode = 0o600
	}
	key := tokenKey(pod.Namespace, sa, string(pod.UID), src.Audience, exp)
	if tok, ok := r.tokens.get(key); ok {
		files[src.Path] = cellapi.File{Data: []byte(tok), Mode: defMode, Owner: fsUser}
		return nil
	}
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tok, err := r.cfg.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		if old, ok := r.tokens.stale(key); ok {
			r.cfg.Log.Warn("refreshing a service account token failed; the current one is kept until it expires",
				"pod", pod.Namespace+"/"+pod.Name, "volume", volume, "err", err)
			files[src.Path] = cellapi.File{Data: []byte(old), Mode: defMode, Owner: fsUser}
			return nil
		}
		if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) || apierrors.IsBadRequest(err) {
			return r.mountErr(pod, volume, "requesting a token for service account %s/%s: %v", pod.Namespace, sa, err)
		}
		return fmt.Errorf("requesting a token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	r.tokens.put(key, string(pod.UID), tok, exp)
	files[src.Path] = cellapi.File{Data: []byte(tok.Status.Token), Mode: defMode, Owner: fsUser}
	return nil
}

// fsUserOf is kubelet's FsUserFrom: the user every container of the pod runs as
// (runAsUser of its securityContext, else the pod's), or nil when one of them sets none or
// two differ.
func fsUserOf(pod *corev1.Pod) *int64 {
	var podUser *int64
	if sc := pod.Spec.SecurityContext; sc != nil {
		podUser = sc.RunAsUser
	}
	var user *int64
	check := func(sc *corev1.SecurityContext) bool {
		u := podUser
		if sc != nil && sc.RunAsUser != nil {
			u = sc.RunAsUser
		}
		if u == nil || (user != nil && *user != *u) {
			user = nil
			return false
		}
		user = u
		return true
	}
	for i := range pod.Spec.InitContainers {
		if !check(pod.Spec.InitContainers[i].SecurityContext) {
			return nil
		}
	}
	for i := range pod.Spec.Containers {
		if !check(pod.Spec.Containers[i].SecurityContext) {
			return nil
		}
	}
	for i := range pod.Spec.EphemeralContainers {
		if !check(pod.Spec.EphemeralContainers[i].SecurityContext) {
			return nil
		}
	}
	if user == nil {
		return nil
	}
	u := *user
	return &u
}
