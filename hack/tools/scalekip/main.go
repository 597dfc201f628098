// Command scalekip runs one kip against a real API server with the fake cloud
// (internal/cloud/fake) and an in-process cell agent per cell (internal/cellapi/cellapitest)
// instead of real cells. The 10,000-pod scale benchmark (test/scale, docs/design/scale.md)
// runs it as a process of its own so that its RSS and CPU are kip's alone.
//
// It counts every request kip makes to the API server, by verb and resource, and serves the
// counts with the number of live cells as JSON at GET /stats on --stats-addr (loopback only),
// beside Go's profiles at /debug/pprof/.
//
//	scalekip --kubeconfig admin.kubeconfig --config kip.yaml --stats-addr 127.0.0.1:9999
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // /debug/pprof on the stats address, for profiling kip under load
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cellapi/cellapitest"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/kipnode"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "scalekip:", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server (required)")
	cfgPath := flag.String("config", "", "kip's ProviderConfig; its cloud section is ignored (required)")
	statsAddr := flag.String("stats-addr", "127.0.0.1:0", "loopback address serving GET /stats")
	logLevel := flag.String("log-level", "info", "log level")
	flag.Parse()
	if *kubeconfig == "" || *cfgPath == "" {
		return fmt.Errorf("--kubeconfig and --config are required")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("loading %s: %w", *kubeconfig, err)
	}
	reqs := &requests{n: map[string]int64{}}
	rc.Wrap(reqs.wrap)
	sim := &simCloud{Fake: fake.New(fake.WithoutCallLog()), agents: map[string]*simAgent{}, byInstance: map[string]string{}}

	l, err := net.Listen("tcp", *statsAddr)
	if err != nil {
		return fmt.Errorf("--stats-addr: %w", err)
	}
	if !l.Addr().(*net.TCPAddr).IP.IsLoopback() {
		return fmt.Errorf("--stats-addr %s is not a loopback address", *statsAddr)
	}
	// The harness reads the address from this line.
	fmt.Fprintf(os.Stderr, "stats on http://%s/stats\n", l.Addr())
	go func() {
		http.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(Stats{Requests: reqs.snapshot(), LiveCells: sim.live()})
		})
		_ = http.Serve(l, nil)
	}()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return kipnode.Start(ctx, kipnode.Options{Config: cfg, RESTConfig: rc, Cloud: sim, Dial: sim.dial, Log: log})
}

// Stats is what GET /stats serves.
type Stats struct {
	// Requests counts kip's API server requests by "verb resource" (e.g. "create events",
	// "update pods/status", "watch pods").
	Requests map[string]int64 `json:"requests"`
	// LiveCells is how many cells are launched and not yet terminated.
	LiveCells int `json:"liveCells"`
}

// requests counts the requests passing through the transports it wraps.
type requests struct {
	mu sync.Mutex
	n  map[string]int64
}

func (r *requests) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		k := verbResource(req)
		r.mu.Lock()
		r.n[k]++
		r.mu.Unlock()
		return rt.RoundTrip(req)
	})
}

func (r *requests) snapshot() map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int64, len(r.n))
	for k, v := range r.n {
		out[k] = v
	}
	return out
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// verbResource names a request as the API server's audit log would: its verb (get, list,
// watch, create, update, patch, delete, deletecollection) and resource[/subresource];
// requests outside /api and /apis are "get nonresource".
func verbResource(req *http.Request) string {
	segs := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	var rest []string
	switch {
	case len(segs) >= 2 && segs[0] == "api":
		rest = segs[2:]
	case len(segs) >= 3 && segs[0] == "apis":
		rest = segs[3:]
	default:
		return strings.ToLower(req.Method) + " nonresource"
	}
	if len(rest) >= 3 && rest[0] == "namespaces" {
		rest = rest[2:] // namespaces/<ns>/<resource>...
	}
	if len(rest) == 0 {
		return "get discovery"
	}
	resource, named := rest[0], len(rest) > 1
	if len(rest) > 2 {
		resource += "/" + rest[2]
	}
	verb := ""
	switch req.Method {
	case http.MethodGet:
		switch {
		case req.URL.Query().Get("watch") == "true" || req.URL.Query().Get("watch") == "1":
			verb = "watch"
		case named:
			verb = "get"
		default:
			verb = "list"
		}
	case http.MethodPost:
		verb = "create"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
	case http.MethodDelete:
		verb = "delete"
		if !named {
			verb = "deletecollection"
		}
	default:
		verb = strings.ToLower(req.Method)
	}
	return verb + " " + resource
}

// simCloud is the fake cloud with an in-process agent per instance, made at launch and
// dropped at termination.
type simCloud struct {
	*fake.Fake
	mu         sync.Mutex
	agents     map[string]*simAgent // by cell id
	byInstance map[string]string    // instance id → cell id
}

func (s *simCloud) Launch(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	in, err := s.Fake.Launch(ctx, spec)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.agents[in.CellID]; !ok && in.State != cloud.StateTerminated {
		s.agents[in.CellID] = &simAgent{Agent: &cellapitest.Agent{CellID: in.CellID}}
		s.byInstance[in.ID] = in.CellID
	}
	return in, nil
}

func (s *simCloud) Terminate(ctx context.Context, id string) error {
	if err := s.Fake.Terminate(ctx, id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cellID, ok := s.byInstance[id]; ok {
		delete(s.agents, cellID)
		delete(s.byInstance, id)
	}
	return nil
}

// dial is kipnode.Options.Dial: the cell's in-process agent.
func (s *simCloud) dial(_ context.Context, inst *cloud.Instance, cellID string) (cellapi.Agent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.agents[cellID]
	if !ok {
		return nil, fmt.Errorf("dialing cell %s (instance %s): no such agent", cellID, inst.ID)
	}
	return a, nil
}

func (s *simCloud) live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.agents)
}

// simAgent is cellapitest's agent that also takes service tables, as a real agent does, so
// that kip pushes them to it.
type simAgent struct {
	*cellapitest.Agent
	mu      sync.Mutex
	version uint64
}

var _ cellapi.ServiceProgrammer = (*simAgent)(nil)

// PutPod runs the pod on cellapitest's agent, handing it only the pod's UID and containers:
// a real agent keeps the whole request in its cell, not in kip's memory, which this
// process's RSS is meant to measure.
func (a *simAgent) PutPod(ctx context.Context, req *cellapi.PodRequest) (*cellapi.PodStatus, error) {
	slim := &corev1.Pod{}
	slim.UID = req.Pod.UID
	for _, c := range req.Pod.Spec.Containers {
		slim.Spec.Containers = append(slim.Spec.Containers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	return a.Agent.PutPod(ctx, &cellapi.PodRequest{Pod: slim})
}

// PutServices acknowledges t: a full table, or a delta on top of the version it holds.
func (a *simAgent) PutServices(_ context.Context, t *cellapi.ServiceTable) (*cellapi.ServiceTableStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t.Base != 0 && t.Base != a.version {
		return nil, cellapi.Errorf(cellapi.KindConflict, "holding version %d, not %d", a.version, t.Base)
	}
	a.version = t.Version
	return &cellapi.ServiceTableStatus{Version: t.Version, Services: len(t.Services)}, nil
}
