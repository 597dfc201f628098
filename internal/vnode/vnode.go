// Package vnode runs kip's virtual node: virtual-kubelet's pod controller over kip's shared
// informers, its node controller (Node object, status and Lease), and the kubelet API's TLS
// server. It does what virtual-kubelet's nodeutil.NewNode and Node.Run do, except that the
// informers are made by the caller (NewInformers), so the pod resolver reads the same caches
// the pod controller does and each kind is watched once.
package vnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
)

// Config is what a Node is made of.
type Config struct {
	// Client registers the node, renews its Lease and updates pod statuses.
	Client kubernetes.Interface
	// Node is the Node object to register. It is copied as nodeutil.NewNode copies its
	// NodeSpec: shallowly, so the Ready condition set at startup shows in Node's slices too.
	Node *corev1.Node
	// Pods runs the node's pods (kip's provider). If it also implements node.PodNotifier,
	// status is pushed rather than polled.
	Pods node.PodLifecycleHandler
	// Informers feed the pod controller; the caller starts nothing, Run does.
	Informers *Informers
	// Events records the pod controller's Events.
	Events record.EventRecorder
	// OnStatusUpdateError handles a failed node status update (e.g. the node object was
	// deleted); nil leaves it to virtual-kubelet.
	OnStatusUpdateError node.ErrorHandler
	// Workers is the number of pod sync workers; 0 means 1.
	Workers int
	// ListenAddr (host:port), Certificate and Handler serve the kubelet API over TLS.
	// Handler does its own authentication and authorization.
	ListenAddr  string
	Certificate tls.Certificate
	Handler     http.Handler
}

// retryBase and retryMax bound the pod controller's retry delays, as client-go's default
// controller limiter does (5 ms doubling up to 1000 s).
const (
	retryBase = 5 * time.Millisecond
	retryMax  = 1000 * time.Second
)

// Node is the running virtual node. Make it with New, then Run it once.
type Node struct {
	cfg       Config
	spec      *corev1.Node
	np        *node.NaiveNodeProviderV2
	nc        *node.NodeController
	pc        *node.PodController
	tlsConfig *tls.Config

	ready chan struct{}
	done  chan struct{}
	err   error
}

// New builds the node and pod controllers; nothing talks to the API server until Run.
func New(cfg Config) (*Node, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("creating the virtual node: Client is required")
	case cfg.Node == nil:
		return nil, errors.New("creating the virtual node: Node is required")
	case cfg.Pods == nil:
		return nil, errors.New("creating the virtual node: Pods is required")
	case cfg.Informers == nil:
		return nil, errors.New("creating the virtual node: Informers is required")
	case cfg.Handler == nil:
		return nil, errors.New("creating the virtual node: Handler is required")
	}
	if _, _, err := net.SplitHostPort(cfg.ListenAddr); err != nil {
		return nil, fmt.Errorf("creating the virtual node: kubelet API address %q: %w", cfg.ListenAddr, err)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	spec := *cfg.Node
	n := &Node{
		cfg:  cfg,
		spec: &spec,
		np:   node.NewNaiveNodeProvider(),
		tlsConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			CipherSuites: nodeutil.DefaultServerCiphers(),
			ClientAuth:   tls.RequestClientCert,
			Certificates: []tls.Certificate{cfg.Certificate},
		},
		ready: make(chan struct{}),
		done:  make(chan struct{}),
	}

	opts := []node.NodeControllerOpt{
		node.WithNodeEnableLeaseV1(nodeutil.NodeLeaseV1Client(cfg.Client), node.DefaultLeaseDuration),
	}
	if cfg.OnStatusUpdateError != nil {
		opts = append(opts, node.WithNodeStatusUpdateErrorHandler(cfg.OnStatusUpdateError))
	}
	var err error
	if n.nc, err = node.NewNodeController(n.np, n.spec, cfg.Client.CoreV1().Nodes(), opts...); err != nil {
		return nil, fmt.Errorf("creating the node controller: %w", err)
	}
	n.pc, err = node.NewPodController(node.PodControllerConfig{
		PodClient:         cfg.Client.CoreV1(),
		EventRecorder:     cfg.Events,
		Provider:          asyncRegistration(cfg.Pods),
		PodInformer:       cfg.Informers.Pods,
		SecretInformer:    cfg.Informers.Secrets,
		ConfigMapInformer: cfg.Informers.ConfigMaps,
		ServiceInformer:   cfg.Informers.Services,
		// kip's pod resolver (internal/podrequest) resolves env and volumes, with kubelet's
		// Events, once the cell's IP is known.
		SkipDownwardAPIResolution: true,
		// Only retries wait (retryLimiter): a pod's start and its status changes are
		// handled at once, however many pods change together. virtual-kubelet's default
		// limiter's shared bucket (10 a second, burst 100) capped the node at 10 pod syncs,
		// 10 status updates and 10 deletions a second (docs/design/scale.md); the API
		// client's QPS bounds the requests.
		SyncPodsFromKubernetesRateLimiter:    newRetryLimiter(retryBase, retryMax),
		DeletePodsFromKubernetesRateLimiter:  newRetryLimiter(retryBase, retryMax),
		SyncPodStatusFromProviderRateLimiter: newRetryLimiter(retryBase, retryMax),
	})
	if err != nil {
		return nil, fmt.Errorf("creating the pod controller: %w", err)
	}
	return n, nil
}

// Run serves the kubelet API, starts the informers, runs the pod controller and, once it is
// ready, the node controller; then it marks the node Ready and waits until ctx ends or a
// controller stops. It returns the error that stopped it.
func (n *Node) Run(ctx context.Context) (retErr error) {
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		n.err = retErr
		close(n.done)
	}()

	stopHTTP, err := n.serve(ctx)
	if err != nil {
		return err
	}
	defer stopHTTP()

	n.cfg.Informers.Start(ctx)
	go n.pc.Run(ctx, n.cfg.Workers) //nolint:errcheck // its error is pc.Err()
	defer func() {
		cancel()
		<-n.pc.Done()
	}()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-n.pc.Ready():
	case <-n.pc.Done():
		return n.pc.Err()
	}
	vklog.G(ctx).Debug("pod controller ready")

	go n.nc.Run(ctx) //nolint:errcheck // its error is nc.Err()
	defer func() {
		cancel()
		<-n.nc.Done()
	}()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-n.nc.Ready():
	case <-n.nc.Done():
		return n.nc.Err()
	}
	vklog.G(ctx).Debug("node controller ready")

	setReady(n.spec)
	if err := n.np.UpdateStatus(ctx, n.spec); err != nil {
		return fmt.Errorf("marking the node ready: %w", err)
	}
	close(n.ready)

	select {
	case <-n.nc.Done():
		return n.nc.Err()
	case <-n.pc.Done():
		return n.pc.Err()
	}
}

// asyncRegistration returns pods with a NotifyPods that registers virtual-kubelet's callback
// from a goroutine, when pods is a node.PodNotifier. The pod controller registers it before its
// pod cache has synced, and each status handed to the callback waits (151 ms × 20) for its pod
// to be known, then is dropped; a provider that replays its pods' statuses on registration, as
// kip's does for the cells Recover adopted, would hold the controller's start, and so the
// node's, about 3 s per pod, and lose those statuses. Registered in the background, the replay
// runs while the controller syncs, and the statuses reach it once it knows the pods. Pods'
// NotifyPods must therefore deliver on registration every status it already knows.
func asyncRegistration(pods node.PodLifecycleHandler) node.PodLifecycleHandler {
	n, ok := pods.(node.PodNotifier)
	if !ok {
		return pods
	}
	return asyncNotifier{PodLifecycleHandler: pods, notifier: n}
}

type asyncNotifier struct {
	node.PodLifecycleHandler
	notifier node.PodNotifier
}

func (a asyncNotifier) NotifyPods(ctx context.Context, f func(*corev1.Pod)) {
	go a.notifier.NotifyPods(ctx, f)
}

// serve starts the kubelet API server; the returned func stops it.
func (n *Node) serve(ctx context.Context) (func(), error) {
	l, err := tls.Listen("tcp", n.cfg.ListenAddr, n.tlsConfig)
	if err != nil {
		return nil, fmt.Errorf("listening for the kubelet API on %s: %w", n.cfg.ListenAddr, err)
	}
	srv := &http.Server{Handler: n.cfg.Handler, TLSConfig: n.tlsConfig, ReadHeaderTimeout: 30 * time.Second}
	go srv.Serve(l) //nolint:errcheck // Serve returns once Close is called
	vklog.G(ctx).Debug("kubelet API server running")
	return func() {
		srv.Close()
		l.Close()
	}, nil
}

// WaitReady waits until the node is Ready, Run has stopped, ctx ends, or timeout (if > 0)
// passes.
func (n *Node) WaitReady(ctx context.Context, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	select {
	case <-n.ready:
		return nil
	case <-n.done:
		return fmt.Errorf("controller exited before ready: %w", n.err)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Ready is closed once the node is Ready.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Done is closed once Run has returned.
func (n *Node) Done() <-chan struct{} { return n.done }

// setReady marks the node Running and its Ready condition true (nodeutil's setNodeReady).
func setReady(n *corev1.Node) {
	n.Status.Phase = corev1.NodeRunning
	for i, c := range n.Status.Conditions {
		if c.Type != corev1.NodeReady {
			continue
		}
		c.Message = "Kubelet is ready"
		c.Reason = "KubeletReady"
		c.Status = corev1.ConditionTrue
		c.LastHeartbeatTime = metav1.Now()
		c.LastTransitionTime = metav1.Now()
		n.Status.Conditions[i] = c
		return
	}
}
