package kipnode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Leader election defaults (docs/design/leader-election.md derives them): a follower takes
// over at most LeaseDuration + 2 × 2.2 × RetryPeriod = 14.4 s after the leader's last renewal,
// plus two API round trips; a leader that cannot renew for RenewDeadline stops 3 s before any
// follower may take over.
const (
	DefaultLeaseNamespace = "kube-system"
	DefaultLeaseDuration  = 10 * time.Second
	DefaultRenewDeadline  = 7 * time.Second
	DefaultRetryPeriod    = 1 * time.Second
)

// LeaderElection makes Start a candidate for the node's Lease: it does nothing but campaign
// until it holds the Lease, then runs the node; replicas of one node (same config, same node
// name) can then run side by side and only one acts. Zero fields take the defaults.
type LeaderElection struct {
	// Namespace of the Lease; empty means $POD_NAMESPACE, else kube-system.
	Namespace string
	// Identity is this candidate's holder identity; empty means Identity().
	Identity string
	// LeaseDuration is how long followers wait after the last renewal they saw before they
	// take over; RenewDeadline how long the leader keeps failing to renew before it gives up;
	// RetryPeriod how often each candidate tries (the leader renews that often).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// ErrLostLease is returned by Start when this process held the Lease and lost it (it could not
// renew within the renew deadline, or another candidate took it). The node's work is cancelled
// but not waited for: the caller should exit so that it restarts as a follower.
var ErrLostLease = errors.New("lost the leader Lease")

// LeaseName is the name of node's leader Lease.
func LeaseName(node string) string { return "kip-" + node }

// Identity is a holder identity unique to this process: the host name (a pod's name
// in-cluster) and a random suffix, so that a restarted replica on the same host is a new
// candidate rather than the old leader come back.
func Identity() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "kip"
	}
	return host + "_" + utilrand.String(8)
}

// withDefaults fills the zero fields.
func (le LeaderElection) withDefaults() LeaderElection {
	if le.Namespace == "" {
		le.Namespace = os.Getenv("POD_NAMESPACE")
	}
	if le.Namespace == "" {
		le.Namespace = DefaultLeaseNamespace
	}
	if le.Identity == "" {
		le.Identity = Identity()
	}
	if le.LeaseDuration == 0 {
		le.LeaseDuration = DefaultLeaseDuration
	}
	if le.RenewDeadline == 0 {
		le.RenewDeadline = DefaultRenewDeadline
	}
	if le.RetryPeriod == 0 {
		le.RetryPeriod = DefaultRetryPeriod
	}
	return le
}

// elector builds the candidate for node's Lease; started and stopped are closed when it
// starts and stops leading.
func (le LeaderElection) elector(client kubernetes.Interface, node string, onNewLeader func(string)) (e *leaderelection.LeaderElector, started, stopped <-chan struct{}, err error) {
	start, stop := make(chan struct{}), make(chan struct{})
	e, err = leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: le.Namespace, Name: LeaseName(node)},
			Client:     client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: le.Identity},
		},
		Name:          LeaseName(node),
		LeaseDuration: le.LeaseDuration,
		RenewDeadline: le.RenewDeadline,
		RetryPeriod:   le.RetryPeriod,
		// The Lease is given back once the node has stopped (lead cancels the elector only
		// then), so a follower takes over at its next try instead of after LeaseDuration.
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) { close(start) },
			OnStoppedLeading: func() { close(stop) },
			OnNewLeader:      onNewLeader,
		},
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("starting kip: leader election on Lease %s/%s: %w", le.Namespace, LeaseName(node), err)
	}
	return e, start, stop, nil
}

// lead campaigns for the node's Lease and, once it holds it, calls run (the whole node: the
// backend, registration, Recover, controllers, the kubelet API) until ctx ends or run returns.
// Until then it touches nothing but the Lease. The Lease is renewed while run winds down and
// released after it returned. If the Lease is lost while run runs, lead cancels run and returns
// ErrLostLease at once, without waiting: the process must exit before a follower's
// LeaseDuration is up.
func (r *runner) lead(ctx context.Context, le LeaderElection, run func(context.Context) error) error {
	le = le.withDefaults()
	node := r.cfg.Node.Name
	log := r.log.With("node", node, "lease", le.Namespace+"/"+LeaseName(node), "identity", le.Identity)
	elector, started, stopped, err := le.elector(r.client, node, func(holder string) {
		if holder != le.Identity {
			log.Info("the node is led by another replica", "leader", holder)
		}
	})
	if err != nil {
		return err
	}

	// The elector outlives ctx: cancelling it releases the Lease, which must wait until the
	// node has stopped.
	electCtx, stopElecting := context.WithCancel(context.WithoutCancel(ctx))
	electorDone := make(chan struct{})
	go func() {
		defer close(electorDone)
		elector.Run(electCtx)
	}()
	defer func() {
		stopElecting()
		<-electorDone
	}()

	log.Info("waiting to lead the node; serving nothing until then",
		"leaseDuration", le.LeaseDuration, "renewDeadline", le.RenewDeadline, "retryPeriod", le.RetryPeriod)
	r.setRole(roleFollower)
	select {
	case <-ctx.Done():
		return nil
	case <-started:
	}
	log.Info("leading the node")
	r.setRole(roleLeader)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- run(runCtx) }()
	select {
	case err := <-errc:
		return err
	case <-stopped:
		cancel()
		log.Error("lost the leader Lease; stopping so that this process restarts as a follower")
		return fmt.Errorf("running kip: %w %s/%s", ErrLostLease, le.Namespace, LeaseName(node))
	}
}
