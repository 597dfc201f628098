//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/kipnode"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// TestLeaderElection runs two replicas of the node (`kip run --leader-elect`, the same config,
// so the same node name and the same local backend state, as two pods of a Deployment on one
// host would), SIGKILLs the leader in the middle of a burst of 20 pods, and checks that the
// follower, which served nothing until then, takes the Lease, adopts every cell and runs every
// pod: 20 pods Running on 20 cells, one each, and those that ran before the kill kept theirs;
// no pod was ever Failed or had a second cell, and the takeover came within the 15 s the
// design promises (the measured time is logged).
func TestLeaderElection(t *testing.T) {
	e := need(t)
	ctx := context.Background()
	const burst = 20
	leaseNS, leaseName := kipnode.DefaultLeaseNamespace, kipnode.LeaseName(e.NodeName)

	// The suite's kip (no leader election) steps aside and comes back for the tests after.
	if err := e.Kip.Stop(); err != nil {
		t.Fatal(err)
	}
	args := []string{"--leader-elect", "--leader-elect-namespace=" + leaseNS}
	a, b := e.Kip.Replica("replica-a", args...), e.Kip.Replica("replica-b", args...)
	t.Cleanup(func() {
		for _, k := range []*framework.Kip{a, b} {
			if err := k.Stop(); err != nil {
				t.Error(err)
			}
		}
		_ = e.Client.CoordinationV1().Leases(leaseNS).Delete(ctx, leaseName, metav1.DeleteOptions{})
		if err := e.Kip.Start(ctx); err != nil {
			t.Errorf("restarting the suite's kip: %v", err)
		}
	})
	ns := e.Namespace(t)
	w := watchBurst(ctx, t, e, ns)

	// The first replica leads at once: no one else holds the Lease.
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	lease, err := e.Client.CoordinationV1().Leases(leaseNS).Get(ctx, leaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the leader's Lease %s/%s: %v", leaseNS, leaseName, err)
	}
	leaderID := holder(lease)
	if leaderID == "" || !strings.Contains(a.Log(), "identity="+leaderID) {
		t.Fatalf("Lease holder %q is not the first replica; its log:\n%s", leaderID, a.LogTail(20))
	}

	// The second replica follows: it sees the leader and starts nothing (no backend, no
	// node, no kubelet API: it would fail to bind the leader's address anyway).
	if err := b.Launch(); err != nil {
		t.Fatal(err)
	}
	if err := waitLog(ctx, b, "the node is led by another replica", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if log := b.Log(); strings.Contains(log, "starting kip") || strings.Contains(log, "recovered cells") {
		t.Fatalf("the follower started the node while the other replica led:\n%s", b.LogTail(20))
	}
	followerID := identity(b.Log())
	if followerID == "" || followerID == leaderID {
		t.Fatalf("follower identity %q (leader %q); log:\n%s", followerID, leaderID, b.LogTail(20))
	}
	t.Logf("leader %s, follower %s", leaderID, followerID)

	// The burst: half the pods, the leader killed once the first runs (others are still
	// being launched), then the other half while no one leads.
	name := func(i int) string { return fmt.Sprintf("burst-%02d", i) }
	create := func(from, to int) {
		var wg sync.WaitGroup
		for i := from; i < to; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := framework.Pod(name(i), framework.Busybox("main", "echo hello-"+name(i)+"; trap 'exit 0' TERM; while true; do sleep 1; done"))
				if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
					t.Errorf("creating pod %s: %v", name(i), err)
				}
			}()
		}
		wg.Wait()
	}
	create(0, burst/2)
	if _, err := e.WaitForPod(ctx, ns, name(0), podTimeout, running); err != nil {
		t.Fatal(err)
	}
	// Every cell launched by now (of a Running pod or one still starting) must be adopted as
	// it is by the next leader: same pod, same cell.
	pods, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nRunning := 0
	for _, p := range pods.Items {
		if running(&p) {
			nRunning++
		}
	}
	atKill := map[string]string{} // pod name -> cell ID
	all, err := e.Cells(ctx, map[string]string{cloud.TagPodNamespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range all {
		atKill[c.Tags[cloud.TagPodName]] = c.ID
	}
	t.Logf("killing the leader with %d of %d pods created, %d Running, %d cells", burst/2, burst, nRunning, len(all))
	killed := time.Now()
	a.Kill()
	create(burst/2, burst)

	// The follower takes over: from the Lease, how long after the kill.
	lctx, lcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer lcancel()
	ev, err := framework.Until(lctx, e.Client.CoordinationV1().Leases(leaseNS), fields.OneTermEqualSelector("metadata.name", leaseName),
		func(ev watch.Event) (bool, error) {
			l, ok := ev.Object.(*coordv1.Lease)
			return ok && holder(l) == followerID, nil
		})
	if err != nil {
		t.Fatalf("the follower never took the Lease: %v; its log:\n%s", err, b.LogTail(30))
	}
	lease = ev.Object.(*coordv1.Lease)
	acquired := lease.Spec.AcquireTime.Time
	// The bound is the configured one (lease duration + 2 × 2.2 × retry period after the
	// leader's last renewal, docs/design/leader-election.md), plus API round trips on this
	// machine; it is logged, not asserted.
	t.Logf("the follower acquired the Lease %v after the kill (acquireTime %s, transitions %d; bound by configuration %v after the last renewal)",
		acquired.Sub(killed).Round(10*time.Millisecond), acquired.Format(time.RFC3339Nano), ptrOr(lease.Spec.LeaseTransitions),
		kipnode.DefaultLeaseDuration+time.Duration(2*2.2*float64(kipnode.DefaultRetryPeriod)))
	// The promise (issue 13) is a takeover within 15 s of the leader's death; the
	// configuration bounds it at about 14.4 s after the last renewal. Nothing tighter is
	// asserted.
	if took := acquired.Sub(killed); took > 15*time.Second {
		t.Errorf("the follower took the Lease %v after the leader was killed, more than 15 s", took.Round(10*time.Millisecond))
	}
	if lease.Spec.LeaseTransitions == nil || *lease.Spec.LeaseTransitions < 1 {
		t.Errorf("Lease transitions %v after a takeover", lease.Spec.LeaseTransitions)
	}

	// Every pod runs, on one cell each; the pods that ran before kept their cells.
	for i := 0; i < burst; i++ {
		p, err := e.WaitForPod(ctx, ns, name(i), 2*podTimeout, running)
		if err != nil {
			t.Errorf("pod %s after the takeover: %v; %s\nevents:\n%s", name(i), err, framework.DescribePod(p), e.EventsFor(ctx, ns, name(i)))
		}
	}
	if t.Failed() {
		t.Fatalf("new leader's log:\n%s", b.LogTail(40))
	}
	all, err = e.Cells(ctx, map[string]string{cloud.TagPodNamespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	perPod := map[string][]string{}
	for _, c := range all {
		perPod[c.Tags[cloud.TagPodName]] = append(perPod[c.Tags[cloud.TagPodName]], c.ID)
	}
	if len(all) != burst {
		t.Errorf("%d cells for %d pods: %v", len(all), burst, perPod)
	}
	for i := 0; i < burst; i++ {
		if ids := perPod[name(i)]; len(ids) != 1 {
			t.Errorf("pod %s has %d cells: %v", name(i), len(ids), ids)
		}
	}
	for pod, id := range atKill {
		if ids := perPod[pod]; len(ids) != 1 || ids[0] != id {
			t.Errorf("pod %s had cell %s at the kill, %v after: relaunched instead of adopted", pod, id, ids)
		}
	}
	t.Logf("%d pods Running on %d cells; the %d cells launched before the kill adopted as they were", burst, len(all), len(atKill))
	w.check(t, burst)
	checkOneCellEach(ctx, t, e, ns, burst)
	if at, ok := logTime(b.Log(), "kip is ready"); ok {
		t.Logf("the new leader was ready (node Ready, kubelet API serving) %v after the kill", at.Sub(killed).Round(10*time.Millisecond))
	}

	// The new leader serves the kubelet API: logs of a pod launched before the kill.
	out, err := e.Kubectl(ctx, "-n", ns, "logs", name(0))
	if err != nil || !strings.Contains(out, "hello-"+name(0)) {
		t.Errorf("kubectl logs %s through the new leader: %q, %v", name(0), out, err)
	}

	// The new leader terminates every cell once the pods are gone: nothing leaks.
	if err := e.Client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if cells, err := e.WaitForCells(ctx, map[string]string{cloud.TagPodNamespace: ns}, 2*time.Minute, framework.NoCells); err != nil {
		t.Errorf("cells of the deleted pods left: %v", err)
		for _, c := range cells {
			t.Logf("left: %s %v", c.ID, c.Tags)
		}
	}
	if dirs, err := cellDirsOf(e, ns); err != nil || len(dirs) > 0 {
		t.Errorf("cell directories of the deleted pods left: %v (%v)", dirs, err)
	}
}

func running(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning }

func holder(l *coordv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func ptrOr(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}

// identity is the holder identity a replica logged when it started campaigning.
func identity(log string) string {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "waiting to lead the node") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if id, ok := strings.CutPrefix(f, "identity="); ok {
				return id
			}
		}
	}
	return ""
}

// logTime is the time of the first line of log with msg, as kip's text log writes it.
func logTime(log, msg string) (time.Time, bool) {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `msg="`+msg+`"`) {
			continue
		}
		ts, ok := strings.CutPrefix(strings.Fields(line)[0], "time=")
		if !ok {
			continue
		}
		if at, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			return at, true
		}
	}
	return time.Time{}, false
}

// waitLog waits for text in k's log (kip logs what a follower sees and nothing else shows
// it), or for k to exit.
func waitLog(ctx context.Context, k *framework.Kip, text string, timeout time.Duration) error {
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		if err := k.Exited(); err != nil {
			return false, err
		}
		return strings.Contains(k.Log(), text), nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %q in %s: %w; log:\n%s", text, k.LogPath(), err, k.LogTail(20))
	}
	return nil
}
