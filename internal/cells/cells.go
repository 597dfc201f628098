// Package cells runs one state machine per pod: choose an instance type, launch the pod's
// cell, wait for its agent, put the pod, stream the agent's status into the pod's status, and
// terminate the cell when the pod is deleted or completes. It is the only writer of cell
// state. It keeps no database: the cloud's instance tags and the pods are the truth, and
// Recover rebuilds everything from them after a restart.
package cells

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/admit"
	"github.com/kip-dev/kip/internal/capacity"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/pki"
	"github.com/kip-dev/kip/internal/selector"
)

// Deps are the Manager's collaborators.
type Deps struct {
	Cloud cloud.Cloud
	// Selector picks the instance type for a pod. An error means the pod can never run: it is
	// marked Failed with the error as message.
	Selector Selector
	// Resolver builds the agent request: env values, volume files, pull secrets (kip wires
	// podrequest.Resolver). nil sends the pod as it is.
	Resolver Resolver
	// Dial returns a client for a cell's agent; nil means mutual TLS with the CA.
	Dial func(ctx context.Context, inst *cloud.Instance, cellID string) (cellapi.Agent, error)
	// CA signs each cell's serving certificate and kip's client certificate.
	CA *pki.CA
	// Events records Kubernetes events on pods; nil records none.
	Events record.EventRecorder
	// Clock drives back-offs and timeouts; nil means the real clock.
	Clock clock.WithTicker
	// Mirror mirrors cells into the Cell custom resource; nil mirrors nothing.
	Mirror Mirror
	// Registry is handed to every cell's agent at boot.
	Registry cellapi.RegistryConfig
	// Enrollment, when set, gives each cell a one-time enrollment token and kip's
	// enrollment URL in its bootstrap instead of a certificate and key (cloud backends,
	// whose bootstrap is user data readable on the instance). nil: the CA issues the cell's
	// certificate and key into the bootstrap (the local backend, whose bootstrap is a file).
	Enrollment *Enrollment
	// Log receives the manager's logs; nil means slog.Default().
	Log *slog.Logger
	// AgentPort is the agent's port for the default Dial; 0 means cellapi.DefaultPort.
	AgentPort int
	// Observe, if set, gets a pod's Timing each time it reaches a new phase (launched, agent
	// ready, pulled, started, finished), for per-phase histograms. It must not block.
	Observe func(Timing)
	// AgentServing, if set, returns a channel closed once the agent of a cell the backend
	// launched serves (or has exited), nil when the backend cannot tell (the local backend's
	// AgentServing). A pod's state machine then connects once rather than polling the agent.
	AgentServing func(instanceID string) <-chan struct{}
	// Services, if set, gives each cell's agent the cluster's Services once the agent is
	// ready and before the pod is put, so containers start with them programmed (kip wires
	// internal/controllers/svcpush). nil programs none.
	Services ServiceSync
}

// Enrollment is how cells get their identity from kip instead of their bootstrap.
type Enrollment struct {
	// Mint returns a new one-time token for the cell (internal/enroll.Tokens.Mint).
	Mint func(cellID string) (string, error)
	// URL is kip's enrollment base URL, as cells reach it.
	URL string
}

// ServiceSync programs the cluster's Services into a cell. Sync is called on the pod's path,
// between the agent turning ready and PutPod, for new and adopted cells alike; it should
// return within its own deadline. An error is logged and never fails the pod: the
// implementation keeps retrying on its own.
type ServiceSync interface {
	Sync(ctx context.Context, cellID string, agent cellapi.Agent) error
}

// Resolver builds the request a cell's agent runs from a pod. The pod it gets carries the
// cell's IP in Status.PodIP. Errors are retried with back-off and shown on the pod's
// containers as CreateContainerConfigError. A nil request (or one without a Pod) sends the pod.
type Resolver interface {
	Resolve(ctx context.Context, pod *corev1.Pod) (*cellapi.PodRequest, error)
}

// ResolverFunc adapts a function to Resolver.
type ResolverFunc func(ctx context.Context, pod *corev1.Pod) (*cellapi.PodRequest, error)

// Resolve calls f.
func (f ResolverFunc) Resolve(ctx context.Context, pod *corev1.Pod) (*cellapi.PodRequest, error) {
	return f(ctx, pod)
}

// Mirror keeps an external view of cells (the Cell custom resource) up to date. Its methods
// are called on pods' paths: they must only record the wanted state and return at once (the
// cellmirror controller writes it). Errors are logged, never fatal.
type Mirror interface {
	Upsert(ctx context.Context, c CellInfo) error
	Delete(ctx context.Context, cellID string) error
}

// CellInfo is what the mirror shows of one cell.
type CellInfo struct {
	CellID       string
	InstanceID   string
	InstanceType string
	PricePerHour float64
	Spot         bool
	IP           string
	// Phase is one of the Phase* constants.
	Phase                         string
	PodNamespace, PodName, PodUID string
	LaunchTime                    time.Time
}

// Cell phases shown by the mirror.
const (
	PhaseLaunching   = "Launching"
	PhaseBooting     = "Booting"
	PhaseReady       = "Ready"
	PhaseTerminating = "Terminating"
	// PhaseStandby is a warm cell ready for a pod, with none yet (standby.go).
	PhaseStandby = "Standby"
)

// Options tune the manager. Zero fields take the defaults of DefaultOptions.
type Options struct {
	// ClusterName is put on every cell's tags to tell clusters apart.
	ClusterName string
	// HealthyTimeout bounds the wait for a new or adopted cell's agent to answer; a pod's
	// healthcheck-healthy-timeout annotation overrides it.
	HealthyTimeout time.Duration
	// LostTimeout is how long a running cell's agent may stay silent before the pod fails
	// with CellLost and the cell is terminated; a pod's lost-timeout annotation (else its
	// healthcheck-healthy-timeout) overrides it. The pod is NotReady after three heartbeats
	// of silence.
	LostTimeout time.Duration
	// Heartbeat is the interval of the heartbeats kip asks for on each agent's status stream
	// (agents without them are probed as often).
	Heartbeat time.Duration
	// LaunchConcurrency bounds parallel cloud launches.
	LaunchConcurrency int
	// CapacityErrorMemory is how long an offering that lacked capacity is tried last.
	CapacityErrorMemory time.Duration
	// Admit is the node's configuration pods are admitted against (node.allowPrivileged).
	Admit admit.Node
	// SeccompProfileRoot is node.seccompProfileRoot: Localhost seccomp profiles are read
	// under it when a pod is admitted (a missing one fails the pod before launch) and sent
	// to its cell with the pod.
	SeccompProfileRoot string
	// PodPidsLimit is cells.podPidsLimit: the pids limit each pod's cgroup gets in its cell,
	// sent with the pod; 0 or -1 sets none.
	PodPidsLimit int64
	// CertLifetime is how long the certificates kip issues last: each cell agent's serving
	// certificate and kip's own client certificate. Both are renewed once two thirds of it
	// have passed (RenewAgentCerts, pki.ClientCert).
	CertLifetime time.Duration
	// Standby are the pools of warm cells kept booted with no pod (cells.standby), filled
	// once StartStandby is called; see standby.go.
	Standby []StandbyPool
	// StandbyDemandWindow is how far back an elastic pool (StandbyPool.Max) counts demand;
	// 0 means DemandWindow.
	StandbyDemandWindow time.Duration
}

// DefaultOptions are the options of a manager configured with nothing.
func DefaultOptions() Options {
	return Options{
		ClusterName:         "kip",
		HealthyTimeout:      90 * time.Second,
		LostTimeout:         30 * time.Second,
		Heartbeat:           time.Second,
		LaunchConcurrency:   10,
		CapacityErrorMemory: 3 * time.Minute,
		CertLifetime:        DefaultCertLifetime,
	}
}

// DefaultCertLifetime is Options.CertLifetime when unset (config cells.certLifetime).
const DefaultCertLifetime = 30 * 24 * time.Hour

// NodeInfo is the virtual node the pods are bound to.
type NodeInfo struct {
	Name   string
	HostIP string
}

// Selector picks the instance type for a pod from the catalog of the moment (the backend's,
// with offerings that just lacked capacity marked unavailable). *selector.Selector is one.
type Selector interface {
	Select(pod *corev1.Pod, types []instancetype.InstanceType) (*selector.Choice, error)
}

// SelectFunc adapts a function to Selector.
type SelectFunc func(pod *corev1.Pod, types []instancetype.InstanceType) (*selector.Choice, error)

// Select calls f.
func (f SelectFunc) Select(pod *corev1.Pod, types []instancetype.InstanceType) (*selector.Choice, error) {
	return f(pod, types)
}

// Timing is when a pod reached each phase of its start; zero times were not reached.
type Timing struct {
	Namespace, Name string
	UID             types.UID
	CellID          string
	InstanceType    string
	// Created is when kip was asked to run the pod (right after it was scheduled).
	Created time.Time
	// Scheduled is the PodScheduled condition's time, when the pod carries it.
	Scheduled  time.Time
	Launched   time.Time
	AgentReady time.Time
	// Pulled is when every container's image was pulled (all report an image ID).
	Pulled time.Time
	// Started is when every regular container had started.
	Started  time.Time
	Finished time.Time
}

// Manager owns every pod's cell. All methods are safe for concurrent use.
type Manager struct {
	cfg   Options
	node  NodeInfo
	deps  Deps
	clock clock.WithTicker
	log   *slog.Logger

	ctx    context.Context // ends on Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	launchSem chan struct{}
	capacity  *capacity.Memory

	certOnce   sync.Once
	clientCert *pki.ClientCert
	certErr    error

	// agentCerts is when each cell's serving certificate expires, by cell id, as last seen
	// in a handshake or installed by RenewAgentCerts. Guarded by certMu, which is never
	// held with mu.
	certMu     sync.Mutex
	agentCerts map[string]*agentCert

	// notifyMu serializes NotifyPods calls; each pod's notifications are ordered by its
	// cell's notifyMu. Taken before the cells' notifyMu and mu.
	notifyMu sync.Mutex

	mu     sync.Mutex
	cells  map[string]*cell // by namespace/name
	notify func(*corev1.Pod)
	// warm are the standby cells not bound to a pod, by cell id (standby.go); warmFails
	// counts each pool's consecutive failures, for its back-off. Guarded by mu.
	warm      map[string]*warmCell
	warmFails map[poolKey]int
	// warmDemand are, per elastic pool, when pods asked for one of its cells (noteDemand).
	warmDemand map[poolKey][]time.Time
	// warmStarting counts, per pool, the cells taken from it whose pods have not started
	// yet: the pool counts them until then, so that its replacement does not boot on the
	// CPU the bound pod's first container needs (releaseWarm).
	warmStarting map[poolKey]int
	warmKick     chan struct{}
	warmOnce     sync.Once
}

// New returns a manager.
func New(opts Options, node NodeInfo, deps Deps) *Manager {
	if deps.Clock == nil {
		deps.Clock = clock.RealClock{}
	}
	if deps.Log == nil {
		deps.Log = slog.Default()
	}
	if deps.AgentPort == 0 {
		deps.AgentPort = cellapi.DefaultPort
	}
	def := DefaultOptions()
	if opts.LaunchConcurrency < 1 {
		opts.LaunchConcurrency = def.LaunchConcurrency
	}
	if opts.HealthyTimeout <= 0 {
		opts.HealthyTimeout = def.HealthyTimeout
	}
	if opts.LostTimeout <= 0 {
		opts.LostTimeout = def.LostTimeout
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = def.Heartbeat
	}
	if opts.StandbyDemandWindow <= 0 {
		opts.StandbyDemandWindow = DemandWindow
	}
	if opts.ClusterName == "" {
		opts.ClusterName = def.ClusterName
	}
	if opts.CapacityErrorMemory <= 0 {
		opts.CapacityErrorMemory = def.CapacityErrorMemory
	}
	if opts.CertLifetime <= 0 {
		opts.CertLifetime = def.CertLifetime
	}
	cfg := opts
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		cfg:        cfg,
		node:       node,
		deps:       deps,
		clock:      deps.Clock,
		log:        deps.Log.With("component", "cells"),
		ctx:        ctx,
		cancel:     cancel,
		launchSem:  make(chan struct{}, cfg.LaunchConcurrency),
		capacity:   capacity.New(deps.Clock, cfg.CapacityErrorMemory),
		cells:      map[string]*cell{},
		warm:       map[string]*warmCell{},
		warmFails:  map[poolKey]int{},
		warmDemand: map[poolKey][]time.Time{},
		warmKick:   make(chan struct{}, 1),

		warmStarting: map[poolKey]int{},

		agentCerts: map[string]*agentCert{},
	}
	return m
}

// Close stops every pod's goroutine without touching the cells: they keep running and a
// new manager's Recover adopts them. It waits for the goroutines to return.
func (m *Manager) Close() {
	m.cancel()
	m.wg.Wait()
}

// NotifyPods sets the function called with a copy of a pod on every status change. It is
// called at once with every pod the manager knows, so statuses computed before (during
// Recover, say) are delivered too.
func (m *Manager) NotifyPods(f func(*corev1.Pod)) {
	m.notifyMu.Lock()
	defer m.notifyMu.Unlock()
	m.mu.Lock()
	m.notify = f
	cs := make([]*cell, 0, len(m.cells))
	for _, c := range m.cells {
		cs = append(cs, c)
	}
	m.mu.Unlock()
	if f == nil {
		return
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].key < cs[j].key })
	for _, c := range cs {
		c.notifyMu.Lock()
		m.mu.Lock()
		pod := c.snapshot()
		m.mu.Unlock()
		f(pod)
		c.notifyMu.Unlock()
	}
}

// CreatePod starts running pod on a new cell and returns at once; the work is asynchronous
// and its progress shows in the pod's status. Creating a pod that already runs updates it.
func (m *Manager) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	if pod == nil || pod.UID == "" {
		return invalid("creating pod: pod has no UID")
	}
	key := podKey(pod.Namespace, pod.Name)
	m.mu.Lock()
	if old, ok := m.cells[key]; ok {
		if old.uid == pod.UID {
			old.updateSpec(pod)
			m.mu.Unlock()
			return nil
		}
		// A new pod reuses the name of an old one that was never deleted here: stop the old.
		delete(m.cells, key)
		old.requestDelete(0)
	}
	c := m.newCell(pod)
	m.cells[key] = c
	if isTerminal(pod.Status.Phase) {
		// Nothing to run; remember it so GetPod answers.
		c.stage = stageDone
		m.mu.Unlock()
		return nil
	}
	c.setWaiting(ReasonCellLaunching, "choosing an instance type and launching a cell")
	m.mu.Unlock()
	c.publish()
	m.start(c, nil)
	return nil
}

// UpdatePod records a new version of a running pod's spec and metadata. Containers are not
// restarted: the agent keeps running the pod it was given.
func (m *Manager) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	m.mu.Lock()
	c, ok := m.cells[podKey(pod.Namespace, pod.Name)]
	if !ok || c.uid != pod.UID {
		m.mu.Unlock()
		return notFound(pod.Namespace, pod.Name)
	}
	c.updateSpec(pod)
	m.mu.Unlock()
	// As kubelet's status manager, a spec update is acknowledged at once: the status carries
	// the new metadata.generation as observedGeneration even when nothing else changed.
	c.publish()
	return nil
}

// DeletePod stops the pod: preStop hooks, SIGTERM, its grace period, then the cell is
// terminated and a terminal status is notified. It returns at once; calling it again is
// harmless. A pod the manager does not know gives an error satisfying IsNotFound.
func (m *Manager) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	m.mu.Lock()
	c, ok := m.cells[key]
	if !ok || (pod.UID != "" && c.uid != pod.UID) {
		m.mu.Unlock()
		return notFound(pod.Namespace, pod.Name)
	}
	c.updateSpec(pod)
	done := c.stage == stageDone
	if done {
		delete(m.cells, key)
	}
	m.mu.Unlock()
	if done {
		c.publish()
		return nil
	}
	c.requestDelete(gracePeriod(pod))
	return nil
}

// GetPod returns a copy of the pod with its current status.
func (m *Manager) GetPod(namespace, name string) (*corev1.Pod, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.cells[podKey(namespace, name)]
	if !ok {
		return nil, false
	}
	return c.snapshot(), true
}

// ListPods returns copies of every pod the manager knows, sorted by namespace/name.
func (m *Manager) ListPods() []*corev1.Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]string, 0, len(m.cells))
	for k := range m.cells {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*corev1.Pod, 0, len(keys))
	for _, k := range keys {
		out = append(out, m.cells[k].snapshot())
	}
	return out
}

// Agent returns the agent of the pod's cell, for logs, stats and exec. For a pod that has
// completed (its cell is gone) it returns an agent serving the logs saved at completion.
func (m *Manager) Agent(namespace, name string) (cellapi.Agent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.cells[podKey(namespace, name)]
	if !ok {
		return nil, notFound(namespace, name)
	}
	if c.archive != nil {
		return c.archive, nil
	}
	if c.stage == stageDone {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "the cell of pod %s/%s is terminated and no logs were saved", namespace, name)
	}
	if c.agent == nil {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "pod %s/%s has no running cell yet", namespace, name)
	}
	return c.agent, nil
}

// Timings returns the start timings of every known pod, sorted by creation.
func (m *Manager) Timings() []Timing {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Timing, 0, len(m.cells))
	for _, c := range m.cells {
		out = append(out, c.timing)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

func (m *Manager) start(c *cell, adopt *cloud.Instance) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		c.run(adopt)
	}()
	m.mu.Lock()
	c.watchDeadlineIfSet()
	m.mu.Unlock()
}

func podKey(namespace, name string) string { return namespace + "/" + name }

func isTerminal(p corev1.PodPhase) bool { return p == corev1.PodSucceeded || p == corev1.PodFailed }

// gracePeriod is the deletion grace period kubelet would use.
func gracePeriod(pod *corev1.Pod) time.Duration {
	switch {
	case pod.DeletionGracePeriodSeconds != nil:
		return time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	case pod.Spec.TerminationGracePeriodSeconds != nil:
		return time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	return 30 * time.Second
}
