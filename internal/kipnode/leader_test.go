package kipnode

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kip-dev/kip/internal/config"
)

// fast timings, so a test's takeover takes a fraction of a second; only their order matters.
func fastElection(identity string) LeaderElection {
	return LeaderElection{Namespace: "kip-system", Identity: identity,
		LeaseDuration: time.Second, RenewDeadline: 500 * time.Millisecond, RetryPeriod: 100 * time.Millisecond}
}

func testRunner(client *fake.Clientset) *runner {
	cfg := config.NewDefault()
	cfg.Node.Name = "vk"
	r := &runner{cfg: cfg, client: client, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	r.setRole(roleStandalone)
	return r
}

// candidate runs one replica's lead in the background; its node "runs" (blocks) until its
// context ends.
type candidate struct {
	r       *runner
	running chan struct{} // closed when run is called
	ranOut  chan struct{} // closed when run's context ended
	done    chan error    // lead's result
	cancel  context.CancelFunc
	calls   atomic.Int32
}

func campaign(t *testing.T, client *fake.Clientset, le LeaderElection) *candidate {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{r: testRunner(client), running: make(chan struct{}), ranOut: make(chan struct{}), done: make(chan error, 1), cancel: cancel}
	t.Cleanup(func() {
		cancel()
		<-c.done
	})
	go func() {
		c.done <- c.r.lead(ctx, le, func(ctx context.Context) error {
			if c.calls.Add(1) == 1 {
				close(c.running)
			}
			<-ctx.Done()
			close(c.ranOut)
			return nil
		})
	}()
	return c
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: not after 30s", what)
	}
}

// leaseGets counts the candidates' reads of the Lease so far.
func leaseGets(client *fake.Clientset) int {
	n := 0
	for _, a := range client.Actions() {
		if a.GetResource().Resource == "leases" && a.GetVerb() == "get" {
			n++
		}
	}
	return n
}

func TestLeadOneReplicaAtATime(t *testing.T) {
	client := fake.NewClientset()
	a := campaign(t, client, fastElection("a"))
	waitClosed(t, a.running, "the first candidate leading")
	if got := a.r.role.Load(); got != roleLeader {
		t.Errorf("leader's role %v, want %s", got, roleLeader)
	}
	lease, err := client.CoordinationV1().Leases("kip-system").Get(context.Background(), "kip-vk", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the Lease kip-system/kip-vk: %v", err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "a" {
		t.Fatalf("Lease holder %v, want a", lease.Spec.HolderIdentity)
	}

	// The second candidate reads the Lease over and over and never runs the node.
	b := campaign(t, client, fastElection("b"))
	before := leaseGets(client)
	for leaseGets(client) < before+10 {
		time.Sleep(20 * time.Millisecond)
	}
	if b.calls.Load() != 0 {
		t.Fatal("the second candidate ran the node while the first held the Lease")
	}
	if got := b.r.role.Load(); got != roleFollower {
		t.Errorf("follower's role %v, want %s", got, roleFollower)
	}

	// The leader stops (SIGTERM): its node stops first, then it gives the Lease back, and the
	// follower takes over.
	a.cancel()
	if err := <-a.done; err != nil {
		t.Errorf("the leader stopped with %v, want nil", err)
	}
	a.done <- nil // for the cleanup
	waitClosed(t, a.ranOut, "the old leader's node stopping")
	waitClosed(t, b.running, "the follower taking over")
	lease, err = client.CoordinationV1().Leases("kip-system").Get(context.Background(), "kip-vk", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "b" {
		t.Errorf("Lease holder %v after the takeover, want b", lease.Spec.HolderIdentity)
	}
	if lease.Spec.LeaseTransitions == nil || *lease.Spec.LeaseTransitions < 1 {
		t.Errorf("Lease transitions %v after a takeover, want at least 1", lease.Spec.LeaseTransitions)
	}
}

func TestLeadLostLease(t *testing.T) {
	client := fake.NewClientset()
	a := campaign(t, client, fastElection("a"))
	waitClosed(t, a.running, "leading")
	// The API server stops accepting the leader's renewals.
	client.PrependReactor("update", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("injected: the API server is unreachable")
	})
	var err error
	select {
	case err = <-a.done:
	case <-time.After(30 * time.Second):
		t.Fatal("lead did not return after the Lease could not be renewed")
	}
	a.done <- nil // for the cleanup
	if !errors.Is(err, ErrLostLease) {
		t.Fatalf("lead returned %v, want ErrLostLease", err)
	}
	if !strings.Contains(err.Error(), "kip-system/kip-vk") {
		t.Errorf("error %q does not name the Lease", err)
	}
	waitClosed(t, a.ranOut, "the node's context being cancelled")
}

func TestLeadStoppedWhileFollowing(t *testing.T) {
	client := fake.NewClientset()
	a := campaign(t, client, fastElection("a"))
	waitClosed(t, a.running, "leading")
	b := campaign(t, client, fastElection("b"))
	before := leaseGets(client)
	for leaseGets(client) < before+3 {
		time.Sleep(20 * time.Millisecond)
	}
	b.cancel()
	if err := <-b.done; err != nil {
		t.Errorf("a follower stopped with %v, want nil", err)
	}
	b.done <- nil
	if b.calls.Load() != 0 {
		t.Error("a follower stopped before leading ran the node")
	}
	lease, err := client.CoordinationV1().Leases("kip-system").Get(context.Background(), "kip-vk", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "a" {
		t.Errorf("a follower's exit changed the Lease holder to %v", lease.Spec.HolderIdentity)
	}
}

func TestLeadBadTimings(t *testing.T) {
	le := fastElection("a")
	le.RenewDeadline = 2 * time.Second // not less than the lease duration
	err := testRunner(fake.NewClientset()).lead(context.Background(), le, func(context.Context) error {
		t.Error("ran the node with invalid leader election timings")
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "kip-system/kip-vk") {
		t.Errorf("lead with renewDeadline > leaseDuration: %v, want an error naming the Lease", err)
	}
}

func TestLeaderElectionDefaults(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "")
	os.Unsetenv("POD_NAMESPACE")
	d := LeaderElection{}.withDefaults()
	if d.Namespace != "kube-system" || d.LeaseDuration != 10*time.Second || d.RenewDeadline != 7*time.Second || d.RetryPeriod != time.Second {
		t.Errorf("defaults %+v", d)
	}
	host, _ := os.Hostname()
	if !strings.HasPrefix(d.Identity, host+"_") || len(d.Identity) != len(host)+9 {
		t.Errorf("identity %q, want %s_ and 8 random characters", d.Identity, host)
	}
	if again := (LeaderElection{}).withDefaults(); again.Identity == d.Identity {
		t.Errorf("two processes would share the identity %q", d.Identity)
	}
	t.Setenv("POD_NAMESPACE", "kip")
	if got := (LeaderElection{}).withDefaults().Namespace; got != "kip" {
		t.Errorf("namespace with POD_NAMESPACE=kip: %q", got)
	}
	if got := (LeaderElection{Namespace: "ops"}).withDefaults().Namespace; got != "ops" {
		t.Errorf("an explicit namespace became %q", got)
	}
	// A follower takes over within 15 s of the leader's last renewal (the design note's bound).
	if worst := d.LeaseDuration + time.Duration(2*2.2*float64(d.RetryPeriod)); worst > 15*time.Second {
		t.Errorf("worst-case takeover %v with the defaults, over 15s", worst)
	}
	if LeaseName("vk") != "kip-vk" {
		t.Errorf("LeaseName(vk) = %q", LeaseName("vk"))
	}
}

func TestHealthz(t *testing.T) {
	r := testRunner(fake.NewClientset())
	srv := httptest.NewServer(r.healthHandler())
	defer srv.Close()
	for _, role := range []string{roleStandalone, roleFollower, roleLeader} {
		r.setRole(role)
		resp, err := srv.Client().Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok "+role+"\n" {
			t.Errorf("GET /healthz as %s: %d %q", role, resp.StatusCode, body)
		}
	}
	for _, path := range []string{"/", "/pods", "/exec/ns/pod/c", "/containerLogs/ns/pod/c"} {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("GET %s on the health listener: %d, want 404", path, resp.StatusCode)
		}
	}
}
