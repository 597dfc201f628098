// Package volpush is the controller that keeps running pods' configMap, secret, downwardAPI
// and projected volumes current, as kubelet's volume manager does: when a ConfigMap or Secret
// a pod's volume reads changes, when the pod's labels or annotations change (downwardAPI
// files), and on every resync (which is also when projected service account tokens are
// refreshed, at 80% of their TTL, by the resolver's token cache), it resolves the pod's volume
// files again (internal/podrequest) and pushes the volumes whose files changed to the agent
// (cellapi.VolumeUpdater). Pushes are bounded-parallel with a deadline per call and retried
// with back-off; an agent without the route (501) is left alone.
package volpush

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/controllers/loop"
)

// Cells is the view of the cells manager the controller needs; *cells.Manager implements it.
type Cells interface {
	// EachRunningPod calls visit for every pod that runs on a ready agent.
	EachRunningPod(visit func(namespace, name string, uid types.UID))
	// RunningPod returns a copy of the pod as kip knows it (its status has the pod IP) and its
	// agent, while it runs on a ready agent.
	RunningPod(namespace, name string) (*corev1.Pod, cellapi.Agent, bool)
}

// Resolver renders a running pod's volume files; *podrequest.Resolver implements it.
type Resolver interface {
	// VolumeUpdate returns the files of the pod's configMap, secret, downwardAPI and projected
	// volumes; a volume that cannot be resolved is left out and its error joined into err.
	VolumeUpdate(ctx context.Context, pod *corev1.Pod) (map[string]cellapi.VolumeFiles, error)
	// ForgetPod drops what the resolver keeps for a pod that is gone.
	ForgetPod(uid types.UID)
}

// PodMeta returns the latest metadata of a pod (the pod informer's), which may be newer than
// the cells manager's copy; nil when unknown.
type PodMeta func(namespace, name string) *corev1.Pod

// Options tune the controller. Zero fields take defaults.
type Options struct {
	// Parallelism bounds the pods resolved and pushed at once (default 8).
	Parallelism int
	// CallTimeout bounds each resolution and each UpdateVolumes call (default 10 s).
	CallTimeout time.Duration
	// ResyncInterval is how often every running pod is resolved again: it catches missed
	// events and refreshes projected tokens when due (default 30 s; kubelet's sync is 1 min).
	ResyncInterval time.Duration
	// MinRetry and MaxRetry bound the per-pod retry back-off (defaults 200 ms, 30 s).
	MinRetry, MaxRetry time.Duration
	// PodMeta, when set, supplies the pod's latest labels and annotations.
	PodMeta PodMeta
	Clock   clock.WithTicker
	Log     *slog.Logger
}

// Controller pushes volume files. Make it with New, start it with Run; feed it changes with
// ObjectChanged and PodMetaChanged (the wiring calls them from the informers' handlers).
type Controller struct {
	opts     Options
	cells    Cells
	resolver Resolver
	log      *slog.Logger
	keys     *loop.Keys

	mu    sync.Mutex
	state map[string]*podState // by "namespace/name"
}

// podState is what the controller knows of one pod.
type podState struct {
	uid         types.UID
	agent       cellapi.Agent
	unsupported bool
	// pushed is the hash of each volume's files the agent acknowledged.
	pushed map[string][32]byte
	// refs are the "ConfigMap/ns/name" and "Secret/ns/name" its volumes read.
	refs map[string]bool
}

// New returns a controller; call Run to start it.
func New(opts Options, cells Cells, resolver Resolver) *Controller {
	if opts.Parallelism <= 0 {
		opts.Parallelism = 8
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = 10 * time.Second
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = 30 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		opts:     opts,
		cells:    cells,
		resolver: resolver,
		log:      opts.Log.With("component", "volpush"),
		state:    map[string]*podState{},
	}
	c.keys = loop.NewKeys(loop.KeysOptions{
		Name:           "volpush",
		Parallelism:    opts.Parallelism,
		ResyncInterval: opts.ResyncInterval,
		MinRetry:       opts.MinRetry,
		MaxRetry:       opts.MaxRetry,
		Resync:         c.enqueueAll,
		Sync:           c.sync,
		Retrying:       "updating a pod's volumes; retrying",
		Clock:          opts.Clock,
		Log:            c.log,
	})
	return c
}

// Run resolves and pushes until ctx ends.
func (c *Controller) Run(ctx context.Context) { c.keys.Run(ctx) }

// ObjectChanged queues every running pod whose volumes read the ConfigMap or Secret (kind
// "ConfigMap" or "Secret") namespace/name, which was added, updated or deleted, and every
// running pod the controller has not resolved yet (it may read it).
func (c *Controller) ObjectChanged(kind, namespace, name string) {
	ref := kind + "/" + namespace + "/" + name
	var keys []string
	c.cells.EachRunningPod(func(ns, pname string, uid types.UID) {
		key := ns + "/" + pname
		c.mu.Lock()
		st := c.state[key]
		if st == nil || st.uid != uid || st.refs[ref] {
			keys = append(keys, key)
		}
		c.mu.Unlock()
	})
	for _, k := range keys {
		c.keys.Add(k)
	}
}

// PodMetaChanged queues a pod whose labels or annotations changed, if it has a downwardAPI
// or projected volume (the only files that show them).
func (c *Controller) PodMetaChanged(old, cur *corev1.Pod) {
	if maps.Equal(old.Labels, cur.Labels) && maps.Equal(old.Annotations, cur.Annotations) {
		return
	}
	for i := range cur.Spec.Volumes {
		if v := &cur.Spec.Volumes[i]; v.DownwardAPI != nil || v.Projected != nil {
			c.keys.Add(cur.Namespace + "/" + cur.Name)
			return
		}
	}
}

// enqueueAll queues every running pod and forgets the pods that no longer run.
func (c *Controller) enqueueAll(add func(key string)) {
	running := map[string]types.UID{}
	c.cells.EachRunningPod(func(ns, name string, uid types.UID) { running[ns+"/"+name] = uid })
	var gone []types.UID
	c.mu.Lock()
	for k, st := range c.state {
		if uid, ok := running[k]; !ok || uid != st.uid {
			delete(c.state, k)
			gone = append(gone, st.uid)
		}
	}
	c.mu.Unlock()
	for _, uid := range gone {
		c.resolver.ForgetPod(uid)
	}
	for k := range running {
		add(k)
	}
}

// sync resolves one pod's volumes and pushes those whose files differ from what its agent
// acknowledged. A volume that cannot be resolved keeps its files (kubelet's behaviour) and is
// tried again at the next resync; only failed pushes are retried with back-off.
func (c *Controller) sync(ctx context.Context, key string) error {
	ns, name, _ := cutKey(key)
	pod, agent, ok := c.cells.RunningPod(ns, name)
	if !ok {
		return nil // the resync forgets it
	}
	if meta := c.podMeta(ns, name); meta != nil && meta.UID == pod.UID {
		pod.Labels, pod.Annotations = meta.Labels, meta.Annotations
	}
	c.mu.Lock()
	st := c.state[key]
	if st == nil || st.uid != pod.UID || !cellapi.SameAgent(st.agent, agent) {
		// A new pod, or a new connection to its agent (an adopted cell): it may hold anything.
		st = &podState{uid: pod.UID, agent: agent, pushed: map[string][32]byte{}}
		c.state[key] = st
	}
	st.refs = references(pod)
	unsupported := st.unsupported
	c.mu.Unlock()
	if unsupported || !hasAPIDataVolume(pod) {
		return nil
	}
	vu, ok := agent.(cellapi.VolumeUpdater)
	if !ok {
		c.markUnsupported(key, st, "its client cannot update volumes")
		return nil
	}

	rctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	vols, rerr := c.resolver.VolumeUpdate(rctx, pod)
	cancel()
	if rerr != nil {
		c.log.Debug("some volumes of a pod cannot be resolved; they keep their files", "pod", key, "err", rerr)
	}
	update := &cellapi.VolumeUpdate{UID: string(pod.UID), Volumes: map[string]cellapi.VolumeFiles{}}
	hashes := map[string][32]byte{}
	c.mu.Lock()
	for vol, files := range vols {
		h := hashFiles(files)
		if old, ok := st.pushed[vol]; !ok || old != h {
			update.Volumes[vol] = files
			hashes[vol] = h
		}
	}
	c.mu.Unlock()
	if len(update.Volumes) == 0 {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	res, err := vu.UpdateVolumes(pctx, update)
	cancel()
	switch {
	case cellapi.KindOf(err) == cellapi.KindBadVersion:
		c.markUnsupported(key, st, err.Error())
		return nil
	case cellapi.IsNotFound(err):
		return nil // the pod left the cell; the resync forgets it
	case err != nil:
		return fmt.Errorf("updating volumes %v of pod %s: %w", slices.Sorted(maps.Keys(update.Volumes)), key, err)
	}
	c.mu.Lock()
	maps.Copy(st.pushed, hashes)
	c.mu.Unlock()
	if len(res.Updated) > 0 {
		c.log.Info("volumes updated", "pod", key, "volumes", res.Updated)
	}
	return nil
}

func (c *Controller) podMeta(ns, name string) *corev1.Pod {
	if c.opts.PodMeta == nil {
		return nil
	}
	return c.opts.PodMeta(ns, name)
}

func (c *Controller) markUnsupported(key string, st *podState, why string) {
	c.mu.Lock()
	st.unsupported = true
	c.mu.Unlock()
	c.log.Info("the agent does not update volumes; the pod keeps the files it started with", "pod", key, "reason", why)
}

// Pushed reports whether the agent of pod key acknowledged files for volume vol (for tests
// and debugging).
func (c *Controller) Pushed(key, vol string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.state[key]
	if st == nil {
		return false
	}
	_, ok := st.pushed[vol]
	return ok
}

// references lists the ConfigMaps and Secrets the pod's volumes read.
func references(pod *corev1.Pod) map[string]bool {
	refs := map[string]bool{}
	add := func(kind, name string) { refs[kind+"/"+pod.Namespace+"/"+name] = true }
	for _, v := range pod.Spec.Volumes {
		switch {
		case v.ConfigMap != nil:
			add("ConfigMap", v.ConfigMap.Name)
		case v.Secret != nil:
			add("Secret", v.Secret.SecretName)
		case v.Projected != nil:
			for _, s := range v.Projected.Sources {
				if s.ConfigMap != nil {
					add("ConfigMap", s.ConfigMap.Name)
				}
				if s.Secret != nil {
					add("Secret", s.Secret.Name)
				}
			}
		}
	}
	return refs
}

func hasAPIDataVolume(pod *corev1.Pod) bool {
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap != nil || v.Secret != nil || v.DownwardAPI != nil || v.Projected != nil {
			return true
		}
	}
	return false
}

// hashFiles is a digest of a volume's paths, modes and contents.
func hashFiles(vf cellapi.VolumeFiles) [32]byte {
	h := sha256.New()
	var n [8]byte
	for _, p := range slices.Sorted(maps.Keys(vf.Files)) {
		f := vf.Files[p]
		for _, b := range [][]byte{[]byte(p), f.Data} {
			binary.BigEndian.PutUint64(n[:], uint64(len(b)))
			h.Write(n[:])
			h.Write(b)
		}
		binary.BigEndian.PutUint32(n[:4], uint32(f.Mode))
		h.Write(n[:4])
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func cutKey(key string) (ns, name string, ok bool) {
	return strings.Cut(key, "/")
}
