// Package pod supervises one pod inside a cell the way kubelet does: it pulls the images,
// runs the init containers in order and then the app containers, restarts them according to
// the restart policy with kubelet's exponential back-off, keeps kubelet-shaped container and
// pod status (every change bumps Seq and is pushed to Notify), and stops everything on
// delete: SIGTERM, the grace period, SIGKILL, then removal of every container, mount, cgroup
// and file it made.
package pod

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/agent/gpu"
	"github.com/kip-dev/kip/internal/agent/image"
	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/agent/sandbox"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/poddns"
)

// Images is the part of the image store the supervisor uses (*image.Store).
type Images interface {
	Pull(ctx context.Context, ref string, auths []cellapi.RegistryAuth) (*image.Image, error)
	// Lookup returns the image ref was pulled as, when it is here, asking no registry.
	Lookup(ref string) (*image.Image, bool)
	MountRootFS(img *image.Image, dir string) (rootfs string, unmount func() error, err error)
}

// LogWriter is one container run's log: one writer per stream, closed when the run ends.
type LogWriter interface {
	Stream(name string) io.Writer
	Close() error
}

// Cgroups is the part of *cgroups.FS the supervisor uses.
type Cgroups interface {
	SetMemoryLimit(rel string, bytes int64) error
	SetPidsLimit(rel string, limit int64) error
	MemoryEvents(rel string) (cgroups.MemoryEvents, error)
	Usage(rel string) (cgroups.Usage, error)
	Ceiling(rel string) (cgroups.Ceiling, error)
	Remove(rel string) error
}

var _ Cgroups = (*cgroups.FS)(nil)

// Config is what a pod needs from the agent.
type Config struct {
	// Dir is this pod's directory; Start creates it and Stop removes it.
	Dir     string
	Runtime runtime.Runtime
	Images  Images
	Cgroups Cgroups
	// CgroupParent is relative to the agent's cgroup; the pod's cgroups live under
	// CgroupParent/<pod UID>/<container>/<run>.
	CgroupParent string
	// NewLog opens the log of one container run.
	NewLog func(path string) (LogWriter, error)
	Clock  clock.Clock
	BackOff
	// PodIP goes into /etc/hosts; ResolvConf is the resolv.conf used unless the pod sets DNS.
	PodIP, ResolvConf string
	Log               *slog.Logger
	// Notify receives every new status, under the pod's lock: it must not block or call back.
	Notify func(*cellapi.PodStatus)
	// FirstSeq is the Seq of the first status.
	FirstSeq uint64
	// SandboxBinary is the agent's executable, run as the pod's sandbox (package sandbox):
	// the holder of the pod's UTS namespace and, with shareProcessNamespace, its PID
	// namespace. Empty means no sandbox: each container gets its own UTS namespace, and a pod
	// that shares its process namespace cannot start.
	SandboxBinary string
	// ProcSys is where the pod's net.* sysctls are written; empty means DefaultProcSys.
	ProcSys string
	// GPU says where the cell's GPUs are (gpu.Config; the zero value: where an instance has
	// them). Containers asking for nvidia.com/gpu or amd.com/gpu get their own.
	GPU gpu.Config
	// EmptyDirInterval is how often the ephemeral storage of a pod with limits on it (disk
	// emptyDirs with a sizeLimit, ephemeral-storage limits) is measured (storage.go); zero
	// means DefaultEmptyDirInterval.
	EmptyDirInterval time.Duration
	// RunDir, when set, is a memory-backed directory (the agent's tmpfs, as a host's /run)
	// for the runtime bundles of the pod's container runs, RunDir/<container id>: their
	// config.json carries the resolved env, secret values included. Empty: each bundle is in
	// the run's directory under Dir.
	RunDir string
}

// Pod is one supervised pod.
type Pod struct {
	cfg Config
	req *cellapi.PodRequest
	// gpus are the GPUs of the containers that asked for some, by name (gpu.Allocate).
	gpus map[string]*gpu.Assignment
	// sandbox holds the pod's shared namespaces; nil without Config.SandboxBinary.
	sandbox *sandbox.Sandbox
	// names are the pod's hostname and FQDN in the cluster domain (internal/poddns).
	names     poddns.Names
	lastEvent uint64 // guarded by mu
	spec      *corev1.PodSpec
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	// sidecarCtx is the sidecars' context, ended by stopSidecars.
	sidecarCtx    context.Context
	stopSidecarsF context.CancelFunc

	// volMu serializes volume updates with each other and with the removal of the pod
	// directory by Stop.
	volMu sync.Mutex

	mu       sync.Mutex
	status   cellapi.PodStatus
	ctrs     map[string]*ctr
	stopping bool
	killing  bool
	stopped  chan struct{}
	// evicted is the eviction message once the pod is evicted (evict); halted says its
	// containers have all stopped.
	evicted string
	halted  bool

	cleanOnce sync.Once
	cleanErr  error

	// prefetched are the first pulls Start began, by container name (prefetch.go). Guarded
	// by mu.
	prefetched map[string]*prefetch
}

// ctr is the supervisor's record of one container.
type ctr struct {
	spec *corev1.Container
	init bool
	// idx is the container's index in its status slice.
	idx int
	// runs counts the runs started; the current or last one is runs-1.
	runs    int
	running *runtime.Container
	// attach holds the current run's streams for kubectl attach; nil before the first run.
	attach  *attachable
	image   *image.Image
	backOff backOff
	// killReason explains why the agent killed the current run (a failed probe or hook).
	killReason string
	// ctx ends the container's pulls, starts and restarts: the pod's, or for sidecars the
	// sidecars' (ended once the app containers are done).
	ctx context.Context
	// sidecar is an init container with restartPolicy Always: it starts in order, keeps
	// running and restarting beside the app containers, and stops after them.
	sidecar bool
	// startedOnce is closed when the container first counts as started.
	startedOnce chan struct{}
	startedSet  sync.Once
	// ephemeral is an ephemeral container (AddEphemeral): run once, its status in
	// EphemeralContainerStatuses[idx]; specIdx is its index in spec.ephemeralContainers and
	// target its targetContainerName.
	ephemeral bool
	specIdx   int
	target    string
}

func (c *ctr) markStarted() { c.startedSet.Do(func() { close(c.startedOnce) }) }

func isSidecar(c *corev1.Container) bool {
	return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

// Start lays out the pod directory and starts supervising the pod. req must have passed
// Validate: the caller validates it once, before it reads the pod's UID.
func Start(cfg Config, req *cellapi.PodRequest) (*Pod, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.BackOff == (BackOff{}) {
		cfg.BackOff = DefaultBackOff
	}
	if cfg.Notify == nil {
		cfg.Notify = func(*cellapi.PodStatus) {}
	}
	if cfg.ProcSys == "" {
		cfg.ProcSys = DefaultProcSys
	}
	if cfg.EmptyDirInterval == 0 {
		cfg.EmptyDirInterval = DefaultEmptyDirInterval
	}
	// GPUs first: a pod asking for more than the cell has fails before anything is done.
	gpus, err := gpu.Allocate(cfg.GPU, req.Pod)
	if err != nil {
		var short *gpu.ShortageError
		if errors.As(err, &short) {
			return nil, cellapi.Errorf(cellapi.KindInvalid, "%v", err)
		}
		return nil, fmt.Errorf("preparing pod %s: finding the cell's GPUs: %w", req.Pod.UID, err)
	}
	if err := podSysctls(cfg.ProcSys, req.Pod); err != nil {
		return nil, fmt.Errorf("preparing pod %s: %w", req.Pod.UID, err)
	}
	// The first containers' images are fetched while the pod is prepared.
	ctx, cancel := context.WithCancel(context.Background())
	prefetched := startPrefetches(ctx, cfg.Images, req)
	// Memory-backed volumes are sized by the cell's memory where nothing smaller is set, as
	// kubelet sizes them by the node's allocatable memory.
	ceil, err := cfg.Cgroups.Ceiling(cfg.CgroupParent)
	if err == nil && req.PodPidsLimit > 0 {
		// kubelet's podPidsLimit, on the pod's cgroup: every container run is below it.
		err = cfg.Cgroups.SetPidsLimit(cgroups.PodPath(cfg.CgroupParent, string(req.Pod.UID)), req.PodPidsLimit)
	}
	var (
		names       poddns.Names
		dnsWarnings []poddns.Warning
	)
	if err == nil {
		names, dnsWarnings, err = writePodFiles(cfg.Dir, req, cfg.PodIP, cfg.ResolvConf, ceil.MemoryBytes)
	}
	if err == nil {
		err = mountMemoryVolumes(cfg.Dir, req.Pod, ceil.MemoryBytes)
		if err == nil {
			err = mountPodShm(cfg.Dir)
		}
		if err == nil {
			err = setEmptyDirOwnership(cfg.Dir, req.Pod)
		}
	}
	// The sandbox starts last: nothing after it fails.
	var sb *sandbox.Sandbox
	sharePID := req.Pod.Spec.ShareProcessNamespace != nil && *req.Pod.Spec.ShareProcessNamespace
	switch {
	case err != nil:
	case cfg.SandboxBinary != "" && !sharePID:
		// Only a shared PID namespace needs a process (its PID 1); the UTS namespace is
		// pinned by a mount, which saves starting one on every pod's path.
		sb, err = sandbox.Pin(filepath.Join(cfg.Dir, utsName), names.Kernel)
	case cfg.SandboxBinary != "":
		sb, err = sandbox.Start(cfg.SandboxBinary, names.Kernel, sharePID)
	case sharePID:
		err = errors.New("spec.shareProcessNamespace: this agent runs no pod sandbox to hold the shared process namespace")
	}
	if err != nil {
		cancel()
		_ = unmountUnder(cfg.Dir)
		_ = os.RemoveAll(cfg.Dir)
		_ = cfg.Cgroups.Remove(cgroups.PodPath(cfg.CgroupParent, string(req.Pod.UID)))
		return nil, fmt.Errorf("preparing pod %s: %w", req.Pod.UID, err)
	}
	p := &Pod{
		cfg: cfg, req: req, sandbox: sb, spec: &req.Pod.Spec, ctx: ctx, cancel: cancel, gpus: gpus,
		ctrs: map[string]*ctr{}, stopped: make(chan struct{}), names: names, prefetched: prefetched,
	}
	p.sidecarCtx, p.stopSidecarsF = context.WithCancel(ctx)
	p.status = cellapi.PodStatus{UID: string(req.Pod.UID), Seq: cfg.FirstSeq, Phase: corev1.PodPending, StartTime: cfg.Clock.Now().UTC().Truncate(time.Second)}
	bo := newBackOff(cfg.BackOff)
	waitReason := p.defaultWaiting()
	for i := range p.spec.InitContainers {
		c := &p.spec.InitContainers[i]
		cc := &ctr{spec: c, init: true, idx: i, backOff: bo, ctx: ctx, startedOnce: make(chan struct{})}
		if isSidecar(c) {
			cc.sidecar, cc.ctx = true, p.sidecarCtx
		}
		p.ctrs[c.Name] = cc
		p.status.InitContainerStatuses = append(p.status.InitContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, State: waiting(waitReason, ""),
		})
	}
	for i := range p.spec.Containers {
		c := &p.spec.Containers[i]
		p.ctrs[c.Name] = &ctr{spec: c, idx: i, backOff: bo, ctx: ctx, startedOnce: make(chan struct{})}
		p.status.ContainerStatuses = append(p.status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, State: waiting(waitReason, ""), Started: new(bool),
		})
	}
	// What kubelet records about the pod's DNS (MissingClusterDNS, DNSConfigForming).
	for _, w := range dnsWarnings {
		p.lastEvent++
		p.status.Events = append(p.status.Events, cellapi.Event{ID: p.lastEvent, Type: corev1.EventTypeWarning, Reason: w.Reason, Message: w.Message})
	}
	p.mu.Lock()
	p.publishLocked()
	p.mu.Unlock()
	p.wg.Add(1)
	go p.run()
	if lim := storageLimitsOf(req.Pod); lim.any() {
		p.wg.Add(1)
		go p.watchStorage(lim)
	}
	return p, nil
}

func waiting(reason, msg string) corev1.ContainerState {
	return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
}

// GracePeriod is the pod's terminationGracePeriodSeconds, 30s when unset.
func (p *Pod) GracePeriod() time.Duration {
	if g := p.spec.TerminationGracePeriodSeconds; g != nil && *g >= 0 {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}

// UID returns the pod's UID.
func (p *Pod) UID() string { return string(p.req.Pod.UID) }

// Status returns a copy of the current status.
func (p *Pod) Status() *cellapi.PodStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snapshotLocked()
}

func (p *Pod) snapshotLocked() *cellapi.PodStatus {
	s := p.status
	s.InitContainerStatuses = deepCopy(p.status.InitContainerStatuses)
	s.ContainerStatuses = deepCopy(p.status.ContainerStatuses)
	s.EphemeralContainerStatuses = deepCopy(p.status.EphemeralContainerStatuses)
	s.Conditions = append([]corev1.PodCondition(nil), p.status.Conditions...)
	s.Events = append([]cellapi.Event(nil), p.status.Events...)
	return &s
}

// event records an event about container c for kip to pass on (kubelet's probe events).
func (p *Pod) event(c *ctr, typ, reason, msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastEvent++
	p.status.Events = append(p.status.Events, cellapi.Event{ID: p.lastEvent, Container: c.spec.Name, Type: typ, Reason: reason, Message: msg})
	if n := len(p.status.Events); n > cellapi.MaxEvents {
		p.status.Events = append([]cellapi.Event(nil), p.status.Events[n-cellapi.MaxEvents:]...)
	}
	p.publishLocked()
}

func deepCopy(in []corev1.ContainerStatus) []corev1.ContainerStatus {
	if in == nil {
		return nil
	}
	out := make([]corev1.ContainerStatus, len(in))
	for i := range in {
		in[i].DeepCopyInto(&out[i])
	}
	return out
}

// update changes one container's status, recomputes the pod's and publishes it.
func (p *Pod) update(c *ctr, f func(*corev1.ContainerStatus)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case c.ephemeral:
		f(&p.status.EphemeralContainerStatuses[c.idx])
	case c.init:
		f(&p.status.InitContainerStatuses[c.idx])
	default:
		f(&p.status.ContainerStatuses[c.idx])
	}
	p.publishLocked()
}

func (p *Pod) publishLocked() {
	p.status.Seq++
	p.status.Phase = phase(p.spec, p.status.InitContainerStatuses, p.status.ContainerStatuses)
	if p.evicted != "" {
		p.status.Reason, p.status.Message = ReasonEvicted, p.evicted
		if p.halted {
			p.status.Phase = corev1.PodFailed
		}
	}
	now := p.cfg.Clock.Now().UTC().Truncate(time.Second)
	p.status.Conditions = conditions(p.spec, p.status.Conditions, p.status.InitContainerStatuses, p.status.ContainerStatuses, now)
	p.cfg.Notify(p.snapshotLocked())
}

// defaultWaiting is kubelet's waiting reason for a container not created yet: PodInitializing
// in a pod with init containers (for all its containers), else ContainerCreating.
func (p *Pod) defaultWaiting() string {
	if len(p.spec.InitContainers) > 0 {
		return ReasonPodInitializing
	}
	return ReasonContainerCreating
}

func (p *Pod) restartPolicy() corev1.RestartPolicy {
	if p.spec.RestartPolicy == "" {
		return corev1.RestartPolicyAlways
	}
	return p.spec.RestartPolicy
}

// run runs the init containers in order, then supervises every app container.
func (p *Pod) run() {
	defer p.wg.Done()
	var sidecars []*ctr
	for i := range p.spec.InitContainers {
		c := p.ctrs[p.spec.InitContainers[i].Name]
		if c.sidecar {
			sidecars = append(sidecars, c)
			p.wg.Add(1)
			go p.superviseSidecar(c)
			select {
			case <-c.startedOnce: // the next init container waits for the sidecar to start
			case <-p.ctx.Done():
				return
			}
			continue
		}
		for {
			out := p.runOnce(c)
			if p.ctx.Err() != nil {
				return
			}
			if out.ok() {
				break
			}
			if p.restartPolicy() == corev1.RestartPolicyNever {
				p.cfg.Log.Info("init container failed; pod failed", "pod", p.UID(), "container", c.spec.Name)
				return
			}
			if !p.backOffRestart(c, out) {
				return
			}
		}
	}
	var apps sync.WaitGroup
	for i := range p.spec.Containers {
		c := p.ctrs[p.spec.Containers[i].Name]
		p.wg.Add(1)
		apps.Add(1)
		go func() {
			defer apps.Done()
			p.supervise(c)
		}()
	}
	// Once every app container is done for good, the sidecars stop, last started first.
	apps.Wait()
	if p.ctx.Err() == nil && len(sidecars) > 0 {
		p.stopSidecarsF()
		for i := len(sidecars) - 1; i >= 0; i-- {
			p.mu.Lock()
			run := sidecars[i].running
			p.mu.Unlock()
			if run != nil {
				p.stopRun(run, p.GracePeriod())
			}
		}
	}
}

// superviseSidecar runs a sidecar and restarts it whenever it exits, until the sidecars stop.
func (p *Pod) superviseSidecar(c *ctr) {
	defer p.wg.Done()
	for {
		out := p.runOnce(c)
		if c.ctx.Err() != nil {
			return
		}
		if !p.backOffRestart(c, out) {
			return
		}
	}
}

// supervise runs one app container and restarts it as the restart policy says.
func (p *Pod) supervise(c *ctr) {
	defer p.wg.Done()
	for {
		out := p.runOnce(c)
		if p.ctx.Err() != nil {
			return
		}
		switch p.restartPolicy() {
		case corev1.RestartPolicyNever:
			return
		case corev1.RestartPolicyOnFailure:
			if out.ok() {
				return
			}
		}
		if !p.backOffRestart(c, out) {
			return
		}
	}
}

// outcome is how one run of a container ended.
type outcome struct {
	// stage is "" when the process ran; else the waiting reason it failed with.
	stage  string
	exit   int
	ranFor time.Duration
}

func (o outcome) ok() bool { return o.stage == "" && o.exit == 0 }

// backOffRestart waits the container's back-off, showing it as waiting, and reports whether
// to run it again (false when the pod is being stopped).
func (p *Pod) backOffRestart(c *ctr, out outcome) bool {
	if out.stage == "" {
		if delay := c.backOff.nextRestart(out.ranFor); delay == 0 {
			// Restarted at once, as kubelet does the first time: no back-off shown.
			p.update(c, func(s *corev1.ContainerStatus) {
				if s.State.Terminated != nil {
					s.LastTerminationState = corev1.ContainerState{Terminated: s.State.Terminated}
				}
				s.RestartCount++
			})
			return c.ctx.Err() == nil
		} else {
			return p.waitBackOff(c, out, delay)
		}
	}
	return p.waitBackOff(c, out, c.backOff.next(out.ranFor))
}

// waitBackOff shows the container waiting (CrashLoopBackOff, or the stage it failed in) for
// delay, then counts a restart. It reports false when the pod is being stopped meanwhile.
func (p *Pod) waitBackOff(c *ctr, out outcome, delay time.Duration) bool {
	reason, msg := ReasonCrashLoopBackOff, fmt.Sprintf("back-off %s restarting failed container=%s pod=%s", delay, c.spec.Name, p.req.Pod.Name)
	if out.stage != "" {
		reason = out.stage
	}
	p.update(c, func(s *corev1.ContainerStatus) {
		if s.State.Terminated != nil {
			s.LastTerminationState = corev1.ContainerState{Terminated: s.State.Terminated}
		}
		if reason != ReasonCrashLoopBackOff && s.State.Waiting != nil {
			msg = s.State.Waiting.Message
		}
		s.State = waiting(reason, msg)
		s.Ready = false
	})
	select {
	case <-p.cfg.Clock.After(delay):
	case <-c.ctx.Done():
		return false
	}
	p.update(c, func(s *corev1.ContainerStatus) { s.RestartCount++ })
	return true
}

// runOnce pulls, creates, starts and waits for one run of c.
func (p *Pod) runOnce(c *ctr) outcome {
	t0 := time.Now()
	img := p.pull(c)
	if img == nil {
		return outcome{stage: ReasonErrImagePull} // only when stopping
	}
	p.mu.Lock()
	run := c.runs
	c.runs++
	p.mu.Unlock()
	id := containerID(p.UID(), c.spec.Name, run)
	// The run's directory on disk holds its writable layer and termination log; runc's bundle
	// (config.json, which holds the resolved env, secrets included) is in RunDir, memory-backed.
	runDir := filepath.Join(p.cfg.Dir, containersDir, c.spec.Name, strconv.Itoa(run))
	bundle := runDir
	if p.cfg.RunDir != "" {
		bundle = filepath.Join(p.cfg.RunDir, id)
	}
	cg := cgroups.ContainerPath(p.cfg.CgroupParent, p.UID(), c.spec.Name)

	t1 := time.Now()
	cleanup, err := p.create(c, img, runDir, bundle, cg, strconv.Itoa(run))
	if err != nil {
		p.cfg.Log.Info("creating container failed", "pod", p.UID(), "container", c.spec.Name, "err", err)
		reason := ReasonCreateContainerError
		if _, ok := errors.AsType[*ConfigError](err); ok {
			reason = ReasonCreateContainerConfigError
		}
		p.update(c, func(s *corev1.ContainerStatus) { s.State = waiting(reason, err.Error()) })
		return outcome{stage: reason}
	}
	defer cleanup()

	memBefore, _ := p.cfg.Cgroups.MemoryEvents(cg)
	logPath := filepath.Join(p.cfg.Dir, logsDir, c.spec.Name, strconv.Itoa(run)+".log")
	logw, err := p.cfg.NewLog(logPath)
	if err != nil {
		p.update(c, func(s *corev1.ContainerStatus) { s.State = waiting(ReasonCreateContainerError, err.Error()) })
		return outcome{stage: ReasonCreateContainerError}
	}
	streams, err := newAttachable(c.spec)
	if err != nil {
		_ = logw.Close()
		p.update(c, func(s *corev1.ContainerStatus) { s.State = waiting(ReasonCreateContainerError, err.Error()) })
		return outcome{stage: ReasonCreateContainerError}
	}
	defer streams.end()
	t2 := time.Now()
	started, err := p.cfg.Runtime.Start(c.ctx, id, bundle, streams.io(logw.Stream("stdout"), logw.Stream("stderr")))
	if err != nil {
		_ = logw.Close()
		if c.ctx.Err() != nil {
			return outcome{stage: ReasonRunContainerError}
		}
		now := metav1.NewTime(p.cfg.Clock.Now())
		msg := err.Error()
		var se *runtime.StartError
		if errors.As(err, &se) {
			msg = se.Message
		}
		p.cfg.Log.Info("starting container failed", "pod", p.UID(), "container", c.spec.Name, "err", msg)
		policyStops := (p.restartPolicy() == corev1.RestartPolicyNever && !c.sidecar) || c.ephemeral
		p.update(c, func(s *corev1.ContainerStatus) {
			term := &corev1.ContainerStateTerminated{
				ExitCode: 128, Reason: ReasonContainerCannotRun, Message: msg,
				StartedAt: now, FinishedAt: now, ContainerID: "runc://" + id,
			}
			if policyStops {
				s.State = corev1.ContainerState{Terminated: term}
			} else {
				s.LastTerminationState = corev1.ContainerState{Terminated: term}
				s.State = waiting(ReasonRunContainerError, msg)
			}
			s.ContainerID = "runc://" + id
		})
		return outcome{stage: ReasonRunContainerError, exit: 128}
	}

	streams.started(started)
	p.cfg.Log.Info("container started", "pod", p.UID(), "container", c.spec.Name, "run", run,
		"pull", t1.Sub(t0), "create", t2.Sub(t1), "start", time.Since(t2))
	p.mu.Lock()
	c.running = started
	c.attach = streams
	if p.stopping || c.ctx.Err() != nil {
		sig := syscall.SIGTERM
		if p.killing {
			sig = syscall.SIGKILL
		}
		go p.cfg.Runtime.Kill(context.Background(), id, sig)
	}
	startedAt := metav1.NewTime(started.StartedAt)
	if c.init {
		p.status.InitContainerStatuses[c.idx].ContainerID = "runc://" + id
	}
	p.mu.Unlock()
	spec := c.spec
	p.update(c, func(s *corev1.ContainerStatus) {
		s.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: startedAt}}
		s.ContainerID = "runc://" + id
		s.ImageID = img.ImageID
		s.Ready = (!c.init || c.sidecar) && !c.ephemeral && spec.ReadinessProbe == nil && spec.StartupProbe == nil
		st := spec.StartupProbe == nil
		s.Started = &st
	})
	if spec.StartupProbe == nil {
		c.markStarted()
	}

	runCtx, endRun := context.WithCancel(p.ctx)
	go func() {
		if spec.Lifecycle != nil && spec.Lifecycle.PostStart != nil {
			ok, msg := p.lifecycleHandler(runCtx, c, id, spec.Lifecycle.PostStart, p.GracePeriod())
			if !ok && runCtx.Err() == nil {
				p.killRun(c, id, "postStart hook", msg)
				return
			}
		}
		if (!c.init || c.sidecar) && (spec.StartupProbe != nil || spec.LivenessProbe != nil || spec.ReadinessProbe != nil) {
			p.probeLoop(runCtx, c, id)
		}
	}()
	<-started.Done()
	endRun()
	streams.end()
	_ = logw.Close()
	st := started.ExitStatus()
	memAfter, _ := p.cfg.Cgroups.MemoryEvents(cg)
	p.mu.Lock()
	killedByUs := p.killing
	p.mu.Unlock()
	reason := ReasonCompleted
	switch {
	case memAfter.OOMKills > memBefore.OOMKills,
		st.Signal == syscall.SIGKILL && !killedByUs && memAfter.LimitHits > memBefore.LimitHits:
		reason = ReasonOOMKilled
	case st.Code != 0:
		reason = ReasonError
	}
	p.mu.Lock()
	c.running = nil
	msg := c.killReason
	c.killReason = ""
	p.mu.Unlock()
	if tm := terminationMessage(c.spec, filepath.Join(runDir, terminationLogName), logPath, st.Code); tm != "" {
		msg = tm
	}
	finished := metav1.NewTime(st.At)
	p.update(c, func(s *corev1.ContainerStatus) {
		s.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: int32(st.Code), Signal: int32(st.Signal), Reason: reason, Message: msg,
			StartedAt: startedAt, FinishedAt: finished, ContainerID: "runc://" + id,
		}}
		s.Ready = false
		f := false
		s.Started = &f
	})
	return outcome{exit: st.Code, ranFor: st.At.Sub(started.StartedAt)}
}

// pull gets c's image, retrying with back-off; nil when the pod is stopped first.
func (p *Pod) pull(c *ctr) *image.Image {
	if c.image != nil {
		return c.image
	}
	bo := newBackOff(p.cfg.BackOff)
	for {
		// imagePullPolicy, as kubelet: IfNotPresent and Never use the image when the cell has
		// it (another container of the pod pulled it); Never never pulls.
		if policy := c.spec.ImagePullPolicy; policy == corev1.PullIfNotPresent || policy == corev1.PullNever {
			if img, ok := p.cfg.Images.Lookup(c.spec.Image); ok {
				c.image = img
				return img
			}
			if policy == corev1.PullNever {
				p.update(c, func(s *corev1.ContainerStatus) {
					s.State = waiting(ReasonErrImageNeverPull, fmt.Sprintf("Container image %q is not present with pull policy of Never", c.spec.Image))
				})
				select {
				case <-p.cfg.Clock.After(bo.next(0)):
					continue
				case <-c.ctx.Done():
					return nil
				}
			}
		}
		var img *image.Image
		var err error
		if f := p.takePrefetch(c); f != nil {
			select {
			case <-f.done:
				img, err = f.img, f.err
			case <-c.ctx.Done():
				return nil
			}
		} else {
			img, err = p.cfg.Images.Pull(c.ctx, c.spec.Image, p.req.PullSecrets)
		}
		if err == nil {
			c.image = img
			return img
		}
		if c.ctx.Err() != nil {
			return nil
		}
		if image.IsInvalidReference(err) {
			p.update(c, func(s *corev1.ContainerStatus) {
				s.State = waiting(ReasonInvalidImageName, fmt.Sprintf("Failed to apply default image tag %q: %v", c.spec.Image, err))
			})
			<-c.ctx.Done()
			return nil
		}
		p.cfg.Log.Info("pulling image failed", "pod", p.UID(), "container", c.spec.Name, "image", c.spec.Image, "err", err)
		// As with kubelet: ErrImagePull right after the failure, then ImagePullBackOff for
		// the rest of the back-off.
		p.update(c, func(s *corev1.ContainerStatus) { s.State = waiting(ReasonErrImagePull, err.Error()) })
		delay := bo.next(0)
		shown := min(delay/2, errImagePullShown)
		select {
		case <-p.cfg.Clock.After(shown):
		case <-c.ctx.Done():
			return nil
		}
		p.update(c, func(s *corev1.ContainerStatus) {
			s.State = waiting(ReasonImagePullBackOff, fmt.Sprintf("Back-off pulling image %q: %v", c.spec.Image, err))
		})
		select {
		case <-p.cfg.Clock.After(delay - shown):
		case <-c.ctx.Done():
			return nil
		}
	}
}

// create lays out one run: the overlay rootfs and termination log in runDir, and the bundle
// (config.json with the resolved process) in bundle, which may be runDir.
// The memory limit goes on the container's cgroup (cgroup), which outlives the run's own
// (cgroup/run), so the OOM evidence survives runc's removal of the run's cgroup.
func (p *Pod) create(c *ctr, img *image.Image, runDir, bundle, cgroup, run string) (cleanup func(), err error) {
	if err := verifyRunAsNonRoot(p.req.Pod, c.spec, img.Config.User); err != nil {
		return nil, err
	}
	for _, d := range []string{runDir, bundle} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			_ = os.RemoveAll(runDir)
			return nil, fmt.Errorf("creating bundle: %w", err)
		}
	}
	rootfs, unmount, err := p.cfg.Images.MountRootFS(img, runDir)
	if err != nil {
		_ = os.RemoveAll(runDir)
		_ = os.RemoveAll(bundle)
		return nil, fmt.Errorf("mounting rootfs: %w", err)
	}
	cleanup = func() {
		if err := unmount(); err != nil {
			p.cfg.Log.Warn("unmounting rootfs", "pod", p.UID(), "container", c.spec.Name, "err", err)
		}
		_ = os.RemoveAll(runDir)
		_ = os.RemoveAll(bundle)
	}
	proc, err := runtime.ResolveProcess(withPodSecurity(p.req.Pod, c.spec), img.Config, rootfs)
	if err != nil {
		cleanup()
		return nil, err
	}
	if psc := p.req.Pod.Spec.SecurityContext; psc != nil && psc.SupplementalGroupsPolicy != nil &&
		*psc.SupplementalGroupsPolicy == corev1.SupplementalGroupsPolicyStrict {
		proc.AdditionalGids = nil // Strict: only the pod's groups, none from the image
	}
	proc.AdditionalGids = append(proc.AdditionalGids, supplementalGroups(p.req.Pod)...)
	proc.Terminal = c.spec.TTY         // runtime.IO.Terminal gives runc the terminal to relay
	if !hasEnv(proc.Env, "HOSTNAME") { // as containerd's CRI plugin sets it
		proc.Env = append(proc.Env, "HOSTNAME="+p.names.Kernel)
	}
	mounts, err := containerMounts(p.cfg.Dir, p.spec, c.spec)
	if err != nil {
		cleanup()
		return nil, err
	}
	// The termination message file, read back when the run ends.
	termLog := filepath.Join(runDir, terminationLogName)
	if err := os.WriteFile(termLog, nil, 0o666); err != nil {
		cleanup()
		return nil, fmt.Errorf("creating termination log: %w", err)
	}
	_ = os.Chmod(termLog, 0o666)
	termPath := c.spec.TerminationMessagePath
	if termPath == "" {
		termPath = corev1.TerminationMessagePathDefault
	}
	mounts = append(mounts, runtime.Mount{Source: termLog, Destination: termPath})
	// A limit above the cell's is capped at it (runtime.Resources.Within): it starts, and the
	// cell's binds, as a limit above a node's size does under kubelet.
	ceil, err := p.cfg.Cgroups.Ceiling(p.cfg.CgroupParent)
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("reading the cell's limits: %w", err)
	}
	res := runtime.ResourcesOf(c.spec.Resources).Within(ceil)
	if res.MemoryLimitBytes > 0 {
		if err := p.cfg.Cgroups.SetMemoryLimit(cgroup, res.MemoryLimitBytes); err != nil {
			cleanup()
			return nil, err
		}
		res.MemoryLimitBytes = 0
	}
	cc := runtime.ContainerConfig{
		RootFS: rootfs, Process: proc, Hostname: p.names.Kernel, Mounts: mounts,
		Resources: res, CgroupsPath: filepath.Join(cgroup, run),
	}
	cc.SeccompRuntimeDefault = seccompRuntimeDefault(p.req.Pod, c.spec)
	if cc.Seccomp, err = seccompLocalhost(p.req, c.spec); err != nil {
		cleanup()
		return nil, err
	}
	if p.sandbox != nil {
		cc.UTSNamespacePath = p.sandbox.UTSPath()
	}
	if cc.PIDNamespacePath, err = p.targetPIDNamespace(c); err != nil {
		cleanup()
		return nil, err
	}
	if sc := c.spec.SecurityContext; sc != nil {
		if sc.ReadOnlyRootFilesystem != nil {
			cc.ReadOnlyRootFS = *sc.ReadOnlyRootFilesystem
		}
		// Privileged only reaches the agent when kip's config allows it (internal/admit).
		if sc.Privileged != nil && *sc.Privileged {
			cc.Privileged = true
			if cc.Devices, err = runtime.HostDevices("/dev"); err != nil {
				cleanup()
				return nil, fmt.Errorf("listing the cell's devices for a privileged container: %w", err)
			}
		}
		// allowPrivilegeEscalation: false is no_new_privs (kubelet's default allows it).
		cc.NoNewPrivileges = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
		if caps := sc.Capabilities; caps != nil {
			for _, c := range caps.Add {
				cc.CapAdd = append(cc.CapAdd, string(c))
			}
			for _, c := range caps.Drop {
				cc.CapDrop = append(cc.CapDrop, string(c))
			}
		}
	}
	spec, err := runtime.BuildSpec(cc)
	if a := p.gpus[c.spec.Name]; err == nil && a != nil {
		err = a.Apply(spec)
	}
	if err == nil {
		err = runtime.WriteBundle(bundle, spec)
	}
	if err != nil {
		cleanup()
		return nil, err
	}
	return cleanup, nil
}

// containerID is the runtime id of one run: unique per pod, container and run.
func containerID(uid, name string, run int) string {
	return fmt.Sprintf("%s-%s-%d", uid, name, run)
}

// LogPath returns the log file of a container's current (or last) run, or of the run before
// it when previous is set.
func (p *Pod) LogPath(name string, previous bool) (string, error) {
	p.mu.Lock()
	c, ok := p.ctrs[name]
	runs := 0
	if ok {
		runs = c.runs
	}
	p.mu.Unlock()
	if !ok {
		return "", cellapi.Errorf(cellapi.KindNotFound, "container %q is not in pod %s", name, p.req.Pod.Name)
	}
	run := runs - 1
	if previous {
		run--
	}
	if run < 0 {
		if previous {
			return "", cellapi.Errorf(cellapi.KindInvalid, "previous terminated container %q in pod %q not found", name, p.req.Pod.Name)
		}
		return "", cellapi.Errorf(cellapi.KindInvalid, "container %q in pod %q is waiting to start", name, p.req.Pod.Name)
	}
	return filepath.Join(p.cfg.Dir, logsDir, name, strconv.Itoa(run)+".log"), nil
}

// RunningID returns the runtime id of the container's running run; an error of kind
// NotFound when it has no such container or it is not running.
func (p *Pod) RunningID(name string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.ctrs[name]
	if !ok {
		return "", cellapi.Errorf(cellapi.KindNotFound, "container %q is not in pod %s", name, p.req.Pod.Name)
	}
	if c.running == nil {
		return "", cellapi.Errorf(cellapi.KindNotFound, "container %q of pod %s is not running", name, p.req.Pod.Name)
	}
	return c.running.ID, nil
}

// ContainerStats returns the usage of each running container.
func (p *Pod) ContainerStats() []cellapi.ContainerStats {
	p.mu.Lock()
	type run struct {
		name string
		at   time.Time
	}
	var running []run
	for _, cs := range p.spec.Containers {
		if c := p.ctrs[cs.Name]; c.running != nil {
			running = append(running, run{cs.Name, c.running.StartedAt})
		}
	}
	p.mu.Unlock()
	var out []cellapi.ContainerStats
	for _, r := range running {
		u, err := p.cfg.Cgroups.Usage(cgroups.ContainerPath(p.cfg.CgroupParent, p.UID(), r.name))
		if err != nil {
			continue // the container exited between the two reads
		}
		out = append(out, cellapi.ContainerStats{Name: r.name, StartTime: r.at, Usage: cellapi.Usage(u)})
	}
	return out
}

// Stop stops the pod: no more starts or restarts, SIGTERM to every running container, up to
// grace for them to exit, then SIGKILL; then it unmounts the pod's tmpfs volumes and removes
// its cgroups and directory. It is safe to call more than once, and after an eviction; later
// calls wait for the first.
func (p *Pod) Stop(ctx context.Context, grace time.Duration) error {
	if err := p.halt(ctx, grace); err != nil {
		return err
	}
	p.cleanOnce.Do(func() { p.cleanErr = p.cleanup() })
	return p.cleanErr
}

// halt stops the pod's containers (Stop's first part) and marks the pod halted. A second
// call waits for the first.
func (p *Pod) halt(ctx context.Context, grace time.Duration) error {
	p.mu.Lock()
	if p.stopping {
		p.mu.Unlock()
		select {
		case <-p.stopped:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.stopping = true
	p.cancel()
	// As kubelet: the regular containers stop first, all at once; the sidecars (restartable
	// init containers) only once they have, one after another in reverse order.
	var apps, sidecars []*ctr
	runs := map[*ctr]*runtime.Container{}
	for _, c := range p.ctrs {
		if c.running == nil {
			continue
		}
		runs[c] = c.running
		if c.sidecar {
			sidecars = append(sidecars, c)
		} else {
			apps = append(apps, c)
		}
	}
	slices.SortFunc(sidecars, func(a, b *ctr) int { return b.idx - a.idx })
	p.mu.Unlock()
	defer close(p.stopped)

	graceOver := p.cfg.Clock.After(grace)
	hookCtx, endHooks := context.WithCancel(context.WithoutCancel(ctx))
	defer endHooks()
	terminate := func(c *ctr, run *runtime.Container) {
		// preStop runs first and counts against the grace period, as in kubelet.
		if ls := c.spec.Lifecycle; ls != nil && ls.PreStop != nil {
			if ok, msg := p.lifecycleHandler(hookCtx, c, run.ID, ls.PreStop, grace); !ok {
				p.cfg.Log.Info("preStop hook failed", "pod", p.UID(), "container", c.spec.Name, "msg", msg)
			}
		}
		if err := p.cfg.Runtime.Kill(hookCtx, run.ID, syscall.SIGTERM); err != nil {
			p.cfg.Log.Warn("sending SIGTERM", "container", run.ID, "err", err)
		}
	}
	go func() {
		for _, c := range apps {
			go terminate(c, runs[c])
		}
		for _, c := range apps {
			select {
			case <-runs[c].Done():
			case <-hookCtx.Done():
				return
			}
		}
		for _, c := range sidecars {
			terminate(c, runs[c])
			select {
			case <-runs[c].Done():
			case <-hookCtx.Done():
				return
			}
		}
	}()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-graceOver:
		endHooks()
		p.mu.Lock()
		p.killing = true
		left := p.runningIDsLocked()
		p.mu.Unlock()
		for _, id := range left {
			if err := p.cfg.Runtime.Kill(context.WithoutCancel(ctx), id, syscall.SIGKILL); err != nil {
				p.cfg.Log.Warn("sending SIGKILL", "container", id, "err", err)
			}
		}
		<-done
	}
	p.mu.Lock()
	p.halted = true
	if p.evicted != "" {
		p.publishLocked()
	}
	p.mu.Unlock()
	return nil
}

// cleanup removes what the pod made: its tmpfs mounts (unmounted before the directory goes,
// which would otherwise empty them and fail), its cgroups and its directory.
func (p *Pod) cleanup() error {
	if p.sandbox != nil {
		p.sandbox.Stop()
	}
	var errs []error
	if err := unmountUnder(p.cfg.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := p.cfg.Cgroups.Remove(cgroups.PodPath(p.cfg.CgroupParent, p.UID())); err != nil {
		errs = append(errs, err)
	}
	p.volMu.Lock()
	if err := os.RemoveAll(p.cfg.Dir); err != nil {
		errs = append(errs, fmt.Errorf("removing pod directory: %w", err))
	}
	p.volMu.Unlock()
	if len(errs) > 0 {
		return fmt.Errorf("cleaning up pod %s: %w", p.UID(), errors.Join(errs...))
	}
	return nil
}

func (p *Pod) runningIDsLocked() []string {
	var ids []string
	for _, c := range p.ctrs {
		if c.running != nil {
			ids = append(ids, c.running.ID)
		}
	}
	return ids
}
