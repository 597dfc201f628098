// Package podrequest turns a Pod into the cellapi.PodRequest a cell agent runs: env and envFrom
// resolved to literal values (service links and $(VAR) expansion included), the contents of
// configMap, secret, downwardAPI and projected volumes (service account tokens through
// TokenRequest), and image pull credentials — with the Events kubelet emits on the way. It reads
// Secrets, ConfigMaps and Services from informer listers it is given; it knows nothing of cells,
// clouds or virtual-kubelet.
package podrequest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cellapi"
)

// Event reasons Resolve emits. The first eight are the ones kubelet-compatible tooling (and
// virtual-kubelet's e2e suite) look for.
const (
	ReasonOptionalConfigMapNotFound     = "OptionalConfigMapNotFound"
	ReasonOptionalConfigMapKeyNotFound  = "OptionalConfigMapKeyNotFound"
	ReasonOptionalSecretNotFound        = "OptionalSecretNotFound"
	ReasonOptionalSecretKeyNotFound     = "OptionalSecretKeyNotFound"
	ReasonMandatoryConfigMapNotFound    = "MandatoryConfigMapNotFound"
	ReasonMandatoryConfigMapKeyNotFound = "MandatoryConfigMapKeyNotFound"
	ReasonMandatorySecretNotFound       = "MandatorySecretNotFound"
	ReasonMandatorySecretKeyNotFound    = "MandatorySecretKeyNotFound"
	ReasonFailedMount                   = "FailedMount"
	ReasonFailedToRetrievePullSecret    = "FailedToRetrieveImagePullSecret"
)

// ReasonCreateContainerConfigError is the waiting reason kubelet reports on containers whose
// configuration (env from a missing Secret or ConfigMap) cannot be built.
const ReasonCreateContainerConfigError = "CreateContainerConfigError"

// ConfigError says a pod cannot be started yet because something it needs from the API server
// is missing (a mandatory Secret, ConfigMap or key). The pod must not run; kubelet reports it as
// a waiting container with Reason (CreateContainerConfigError) and retries later.
type ConfigError struct {
	// Reason is the waiting reason to report on the pod's containers.
	Reason string
	// Message names what is missing, e.g. `secret "db" not found`.
	Message string
}

func (e *ConfigError) Error() string { return e.Message }

// IsConfigError reports whether err is (or wraps) a *ConfigError.
func IsConfigError(err error) bool {
	var ce *ConfigError
	return errors.As(err, &ce)
}

// Config holds what a Resolver reads from.
type Config struct {
	// Secrets, ConfigMaps and Services are informer-backed listers; no per-pod GETs.
	Secrets    corev1listers.SecretLister
	ConfigMaps corev1listers.ConfigMapLister
	Services   corev1listers.ServiceLister
	// Synced reports whether the listers' caches have synced; Resolve waits for it (or for its
	// context) before reading them. nil means they are always ready.
	Synced func() bool
	// Client is used for TokenRequest (projected serviceAccountToken volumes) and to confirm a
	// cache miss of a Secret or ConfigMap with one GET.
	Client kubernetes.Interface
	// Events receives the pod's Events; nil drops them.
	Events record.EventRecorder
	// NodeAllocatable stands in for a container's resource limit when it sets none (as kubelet
	// uses the node's allocatable), for resourceFieldRef.
	NodeAllocatable corev1.ResourceList
	// ClusterDNS and ClusterDomain are the node's DNS settings (kubelet's names), passed to the
	// agent in every request for the pod's resolv.conf and /etc/hosts.
	ClusterDNS    []string
	ClusterDomain string
	Log           *slog.Logger
	// Clock times service account token refreshes; nil is the real clock.
	Clock clock.PassiveClock
}

// Resolver turns a pod into a cellapi.PodRequest: env and envFrom resolved to literal values,
// configMap/secret/projected/downwardAPI volume contents, and imagePullSecrets.
type Resolver struct {
	cfg Config
	// tokens are the service account tokens issued for pods, shared by every copy.
	tokens *tokenCache
	// cacheOnly reads Secrets and ConfigMaps from the listers only, without confirming a
	// miss with a GET (VolumeUpdate's copy).
	cacheOnly bool
}

// New returns a Resolver; Secrets and ConfigMaps listers are required.
func New(cfg Config) (*Resolver, error) {
	if cfg.Secrets == nil || cfg.ConfigMaps == nil {
		return nil, errors.New("creating resolver: Secrets and ConfigMaps listers are required")
	}
	if cfg.Events == nil {
		cfg.Events = &record.FakeRecorder{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Resolver{cfg: cfg, tokens: newTokenCache(cfg.Clock)}, nil
}

// Resolve builds the request the cell agent runs. The pod is not modified.
//
// Field references are read from the pod as given: status.podIP and status.podIPs are known
// only once the cell is launched, so the caller (the cell state machine) sets
// pod.Status.PodIP(s) to the cell's address before calling Resolve; before that they resolve
// to "". A missing mandatory Secret/ConfigMap/key is a *ConfigError (the pod must not run; a
// later call may succeed); every missing optional one is an Event and is skipped.
func (r *Resolver) Resolve(ctx context.Context, pod *corev1.Pod) (*cellapi.PodRequest, error) {
	if pod == nil {
		return nil, errors.New("resolving pod: pod is nil")
	}
	if err := r.waitSynced(ctx); err != nil {
		return nil, err
	}
	out := pod.DeepCopy()
	svcEnv, err := r.serviceEnv(pod)
	if err != nil {
		return nil, fmt.Errorf("resolving service environment of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	for i := range out.Spec.InitContainers {
		c := &out.Spec.InitContainers[i]
		env, err := r.containerEnv(ctx, pod, c, svcEnv)
		if err != nil {
			return nil, err
		}
		c.Env, c.EnvFrom = env, nil
	}
	for i := range out.Spec.Containers {
		c := &out.Spec.Containers[i]
		env, err := r.containerEnv(ctx, pod, c, svcEnv)
		if err != nil {
			return nil, err
		}
		c.Env, c.EnvFrom = env, nil
	}
	vols, err := r.volumes(ctx, pod)
	if err != nil {
		return nil, err
	}
	return &cellapi.PodRequest{
		Pod:           out,
		PullSecrets:   r.pullSecrets(ctx, pod),
		Volumes:       vols,
		ClusterDNS:    slices.Clone(r.cfg.ClusterDNS),
		ClusterDomain: r.cfg.ClusterDomain,
	}, nil
}

// syncPoll is how often waitSynced looks at the caches.
const syncPoll = 100 * time.Millisecond

// waitSynced returns once the listers' caches have synced, or ctx's error wrapped.
func (r *Resolver) waitSynced(ctx context.Context) error {
	if r.cfg.Synced == nil || r.cfg.Synced() {
		return nil
	}
	err := wait.PollUntilContextCancel(ctx, syncPoll, true, func(context.Context) (bool, error) {
		return r.cfg.Synced(), nil
	})
	if err != nil {
		return fmt.Errorf("resolving pod: waiting for the API caches to sync: %w", err)
	}
	return nil
}

// secret reads a Secret from the informer cache. A miss is confirmed with one GET before it
// counts: the cache may not have synced yet (kip just started) or may lag an object created
// together with the pod, and an optional variable silently left out would be wrong for good.
func (r *Resolver) secret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	s, err := r.cfg.Secrets.Secrets(namespace).Get(name)
	if apierrors.IsNotFound(err) && r.cfg.Client != nil && !r.cacheOnly {
		return r.cfg.Client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	}
	return s, err
}

// configMap is secret's twin for ConfigMaps.
func (r *Resolver) configMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error) {
	cm, err := r.cfg.ConfigMaps.ConfigMaps(namespace).Get(name)
	if apierrors.IsNotFound(err) && r.cfg.Client != nil && !r.cacheOnly {
		return r.cfg.Client.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
	}
	return cm, err
}

func (r *Resolver) warn(pod *corev1.Pod, reason, format string, args ...any) {
	r.cfg.Events.Eventf(pod, corev1.EventTypeWarning, reason, format, args...)
}

// configErr emits the Warning Event for a missing mandatory object and returns the error that
// keeps the pod from running.
func (r *Resolver) configErr(pod *corev1.Pod, reason, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	r.warn(pod, reason, "%s", msg)
	return &ConfigError{Reason: ReasonCreateContainerConfigError, Message: msg}
}

// EphemeralContainers returns the pod's spec.ephemeralContainers with env and envFrom
// resolved as Resolve resolves an ordinary container's (service variables included); the pod
// is not modified. As for Resolve, a missing mandatory Secret/ConfigMap/key is a *ConfigError.
func (r *Resolver) EphemeralContainers(ctx context.Context, pod *corev1.Pod) ([]corev1.EphemeralContainer, error) {
	if pod == nil {
		return nil, errors.New("resolving ephemeral containers: pod is nil")
	}
	if len(pod.Spec.EphemeralContainers) == 0 {
		return nil, nil
	}
	if err := r.waitSynced(ctx); err != nil {
		return nil, err
	}
	svcEnv, err := r.serviceEnv(pod)
	if err != nil {
		return nil, fmt.Errorf("resolving service environment of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	out := make([]corev1.EphemeralContainer, len(pod.Spec.EphemeralContainers))
	for i := range pod.Spec.EphemeralContainers {
		pod.Spec.EphemeralContainers[i].DeepCopyInto(&out[i])
		c := corev1.Container(out[i].EphemeralContainerCommon)
		env, err := r.containerEnv(ctx, pod, &c, svcEnv)
		if err != nil {
			return nil, err
		}
		out[i].Env, out[i].EnvFrom = env, nil
	}
	return out, nil
}
