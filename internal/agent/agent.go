// Package agent is the cell agent (kip-cell): it implements cellapi.Agent on top of the pod
// supervisor, the image store, runc and the cgroups of the cell, and pushes every status
// change to its watchers. cmd/kip-cell serves it over mTLS with cellapi.Handler.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/agent/gpu"
	"github.com/kip-dev/kip/internal/agent/logs"
	"github.com/kip-dev/kip/internal/agent/pod"
	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/logctx"
)

// Version is the agent's version, reported by Health; set by the build.
var Version = "dev"

// Log rotation of each container run's log, kubelet's defaults.
const (
	LogMaxBytes = 10 << 20
	LogMaxFiles = 5
)

// Config wires an Agent.
type Config struct {
	CellID string
	// StateDir holds the pods' directories (StateDir/pods/<uid>).
	StateDir string
	// StorageInterval is how often pods' ephemeral storage is measured against their limits
	// (pod.Config.EmptyDirInterval); zero means pod.DefaultEmptyDirInterval, kubelet's 10s.
	StorageInterval time.Duration
	// RunDir, when set, is a memory-backed directory (MountRunDir) for the runtime bundles of
	// container runs, whose config.json holds the resolved env, secret values included.
	// Empty: bundles are written under StateDir.
	RunDir  string
	Runtime runtime.Runtime
	Images  pod.Images
	Cgroups pod.Cgroups
	// CgroupParent is where pods' cgroups go, relative to where the agent's relative cgroup
	// paths land (cgroups.PodsParent when empty).
	CgroupParent string
	Clock        clock.Clock
	BackOff      pod.BackOff
	// PodIP is the cell's address, written into /etc/hosts.
	PodIP string
	// ResolvConf is the path of the resolv.conf given to pods without DNS settings
	// (/etc/resolv.conf when empty; a missing file gives an empty one).
	ResolvConf string
	// SandboxBinary is the agent's executable, run as each pod's sandbox (pod.Config).
	// Empty: no sandbox (each container has its own UTS namespace; shareProcessNamespace
	// pods cannot start).
	SandboxBinary string
	// Services programs the cluster's Services into the cell's network namespace
	// (svcproxy.Programmer in kip-cell). Nil: the agent does not program Services, and
	// PutServices fails with cellapi.KindBadVersion (agents in tests never touch the host).
	Services ServiceRules
	// HostPorts maps the pod's hostPorts to their containerPorts in the cell's network
	// namespace (svcproxy.Programmer in kip-cell) while the pod is accepted. Nil: hostPorts
	// equal to their containerPorts work anyway; others are logged and not mapped (agents in
	// tests never touch the host).
	HostPorts HostPortRules
	// GPU says where the cell's GPUs are (the zero value: where an instance has them).
	GPU gpu.Config
	// Metadata keeps each pod from the cloud's instance metadata service
	// (imdsguard.Guard in kip-cell --guard-metadata, on cloud cells). Nil: pods reach
	// whatever the cell reaches.
	Metadata MetadataGuard
}

// MetadataGuard keeps pods from the instance metadata service while the agent keeps it
// (imdsguard.Guard).
type MetadataGuard interface {
	// Guard blocks the pod's processes from the metadata service; it is called before any
	// of them starts, and the pod is refused when it fails.
	Guard(podUID string) error
	// Release undoes Guard once the pod's processes are gone.
	Release(podUID string) error
}

// HostPortRules programs the pod's hostPorts (svcproxy.Programmer).
type HostPortRules interface {
	// SetHostPorts maps pod's hostPorts, replacing any mapping before; it validates first
	// and changes nothing when it fails.
	SetHostPorts(ctx context.Context, pod *corev1.Pod) error
	// DeleteHostPorts removes the mapping; without one it does nothing.
	DeleteHostPorts() error
}

// ServiceRules programs Services (svcproxy.Programmer). Both methods validate first and
// change nothing when they fail.
type ServiceRules interface {
	// Replace programs exactly svcs, whatever was programmed before (even by an earlier agent).
	Replace(ctx context.Context, svcs []cellapi.Service) error
	// Update upserts and deletes on top of the last Replace or Update.
	Update(ctx context.Context, upsert []cellapi.Service, deleted []string) error
	// Len is how many Services are programmed.
	Len() int
}

// systemdResolvConf lists systemd-resolved's upstream servers.
const systemdResolvConf = "/run/systemd/resolve/resolv.conf"

// hostResolvConf is the resolv.conf pods with dnsPolicy Default (and CoreDNS's upstreams)
// get: def, unless every nameserver in it is a loopback address (systemd-resolved's stub
// 127.0.0.53, which a cell's network namespace does not have) and upstream exists, as kubeadm
// points kubelet's --resolv-conf at systemd-resolved's upstream list.
func hostResolvConf(def, upstream string) string {
	b, err := os.ReadFile(def)
	if err != nil {
		return def
	}
	loopbackOnly := false
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		ip := net.ParseIP(f[1])
		if ip == nil || !ip.IsLoopback() {
			return def
		}
		loopbackOnly = true
	}
	if _, err := os.Stat(upstream); loopbackOnly && err == nil {
		return upstream
	}
	return def
}

// Agent runs at most one pod at a time.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	resolv string

	mu  sync.Mutex
	pod *pod.Pod

	// wmu guards last, seq and watchers. Pods publish under their own lock, and PutPod
	// holds mu while a new pod publishes, so the order is mu → pod → wmu.
	wmu      sync.Mutex
	last     *cellapi.PodStatus
	seq      uint64
	watchers map[*watcher]struct{}
	// spot is the spot interruption notice, once seen (WatchSpot); every status carries it.
	spot *cellapi.SpotInterruption

	// smu serializes PutServices; svcVersion is the service table version in force (0: none
	// since this agent started).
	smu        sync.Mutex
	svcVersion uint64
}

var (
	_ cellapi.Agent             = (*Agent)(nil)
	_ cellapi.Streamer          = (*Agent)(nil)
	_ cellapi.ServiceProgrammer = (*Agent)(nil)
)

// New makes an agent; it creates StateDir. The agent and its pods log to ctx's logger
// (logctx.From); New keeps nothing else of ctx.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.CellID == "" {
		return nil, fmt.Errorf("creating agent: cell id is required")
	}
	if cfg.Runtime == nil || cfg.Images == nil || cfg.Cgroups == nil {
		return nil, fmt.Errorf("creating agent: runtime, images and cgroups are required")
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = cgroups.PodsParent
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = hostResolvConf("/etc/resolv.conf", systemdResolvConf)
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "pods"), 0o700); err != nil {
		return nil, fmt.Errorf("creating agent state dir: %w", err)
	}
	resolv, _ := os.ReadFile(cfg.ResolvConf)
	return &Agent{cfg: cfg, log: logctx.From(ctx), resolv: string(resolv), watchers: map[*watcher]struct{}{}}, nil
}

// PutPod implements cellapi.Agent. The request is validated here, once (pod.Validate),
// before anything reads it: an invalid request is refused as Invalid even while a pod runs.
func (a *Agent) PutPod(ctx context.Context, req *cellapi.PodRequest) (*cellapi.PodStatus, error) {
	if err := pod.Validate(req); err != nil {
		return nil, err
	}
	hostPorts, err := svcproxy.HostPorts(req.Pod)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pod != nil {
		if a.pod.UID() == string(req.Pod.UID) {
			return withSpot(a.pod.Status(), a.spotNotice()), nil
		}
		return nil, cellapi.Errorf(cellapi.KindConflict, "cell %s already runs pod %s; delete it before putting pod %s", a.cfg.CellID, a.pod.UID(), req.Pod.UID)
	}
	if len(hostPorts) > 0 {
		if a.cfg.HostPorts == nil {
			a.log.Warn("hostPorts not mapped: this cell does not program them", "pod", req.Pod.Namespace+"/"+req.Pod.Name, "hostPorts", len(hostPorts))
		} else if err := a.cfg.HostPorts.SetHostPorts(ctx, req.Pod); err != nil {
			return nil, fmt.Errorf("mapping hostPorts of pod %s: %w", req.Pod.UID, err)
		}
	}
	t0 := time.Now()
	uid := string(req.Pod.UID)
	if a.cfg.Metadata != nil {
		if err := a.cfg.Metadata.Guard(uid); err != nil {
			a.releaseMetadata(uid)
			return nil, err
		}
	}
	p, err := pod.Start(pod.Config{
		Dir:           filepath.Join(a.cfg.StateDir, "pods", string(req.Pod.UID)),
		Runtime:       a.cfg.Runtime,
		Images:        a.cfg.Images,
		Cgroups:       a.cfg.Cgroups,
		CgroupParent:  a.cfg.CgroupParent,
		SandboxBinary: a.cfg.SandboxBinary,
		GPU:           a.cfg.GPU,
		NewLog:        a.newLog,
		Clock:         a.cfg.Clock,
		BackOff:       a.cfg.BackOff,
		PodIP:         a.cfg.PodIP,
		ResolvConf:    a.resolv,
		Log:           a.log.With("pod", req.Pod.Namespace+"/"+req.Pod.Name),
		Notify:        a.publish,
		FirstSeq:      a.currentSeq(),

		// Isolation (docs/isolation.md).
		RunDir:           a.cfg.RunDir,
		EmptyDirInterval: a.cfg.StorageInterval,
	}, req)
	if err != nil {
		if len(hostPorts) > 0 && a.cfg.HostPorts != nil {
			if derr := a.cfg.HostPorts.DeleteHostPorts(); derr != nil {
				a.log.Warn("unmapping hostPorts of a pod that did not start", "uid", req.Pod.UID, "err", derr)
			}
		}
		a.releaseMetadata(uid)
		return nil, err
	}
	a.pod = p
	a.log.Info("pod accepted", "uid", req.Pod.UID, "pod", req.Pod.Namespace+"/"+req.Pod.Name, "prepared", time.Since(t0))
	return withSpot(p.Status(), a.spotNotice()), nil
}

// releaseMetadata undoes the metadata guard of a pod whose processes are gone; a failure
// is logged (the next pod's guard replaces the rules anyway).
func (a *Agent) releaseMetadata(uid string) {
	if a.cfg.Metadata == nil {
		return
	}
	if err := a.cfg.Metadata.Release(uid); err != nil {
		a.log.Warn("releasing the metadata guard of a pod", "uid", uid, "err", err)
	}
}

// newLog opens the log of one container run (<dir>/<run>.log) and drops the logs of runs
// before the previous one, as kubelet keeps only the current and the previous run.
func (a *Agent) newLog(path string) (pod.LogWriter, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating log directory: %w", err)
	}
	if run, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(path), ".log")); err == nil && run >= 2 {
		if err := logs.Prune(dir, run-1); err != nil {
			a.log.Warn("pruning old logs", "dir", dir, "err", err)
		}
	}
	return logs.NewWriter(path, LogMaxBytes, LogMaxFiles)
}

// publish is the pods' Notify: it records the latest status and wakes the watchers.
func (a *Agent) publish(st *cellapi.PodStatus) {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	if a.last != nil && a.last.Seq >= st.Seq {
		return
	}
	st = withSpot(st, a.spot)
	a.last = st
	a.seq = st.Seq
	for w := range a.watchers {
		w.offer(st)
	}
}

func (a *Agent) currentSeq() uint64 {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	return a.seq
}

// GetPod implements cellapi.Agent.
func (a *Agent) GetPod(context.Context) (*cellapi.PodStatus, error) {
	a.mu.Lock()
	p := a.pod
	a.mu.Unlock()
	if p == nil {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "no pod on cell %s", a.cfg.CellID)
	}
	return withSpot(p.Status(), a.spotNotice()), nil
}

// WatchPod implements cellapi.Agent. A slow watcher skips intermediate statuses but always
// gets the latest.
func (a *Agent) WatchPod(ctx context.Context) (<-chan *cellapi.PodStatus, error) {
	w := &watcher{wake: make(chan struct{}, 1)}
	out := make(chan *cellapi.PodStatus)
	a.wmu.Lock()
	if a.last != nil {
		w.offer(a.last)
	}
	a.watchers[w] = struct{}{}
	a.wmu.Unlock()
	go func() {
		defer close(out)
		defer func() {
			a.wmu.Lock()
			delete(a.watchers, w)
			a.wmu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
			}
			if st := w.take(); st != nil {
				select {
				case out <- st:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

type watcher struct {
	mu      sync.Mutex
	pending *cellapi.PodStatus
	wake    chan struct{}
}

func (w *watcher) offer(st *cellapi.PodStatus) {
	w.mu.Lock()
	w.pending = st
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *watcher) take() *cellapi.PodStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.pending
	w.pending = nil
	return st
}

// DeletePod implements cellapi.Agent: it returns once every container has stopped and the
// pod's files, mounts and cgroups are gone. Deleting when no pod runs is not an error.
func (a *Agent) DeletePod(ctx context.Context, grace time.Duration) error {
	a.mu.Lock()
	p := a.pod
	a.mu.Unlock()
	if p == nil {
		return nil
	}
	err := p.Stop(ctx, grace)
	a.mu.Lock()
	if a.pod == p {
		a.pod = nil
		a.wmu.Lock()
		a.last = nil // new watchers see no pod; Seq keeps growing for the next one
		a.wmu.Unlock()
	}
	a.mu.Unlock()
	if a.cfg.HostPorts != nil {
		if herr := a.cfg.HostPorts.DeleteHostPorts(); herr != nil {
			err = errors.Join(err, fmt.Errorf("unmapping hostPorts: %w", herr))
		}
	}
	if err == nil {
		a.releaseMetadata(p.UID())
	}
	if err != nil {
		return fmt.Errorf("deleting pod %s: %w", p.UID(), err)
	}
	a.log.Info("pod deleted", "uid", p.UID())
	return nil
}

// Logs implements cellapi.Agent.
func (a *Agent) Logs(ctx context.Context, container string, opts cellapi.LogOptions) (io.ReadCloser, error) {
	a.mu.Lock()
	p := a.pod
	a.mu.Unlock()
	if p == nil {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "no pod on cell %s", a.cfg.CellID)
	}
	path, err := p.LogPath(container, opts.Previous)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err != nil {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "log of container %q: %v", container, err)
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		defer cancel()
		pw.CloseWithError(logs.Serve(ctx, pw, path, opts))
	}()
	return &cancelReader{PipeReader: pr, cancel: cancel}, nil
}

type cancelReader struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (r *cancelReader) Close() error {
	r.cancel()
	return r.PipeReader.Close()
}

// Stats implements cellapi.Agent.
func (a *Agent) Stats(context.Context) (*cellapi.Stats, error) {
	cell, err := a.cfg.Cgroups.Usage("")
	if err != nil {
		return nil, fmt.Errorf("reading cell usage: %w", err)
	}
	st := &cellapi.Stats{Time: a.cfg.Clock.Now().UTC(), Cell: cellapi.Usage(cell)}
	a.mu.Lock()
	p := a.pod
	a.mu.Unlock()
	if p != nil {
		st.Containers = p.ContainerStats()
	}
	return st, nil
}

// Health implements cellapi.Agent.
func (a *Agent) Health(context.Context) (*cellapi.Health, error) {
	return &cellapi.Health{CellID: a.cfg.CellID, Version: Version}, nil
}

// Shutdown stops the pod, if any, giving it its terminationGracePeriodSeconds (30s when
// unset).
func (a *Agent) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	p := a.pod
	a.mu.Unlock()
	if p == nil {
		return nil
	}
	return a.DeletePod(ctx, p.GracePeriod())
}

// Exec implements cellapi.Streamer: it runs a command in a running container of the pod.
func (a *Agent) Exec(ctx context.Context, container string, opts cellapi.ExecOptions, stdio cellapi.ExecIO) (int, error) {
	a.mu.Lock()
	p := a.pod
	a.mu.Unlock()
	if p == nil {
		return -1, cellapi.Errorf(cellapi.KindNotFound, "no pod on cell %s", a.cfg.CellID)
	}
	if len(opts.Command) == 0 {
		return -1, cellapi.Errorf(cellapi.KindInvalid, "exec: command is required")
	}
	ex, ok := a.cfg.Runtime.(runtime.Execer)
	if !ok {
		return -1, cellapi.Errorf(cellapi.KindBadVersion, "exec: the runtime cannot run processes in containers")
	}
	id, err := p.RunningID(container)
	if err != nil {
		return -1, err
	}
	var resize chan [2]uint16
	if stdio.Resize != nil {
		resize = make(chan [2]uint16, 1)
		go func() {
			defer close(resize)
			for {
				select {
				case ts, ok := <-stdio.Resize:
					if !ok {
						return
					}
					select {
					case resize <- [2]uint16{ts.Width, ts.Height}:
					case <-ctx.Done():
						return
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	o := runtime.ExecOptions{Args: opts.Command, TTY: opts.TTY, Stdout: stdio.Stdout, Stderr: stdio.Stderr, Resize: resize}
	if opts.Stdin {
		o.Stdin = stdio.Stdin
	}
	return ex.ExecProcess(ctx, id, o)
}

// Attach implements cellapi.Attacher: it attaches to a running container's own process.
func (a *Agent) Attach(ctx context.Context, container string, opts cellapi.AttachOptions, stdio cellapi.ExecIO) error {
	a.mu.Lock()
	p := a.pod
	a.mu.Unlock()
	if p == nil {
		return cellapi.Errorf(cellapi.KindNotFound, "no pod on cell %s", a.cfg.CellID)
	}
	return p.Attach(ctx, container, opts, stdio)
}

var _ cellapi.Attacher = (*Agent)(nil)

// PortForward implements cellapi.Streamer: containers share the cell's network namespace
// with the agent, so the port is reached on the loopback.
func (a *Agent) PortForward(ctx context.Context, port int32, conn io.ReadWriteCloser) error {
	defer conn.Close()
	var d net.Dialer
	target, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return cellapi.Errorf(cellapi.KindNotFound, "port %d: %v", port, err)
	}
	defer target.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(target, conn); target.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, target); conn.Close(); done <- struct{}{} }()
	for range 2 {
		select {
		case <-done:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}
