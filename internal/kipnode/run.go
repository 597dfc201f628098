package kipnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/admit"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/controllers/cellmirror"
	"github.com/kip-dev/kip/internal/controllers/ephpush"
	"github.com/kip-dev/kip/internal/controllers/gc"
	"github.com/kip-dev/kip/internal/controllers/loop"
	"github.com/kip-dev/kip/internal/controllers/svcpush"
	"github.com/kip-dev/kip/internal/controllers/volpush"
	"github.com/kip-dev/kip/internal/crd"
	"github.com/kip-dev/kip/internal/enroll"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/metrics"
	"github.com/kip-dev/kip/internal/nodeauth"
	"github.com/kip-dev/kip/internal/podrequest"
	"github.com/kip-dev/kip/internal/provider"
	"github.com/kip-dev/kip/internal/selector"
	"github.com/kip-dev/kip/internal/servicetable"
	"github.com/kip-dev/kip/internal/vnode"
)

// runner holds one Start's state.
type runner struct {
	opts    Options
	cfg     *config.ProviderConfig
	log     *slog.Logger
	restCfg *rest.Config
	client  kubernetes.Interface
	dynamic dynamic.Interface
	// interfaceAddrs lists the host's addresses; nil means net.InterfaceAddrs (tests inject).
	interfaceAddrs func() ([]net.Addr, error)
	// role is what /healthz reports (health.go).
	role atomic.Value
	// boot is the AWS cells' artifact and enrollment server, made with the AWS backend;
	// nil for other backends.
	boot *cellBoot
}

func (r *runner) run(ctx context.Context) error {
	cfg := r.cfg
	name := cfg.Node.Name
	log := r.log.With("node", name)

	backend, closeBackend, err := r.backend(ctx)
	if err != nil {
		return err
	}
	defer closeBackend()
	nodeIP, err := r.nodeIP(backend)
	if err != nil {
		return err
	}
	log.Info("starting kip", "backend", backend.Name(), "internalIP", nodeIP, "kubeletPort", cfg.Node.KubeletPort)

	ca, err := nodeauth.EnsureCA(ctx, r.client)
	if err != nil {
		return err
	}
	servingCert, err := r.servingCert(ctx, nodeIP)
	if err != nil {
		return err
	}
	clientCA, err := nodeauth.ClusterClientCA(ctx, r.client, r.restCfg)
	if err != nil {
		return err
	}

	var enrollment *cells.Enrollment
	if r.boot != nil {
		ledger := &enroll.SecretLedger{Secrets: r.client.CoreV1(), Namespace: enrollLedgerNamespace, Name: "kip-enrollments-" + name}
		if enrollment, err = r.boot.serve(ctx, ca, cfg.Cloud.AWS.Bootstrap.TokenTTL.Duration, ledger); err != nil {
			return err
		}
	}

	var mirror *cellmirror.Mirror
	if err := crd.Install(ctx, r.dynamic); err != nil {
		log.Warn("the Cell custom resource is unavailable; kubectl get cells will show nothing", "err", err)
	} else {
		mirror = cellmirror.New(r.dynamic, name, log)
	}

	// One event recorder for virtual-kubelet, the cells and the resolver (events.go).
	recorder, stopEvents := eventRecorder(r.client, name)
	defer stopEvents()

	types, err := backend.InstanceTypes(ctx)
	if err != nil {
		return fmt.Errorf("starting kip: reading the %s backend's instance types: %w", backend.Name(), err)
	}
	if err := checkStandby(backend, cfg.Cells.Standby, types); err != nil {
		return err
	}

	// kip's own metrics, served at /metrics/kip and kubelet's /metrics on the kubelet API.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	met, err := metrics.New(reg)
	if err != nil {
		return fmt.Errorf("starting kip: %w", err)
	}

	// The API server caches: the node's pods and every namespace's Secrets, ConfigMaps and
	// Services, watched once, read by both the pod resolver and virtual-kubelet's pod
	// controller. They start with the virtual node; Resolve waits for them to sync.
	inf := vnode.NewInformers(r.client, name)
	nodeSpec := nodeSpec(cfg, nodeIP)
	resolver, err := podrequest.New(podrequest.Config{
		Secrets:         inf.Secrets.Lister(),
		ConfigMaps:      inf.ConfigMaps.Lister(),
		Services:        inf.Services.Lister(),
		Synced:          inf.HasSynced,
		Client:          r.client,
		Events:          recorder,
		NodeAllocatable: nodeSpec.Status.Allocatable,
		ClusterDNS:      cfg.Node.ClusterDNS,
		ClusterDomain:   cfg.Node.ClusterDomain,
		Log:             r.log,
	})
	if err != nil {
		return fmt.Errorf("starting kip: %w", err)
	}
	// The cluster's Services as cells program them, from the same Service informer and the
	// EndpointSlices, pushed to every cell by svcpush (and to each new cell before its pod).
	svcTable, err := servicetable.New(servicetable.Config{
		Services:       inf.Services,
		EndpointSlices: inf.EndpointSlices,
		NodeName:       name,
		Events:         recorder,
		Log:            r.log,
	})
	if err != nil {
		return fmt.Errorf("starting kip: %w", err)
	}
	var mgr *cells.Manager
	svcPush := svcpush.New(svcpush.Options{ResyncInterval: cfg.Cells.StatusInterval.Duration, Log: r.log}, svcTable,
		svcpush.CellsFunc(func(visit func(string, cellapi.Agent, time.Duration)) { mgr.EachRunning(visit) }))
	faulted, err := r.faults(backend)
	if err != nil {
		return err
	}
	cl := met.InstrumentCloud(faulted)
	mgr = cells.New(cellsOptions(cfg), cells.NodeInfo{Name: name, HostIP: nodeIP}, cells.Deps{
		Cloud:    cl,
		Selector: &selector.Selector{Options: selectorOptions(cfg)},
		Resolver: resolver,
		CA:       ca,
		Events:   recorder,
		Mirror:   mirrorOrNil(mirror),
		Registry: cellapi.RegistryConfig{
			DefaultRegistry:  cfg.Registry.DefaultRegistry,
			Insecure:         cfg.Registry.Insecure,
			MaxUnpackedBytes: cfg.Registry.MaxUnpackedImageSize.Value(),
		},
		Enrollment: enrollment,
		Dial:       r.opts.Dial,
		Log:        r.log,
		Observe:    met.Observe,
		Services:   svcPush,

		AgentServing: agentServing(backend),
	})
	defer mgr.Close()
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kip_standby_cells",
		Help: "Warm cells no pod owns yet, booting or ready (cells.standby).",
	}, func() float64 { return float64(len(mgr.StandbyCells())) })); err != nil {
		return fmt.Errorf("starting kip: %w", err)
	}
	// Conditions other controllers set on a pod (readiness gates) reach the status kip
	// reports; virtual-kubelet does not pass status-only changes to the provider.
	if _, err := inf.Pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) {
			if pod, ok := obj.(*corev1.Pod); ok {
				mgr.MergeConditions(pod)
			}
		},
	}); err != nil {
		return fmt.Errorf("starting kip: watching pod conditions: %w", err)
	}

	// Running pods' configMap, secret, downwardAPI and projected volumes follow their sources,
	// the pod's labels and annotations, and projected token refreshes (volpush).
	volPush := volpush.New(volpush.Options{
		Log: r.log,
		PodMeta: func(ns, name string) *corev1.Pod {
			p, err := inf.Pods.Lister().Pods(ns).Get(name)
			if err != nil {
				return nil
			}
			return p
		},
	}, mgr, resolver)
	if err := watchVolumeSources(inf, volPush); err != nil {
		return fmt.Errorf("starting kip: %w", err)
	}

	// Ephemeral containers added to running pods (kubectl debug) start in their cells
	// (ephpush); the pod informer says when a pod gains one, a resync catches the rest.
	latestPod := func(ns, name string) *corev1.Pod {
		p, err := inf.Pods.Lister().Pods(ns).Get(name)
		if err != nil {
			return nil
		}
		return p
	}
	ephPush := ephpush.New(ephpush.Options{Log: r.log, Events: recorder, LatestPod: latestPod}, mgr, resolver)
	if _, err := inf.Pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Pod)
			n, ok2 := cur.(*corev1.Pod)
			if ok1 && ok2 {
				ephPush.PodChanged(o, n)
			}
		},
	}); err != nil {
		return fmt.Errorf("starting kip: watching pods for ephemeral containers: %w", err)
	}

	// Adopt the cells of pods bound to this node before serving anything.
	pods, err := r.client.CoreV1().Pods(corev1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", name).String(),
	})
	if err != nil {
		return fmt.Errorf("starting kip: listing the pods of node %s: %w", name, err)
	}
	podPtrs := make([]*corev1.Pod, 0, len(pods.Items))
	for i := range pods.Items {
		podPtrs = append(podPtrs, &pods.Items[i])
	}
	if err := mgr.Recover(ctx, podPtrs); err != nil {
		return fmt.Errorf("starting kip: %w", err)
	}
	log.Info("recovered cells", "pods", len(podPtrs))
	mgr.StartStandby()

	prov, err := provider.New(provider.Config{NodeName: name, Cells: mgr, Pods: r.client.CoreV1(), Log: r.log})
	if err != nil {
		return err
	}
	auth, err := nodeauth.KubeletAuth(r.client, name, clientCA, r.opts.AnonymousPaths)
	if err != nil {
		return err
	}
	routes := provider.WithLogQuery(api.PodHandler(api.PodHandlerConfig{
		GetContainerLogs:  prov.GetContainerLogs,
		RunInContainer:    prov.RunInContainer,
		AttachToContainer: prov.AttachToContainer,
		PortForward:       prov.PortForward,
		GetPods:           prov.RunningPods,
		GetPodsFromKubernetes: func(context.Context) ([]*corev1.Pod, error) {
			return inf.Pods.Lister().List(labels.Everything())
		},
		GetStatsSummary:       prov.GetStatsSummary,
		GetMetricsResource:    prov.GetMetricsResource,
		StreamIdleTimeout:     30 * time.Minute,
		StreamCreationTimeout: 30 * time.Second,
	}, true))
	vn, err := vnode.New(vnode.Config{
		Client:              r.client,
		Node:                nodeSpec,
		Pods:                prov,
		Informers:           inf,
		Events:              recorder,
		OnStatusUpdateError: r.recreateNode(nodeSpec),
		Workers:             8,
		ListenAddr:          hostPort(nodeIP, cfg.Node.KubeletPort),
		Certificate:         servingCert,
		Handler:             nodeutil.WithAuth(auth, withMetrics(metrics.Handler(reg), routes)),
	})
	if err != nil {
		return fmt.Errorf("starting kip: creating the virtual node: %w", err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if mirror != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mirror.Run(runCtx, 2)
		}()
	}
	// Off the critical path: orphans and vanished instances (gc), the service table pushed to
	// every cell (svcpush). Each cell's state machine judges its own agent's liveness from
	// the heartbeats on its status stream.
	interval := cfg.Cells.StatusInterval.Duration
	gcc := gc.New(gc.Options{Interval: interval, ClusterName: cfg.Cells.ClusterName, NodeName: name, FormerNodeNames: cfg.Cells.FormerNodeNames}, mgr, cl, mirrorOrNil(mirror), nil, r.log)
	// The service table builds once the informers (started by the virtual node) have synced.
	wg.Add(5)
	go func() { defer wg.Done(); volPush.Run(runCtx) }()
	go func() { defer wg.Done(); ephPush.Run(runCtx) }()
	go func() { defer wg.Done(); gcc.Run(runCtx) }()
	go func() { defer wg.Done(); svcTable.Run(runCtx) }()
	go func() { defer wg.Done(); svcPush.Run(runCtx) }()
	// Cell agents' serving certificates are renewed before they expire (kip's own client
	// certificate renews itself on the next handshake).
	wg.Add(1)
	go func() { defer wg.Done(); loop.Run(runCtx, "agent-certs", nil, time.Second, mgr.RenewAgentCerts) }()
	if h, ok := backend.(nodePortHost); ok {
		wg.Add(1)
		go func() { defer wg.Done(); runNodePorts(runCtx, h, svcTable, r.log.With("component", "nodeports")) }()
	}
	errc := make(chan error, 1)
	go func() { errc <- vn.Run(runCtx) }()

	if err := vn.WaitReady(runCtx, 2*time.Minute); err != nil {
		cancel()
		<-errc
		wg.Wait()
		return fmt.Errorf("starting kip: the virtual node did not become ready: %w", err)
	}
	log.Info("kip is ready", "kubeletAPI", "https://"+hostPort(nodeIP, cfg.Node.KubeletPort), "instanceTypes", len(types))
	if r.opts.Ready != nil {
		r.opts.Ready()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		errc = nil
	}
	log.Info("stopping kip; cells keep running and are adopted on the next start")
	cancel()
	if errc != nil {
		<-errc
	}
	wg.Wait()
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		return fmt.Errorf("running the virtual node: %w", runErr)
	}
	return nil
}

// recreateNode re-registers the node when someone deletes it; other status errors are retried
// by virtual-kubelet.
func (r *runner) recreateNode(spec *corev1.Node) node.ErrorHandler {
	return func(ctx context.Context, err error) error {
		if !apierrors.IsNotFound(err) {
			return err
		}
		r.log.Warn("the node object was deleted; registering it again", "node", spec.Name)
		n := spec.DeepCopy()
		n.ResourceVersion = ""
		if _, err := r.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("registering node %s again: %w", spec.Name, err)
		}
		return nil
	}
}

func mirrorOrNil(m *cellmirror.Mirror) cells.Mirror {
	if m == nil {
		return nil
	}
	return m
}

// cellsOptions maps the config onto the cells manager's options.
func cellsOptions(cfg *config.ProviderConfig) cells.Options {
	c := cfg.Cells
	return cells.Options{
		Admit:               admit.Node{AllowPrivileged: cfg.Node.AllowPrivileged},
		SeccompProfileRoot:  cfg.Node.SeccompProfileRoot,
		ClusterName:         c.ClusterName,
		HealthyTimeout:      c.HealthyTimeout.Duration,
		LostTimeout:         c.LostTimeout.Duration,
		LaunchConcurrency:   c.LaunchConcurrency,
		CapacityErrorMemory: c.CapacityErrorMemory.Duration,
		PodPidsLimit:        ptr.Deref(c.PodPidsLimit, config.DefaultPodPidsLimit),
		CertLifetime:        c.CertLifetime.Duration,
		Standby:             standbyPools(c.Standby),
	}
}

// standbyPools are the cells.standby pools as the cells manager takes them.
func standbyPools(in []config.StandbyCells) []cells.StandbyPool {
	var out []cells.StandbyPool
	for _, s := range in {
		out = append(out, cells.StandbyPool{InstanceType: s.InstanceType, Spot: s.Spot, Count: s.Count, Max: s.Max})
	}
	return out
}

// checkStandby refuses cells.standby pools the backend cannot keep: a backend that cannot
// tag live instances (binding needs it), an instance type its catalog lacks, a market it
// does not offer.
func checkStandby(backend cloud.Cloud, pools []config.StandbyCells, types []instancetype.InstanceType) error {
	if len(pools) == 0 {
		return nil
	}
	if _, ok := backend.(cloud.Tagger); !ok {
		return fmt.Errorf("starting kip: cells.standby: the %s backend cannot keep standby cells (it cannot tag live instances)", backend.Name())
	}
	for i, p := range pools {
		j := slices.IndexFunc(types, func(t instancetype.InstanceType) bool { return t.Name == p.InstanceType })
		if j < 0 {
			return fmt.Errorf("starting kip: cells.standby[%d].instanceType: %q is not in the %s backend's catalog", i, p.InstanceType, backend.Name())
		}
		if !slices.ContainsFunc(types[j].Offerings, func(o instancetype.Offering) bool { return o.Spot == p.Spot }) {
			what := "on-demand"
			if p.Spot {
				what = "spot"
			}
			return fmt.Errorf("starting kip: cells.standby[%d].spot: instance type %s has no %s offering", i, p.InstanceType, what)
		}
	}
	return nil
}

// selectorOptions are the selector's options of the config, the same kip select --config uses.
func selectorOptions(cfg *config.ProviderConfig) selector.Options { return cfg.SelectorOptions() }

// withMetrics serves kip's metrics at metrics.Path and kubelet's metrics.KubeletPath, and
// everything else from routes. It sits inside the kubelet API's authentication, which
// authorizes /metrics and /metrics/... as nodes/metrics.
func withMetrics(metricsHandler, routes http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == metrics.Path || req.URL.Path == metrics.KubeletPath {
			metricsHandler.ServeHTTP(w, req)
			return
		}
		routes.ServeHTTP(w, req)
	})
}

// agentServing is the backend's notice that a cell's agent serves (the local backend starts
// agents itself and hears from them), nil for backends that cannot tell.
func agentServing(b cloud.Cloud) func(string) <-chan struct{} {
	if s, ok := b.(interface{ AgentServing(string) <-chan struct{} }); ok {
		return s.AgentServing
	}
	return nil
}
