package pod

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/syncbuf"
)

// handler runs one probe or lifecycle handler against a running container and reports
// success, with a message on failure. Containers share the cell's network namespace with the
// agent, so httpGet and tcpSocket go to the cell's own address (127.0.0.1 unless the probe
// names a host).
func (p *Pod) handler(ctx context.Context, c *ctr, id string, h corev1.ProbeHandler, timeout time.Duration) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case h.Exec != nil:
		ex, ok := p.cfg.Runtime.(runtime.Execer)
		if !ok {
			return false, "exec handlers are not supported by this runtime"
		}
		out := syncbuf.Buffer{Max: 10 << 10} // the handler's output, for the failure message
		code, err := ex.Exec(ctx, id, h.Exec.Command, runtime.IO{Stdout: &out, Stderr: &out})
		if err != nil {
			return false, err.Error()
		}
		if code != 0 {
			return false, fmt.Sprintf("command %q exited with %d: %s", h.Exec.Command, code, strings.TrimSpace(out.String()))
		}
		return true, ""
	case h.HTTPGet != nil:
		port, err := resolvePort(h.HTTPGet.Port, c.spec)
		if err != nil {
			return false, err.Error()
		}
		host := h.HTTPGet.Host
		if host == "" {
			host = "127.0.0.1"
		}
		scheme := strings.ToLower(string(h.HTTPGet.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		path := h.HTTPGet.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), path)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err.Error()
		}
		req.Header.Set("User-Agent", "kube-probe/kip")
		for _, hd := range h.HTTPGet.HTTPHeaders {
			req.Header.Add(hd.Name, hd.Value)
		}
		resp, err := probeClient.Do(req)
		if err != nil {
			return false, fmt.Sprintf("Get %q: %v", url, err)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return false, fmt.Sprintf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return true, ""
	case h.TCPSocket != nil:
		port, err := resolvePort(h.TCPSocket.Port, c.spec)
		if err != nil {
			return false, err.Error()
		}
		host := h.TCPSocket.Host
		if host == "" {
			host = "127.0.0.1"
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	case h.GRPC != nil:
		// As kubelet, the pod's own address (the cell's); loopback before it is known.
		host := p.cfg.PodIP
		if host == "" {
			host = "127.0.0.1"
		}
		service := ""
		if h.GRPC.Service != nil {
			service = *h.GRPC.Service
		}
		return grpcProbe(ctx, net.JoinHostPort(host, strconv.Itoa(int(h.GRPC.Port))), service)
	}
	return false, "handler has no action"
}

// probeClient skips certificate checks, as kubelet's HTTPS probes do.
var probeClient = &http.Client{
	Transport: &http.Transport{TLSClientConfig: insecureTLS(), DisableKeepAlives: true},
	CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return http.ErrUseLastResponse
		}
		return nil
	},
}

func resolvePort(port intstr.IntOrString, c *corev1.Container) (int, error) {
	if port.Type == intstr.Int {
		if port.IntVal <= 0 || port.IntVal > 65535 {
			return 0, fmt.Errorf("port %d is out of range", port.IntVal)
		}
		return int(port.IntVal), nil
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil && n > 0 && n <= 65535 {
		return n, nil
	}
	return 0, fmt.Errorf("port %q is not a named port of container %s", port.StrVal, c.Name)
}

func seconds(n int32, def time.Duration) time.Duration {
	if n <= 0 {
		return def
	}
	return time.Duration(n) * time.Second
}

func threshold(n, def int32) int32 {
	if n <= 0 {
		return def
	}
	return n
}

// probeLoop runs the container's startup, liveness and readiness probes until ctx ends
// (the run ended or the pod stops). A failed startup or liveness probe kills the run, which
// the restart policy then handles.
func (p *Pod) probeLoop(ctx context.Context, c *ctr, id string) {
	spec := c.spec
	started := spec.StartupProbe == nil
	type state struct {
		probe              *corev1.Probe
		next               time.Time
		successes, failure int32
	}
	now := p.cfg.Clock.Now()
	var probes []*state
	kinds := map[*state]string{}
	for kind, pr := range map[string]*corev1.Probe{"startup": spec.StartupProbe, "liveness": spec.LivenessProbe, "readiness": spec.ReadinessProbe} {
		if pr != nil {
			st := &state{probe: pr, next: now.Add(seconds(pr.InitialDelaySeconds, 0))}
			probes = append(probes, st)
			kinds[st] = kind
		}
	}
	ready := false
	active := func(st *state) bool { return (kinds[st] == "startup") != started }
	for {
		// Sleep until the earliest active probe is due.
		var due time.Time
		for _, st := range probes {
			if active(st) && (due.IsZero() || st.next.Before(due)) {
				due = st.next
			}
		}
		if due.IsZero() {
			return // nothing left to probe
		}
		select {
		case <-ctx.Done():
			return
		case <-p.cfg.Clock.After(due.Sub(p.cfg.Clock.Now())):
		}
		for _, st := range probes {
			k := kinds[st]
			if !active(st) || p.cfg.Clock.Now().Before(st.next) {
				continue
			}
			pr := st.probe
			ok, msg := p.handler(ctx, c, id, pr.ProbeHandler, seconds(pr.TimeoutSeconds, time.Second))
			if ctx.Err() != nil {
				return
			}
			st.next = p.cfg.Clock.Now().Add(seconds(pr.PeriodSeconds, 10*time.Second))
			if ok {
				st.successes++
				st.failure = 0
			} else {
				st.failure++
				st.successes = 0
				p.cfg.Log.Info("probe failed", "pod", p.UID(), "container", spec.Name, "probe", k, "msg", msg)
				// As kubelet: "Liveness probe failed: ..." on every failed probe.
				p.event(c, corev1.EventTypeWarning, "Unhealthy", fmt.Sprintf("%s probe failed: %s", strings.ToUpper(k[:1])+k[1:], msg))
			}
			switch k {
			case "startup":
				if st.successes >= 1 {
					started = true
					now := p.cfg.Clock.Now()
					for _, o := range probes {
						if kinds[o] != "startup" {
							o.next = now.Add(seconds(o.probe.InitialDelaySeconds, 0))
						}
					}
					p.update(c, func(s *corev1.ContainerStatus) {
						t := true
						s.Started = &t
						if spec.ReadinessProbe == nil {
							s.Ready = !c.init || c.sidecar
						}
					})
					c.markStarted()
				} else if st.failure >= threshold(pr.FailureThreshold, 3) {
					p.killRun(c, id, "startup", msg)
					return
				}
			case "liveness":
				if st.failure >= threshold(pr.FailureThreshold, 3) {
					p.killRun(c, id, "liveness", msg)
					return
				}
			case "readiness":
				want := ready
				if st.successes >= threshold(pr.SuccessThreshold, 1) {
					want = true
				}
				if st.failure >= threshold(pr.FailureThreshold, 3) {
					want = false
				}
				if want != ready {
					ready = want
					p.update(c, func(s *corev1.ContainerStatus) { s.Ready = ready })
				}
			}
		}
	}
}

// killRun stops a run whose startup or liveness probe (or postStart hook) failed, as kubelet's
// killContainer: preStop first, inside the grace period, then SIGTERM, and SIGKILL once the
// rest of the grace period is over. The grace period is the failed probe's
// terminationGracePeriodSeconds when it has one, else the pod's; whatever is left after
// preStop is at least minimumGracePeriod. The supervisor then restarts the run as the restart
// policy says.
func (p *Pod) killRun(c *ctr, id, probe, msg string) {
	p.cfg.Log.Info("container failed its probe, killing it", "pod", p.UID(), "container", c.spec.Name, "probe", probe, "msg", msg)
	p.mu.Lock()
	run := c.running
	if run != nil {
		c.killReason = fmt.Sprintf("Container %s failed %s probe: %s", c.spec.Name, probe, msg)
	}
	p.mu.Unlock()
	if run == nil || run.ID != id {
		return
	}
	p.event(c, corev1.EventTypeNormal, "Killing", fmt.Sprintf("Container %s failed %s probe, will be restarted", c.spec.Name, probe))
	grace := p.GracePeriod()
	if pr := map[string]*corev1.Probe{"startup": c.spec.StartupProbe, "liveness": c.spec.LivenessProbe}[probe]; pr != nil && pr.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pr.TerminationGracePeriodSeconds) * time.Second
	}
	if ls := c.spec.Lifecycle; ls != nil && ls.PreStop != nil && grace > 0 {
		began := p.cfg.Clock.Now()
		if ok, msg := p.lifecycleHandler(p.ctx, c, id, ls.PreStop, grace); !ok {
			p.event(c, corev1.EventTypeWarning, "FailedPreStopHook", msg)
		}
		grace -= p.cfg.Clock.Since(began)
	}
	p.stopRun(run, max(grace, minimumGracePeriod))
}

// minimumGracePeriod is the least time kubelet gives a container it kills between SIGTERM and
// SIGKILL (minimumGracePeriodInSeconds), whatever the grace period and preStop left.
const minimumGracePeriod = 2 * time.Second

// stopRun sends SIGTERM to one run and SIGKILL after grace if it has not exited.
func (p *Pod) stopRun(run *runtime.Container, grace time.Duration) {
	ctx := context.Background()
	if err := p.cfg.Runtime.Kill(ctx, run.ID, sigterm); err != nil {
		p.cfg.Log.Warn("sending SIGTERM", "container", run.ID, "err", err)
	}
	select {
	case <-run.Done():
	case <-p.cfg.Clock.After(grace):
		if err := p.cfg.Runtime.Kill(ctx, run.ID, sigkill); err != nil {
			p.cfg.Log.Warn("sending SIGKILL", "container", run.ID, "err", err)
		}
	}
}

const (
	sigterm = syscall.SIGTERM
	sigkill = syscall.SIGKILL
)

// insecureTLS is for HTTPS probes, which kubelet does not verify either.
func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} } //nolint:gosec

// lifecycleHandler runs a postStart or preStop handler.
func (p *Pod) lifecycleHandler(ctx context.Context, c *ctr, id string, h *corev1.LifecycleHandler, timeout time.Duration) (bool, string) {
	if h.Sleep != nil {
		select {
		case <-p.cfg.Clock.After(time.Duration(h.Sleep.Seconds) * time.Second):
		case <-ctx.Done():
		}
		return true, ""
	}
	return p.handler(ctx, c, id, corev1.ProbeHandler{Exec: h.Exec, HTTPGet: h.HTTPGet, TCPSocket: h.TCPSocket}, timeout)
}
