package servicetable

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/kip-dev/kip/internal/cellapi"
)

// fixture is a Table over a fake clientset's informers, running.
type fixture struct {
	t      *testing.T
	client *fake.Clientset
	table  *Table
	rec    *record.FakeRecorder
	ctx    context.Context
}

func newFixture(t *testing.T, maxTombstones int, objs ...any) *fixture {
	t.Helper()
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f := &fixture{t: t, client: client, rec: record.NewFakeRecorder(100), ctx: ctx}
	for _, o := range objs {
		f.create(o)
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	table, err := New(Config{
		Services:       factory.Core().V1().Services(),
		EndpointSlices: factory.Discovery().V1().EndpointSlices(),
		NodeName:       "kip",
		Events:         f.rec,
		Clock:          testingclock.NewFakeClock(time.UnixMicro(1000)),
		MaxTombstones:  maxTombstones,
		Log:            slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.table = table
	factory.Start(ctx.Done())
	done := make(chan struct{})
	go func() { defer close(done); table.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; factory.Shutdown() })
	wctx, wcancel := context.WithTimeout(ctx, wait.ForeverTestTimeout)
	defer wcancel()
	if err := table.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) create(o any) {
	f.t.Helper()
	var err error
	switch o := o.(type) {
	case *corev1.Service:
		_, err = f.client.CoreV1().Services(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
	case *discoveryv1.EndpointSlice:
		_, err = f.client.DiscoveryV1().EndpointSlices(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
	}
	if err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) updateSlice(s *discoveryv1.EndpointSlice) {
	f.t.Helper()
	if _, err := f.client.DiscoveryV1().EndpointSlices(s.Namespace).Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) deleteService(name string) {
	f.t.Helper()
	if err := f.client.CoreV1().Services("ns").Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

// waitTable waits until the full table satisfies cond and returns it.
func (f *fixture) waitTable(what string, cond func(*cellapi.ServiceTable) bool) *cellapi.ServiceTable {
	f.t.Helper()
	var got *cellapi.ServiceTable
	err := wait.PollUntilContextTimeout(f.ctx, time.Millisecond, wait.ForeverTestTimeout, true, func(context.Context) (bool, error) {
		got = f.table.Since(0)
		return cond(got), nil
	})
	if err != nil {
		f.t.Fatalf("waiting for %s: last table %+v", what, got)
	}
	return got
}

func keys(t *cellapi.ServiceTable) string {
	var ks []string
	for _, s := range t.Services {
		ks = append(ks, s.Key())
	}
	return strings.Join(ks, ",")
}

func has(t *cellapi.ServiceTable, key string) bool {
	for _, s := range t.Services {
		if s.Key() == key {
			return true
		}
	}
	return false
}

func endpointsOf(t *cellapi.ServiceTable, key string) []cellapi.Endpoint {
	for _, s := range t.Services {
		if s.Key() == key && len(s.Ports) > 0 {
			return s.Ports[0].Endpoints
		}
	}
	return nil
}

func TestTableFromInformers(t *testing.T) {
	v4 := discoveryv1.AddressTypeIPv4
	http := []discoveryv1.EndpointPort{sport("http", 8080, corev1.ProtocolTCP)}
	headless := svc("db", port("pg", 5432))
	headless.Spec.ClusterIP, headless.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
	f := newFixture(t, 0,
		svc("web", port("http", 80)), slice("web-1", "web", v4, http, ep("10.0.0.1")),
		svc("api", port("http", 80)), slice("api-1", "api", v4, http, ep("10.0.1.1")),
		headless,
	)
	full := f.table.Since(0)
	if full.Base != 0 || keys(full) != "ns/api,ns/web" {
		t.Fatalf("first table: base %d, services %s; want a full table of ns/api,ns/web (headless left out)", full.Base, keys(full))
	}
	if full.Version <= 1000 {
		t.Errorf("first version %d, want more than the clock's microseconds (1000)", full.Version)
	}
	v1 := full.Version

	// A slice update changes one Service: the delta from v1 carries only it.
	s := slice("web-1", "web", v4, http, ep("10.0.0.1"), ep("10.0.0.2"))
	f.updateSlice(s)
	f.waitTable("web's new endpoint", func(t *cellapi.ServiceTable) bool { return len(endpointsOf(t, "ns/web")) == 2 })
	d := f.table.Since(v1)
	if d.Base != v1 || d.Version <= v1 || keys(d) != "ns/web" || len(d.Deleted) != 0 {
		t.Errorf("delta from %d: base %d version %d services %s deleted %v; want base %d, only ns/web", v1, d.Base, d.Version, keys(d), d.Deleted, v1)
	}
	v2 := d.Version

	// An update that changes nothing the cells program makes no version.
	s.Labels["unrelated"] = "x"
	f.updateSlice(s)
	f.create(svc("late", port("http", 80))) // a later change, to know the first was processed
	f.waitTable("ns/late", func(t *cellapi.ServiceTable) bool { return len(t.Services) == 3 })
	d = f.table.Since(v2)
	if keys(d) != "ns/late" {
		t.Errorf("delta after a no-op slice update and a new Service: %s, want ns/late only", keys(d))
	}

	// Deleting a Service: a tombstone in deltas from before, absent from the full table.
	f.deleteService("api")
	f.waitTable("ns/api gone", func(t *cellapi.ServiceTable) bool { return !has(t, "ns/api") })
	d = f.table.Since(v2)
	if strings.Join(d.Deleted, ",") != "ns/api" || keys(d) != "ns/late" {
		t.Errorf("delta from %d: services %s deleted %v; want ns/late and deleted ns/api", v2, keys(d), d.Deleted)
	}
	if got := f.table.Since(0); got.Base != 0 || len(got.Deleted) != 0 || keys(got) != "ns/late,ns/web" {
		t.Errorf("full table after the delete: base %d services %s deleted %v", got.Base, keys(got), got.Deleted)
	}
	cur := f.table.Version()
	if got := f.table.Since(cur); got.Base != cur || len(got.Services)+len(got.Deleted) != 0 {
		t.Errorf("delta from the current version: %+v, want empty", got)
	}
	for _, v := range []uint64{999, cur + 1} {
		if got := f.table.Since(v); got.Base != 0 || keys(got) != "ns/late,ns/web" {
			t.Errorf("Since(%d) (before this table / from the future): base %d services %s, want the full table", v, got.Base, keys(got))
		}
	}

	// Recreated: it is back, no longer deleted.
	f.create(svc("api", port("http", 80)))
	f.waitTable("ns/api back", func(t *cellapi.ServiceTable) bool { return has(t, "ns/api") })
	if d := f.table.Since(v2); len(d.Deleted) != 0 || keys(d) != "ns/api,ns/late" {
		t.Errorf("delta after recreating ns/api: services %s deleted %v", keys(d), d.Deleted)
	}
}

// Deltas from versions older than the oldest tombstone still remembered become full tables.
func TestTombstonesBoundDeltas(t *testing.T) {
	f := newFixture(t, 2, svc("a", port("http", 80)), svc("b", port("http", 80)), svc("c", port("http", 80)), svc("keep", port("http", 80)))
	v0 := f.table.Version()
	var after []uint64
	for _, n := range []string{"a", "b", "c"} {
		f.deleteService(n)
		f.waitTable(n+" gone", func(t *cellapi.ServiceTable) bool { return !has(t, "ns/"+n) })
		after = append(after, f.table.Version())
	}
	if got := f.table.Since(v0); got.Base != 0 || keys(got) != "ns/keep" {
		t.Errorf("Since(%d), before a forgotten deletion: base %d services %s, want the full table", v0, got.Base, keys(got))
	}
	if got := f.table.Since(after[0]); got.Base != after[0] || strings.Join(got.Deleted, ",") != "ns/b,ns/c" {
		t.Errorf("Since(%d), after it: base %d deleted %v, want a delta deleting ns/b,ns/c", after[0], got.Base, got.Deleted)
	}
}

// A Service kip cannot program gets one Warning Event naming the field; everything else keeps
// working, and it is not warned about again on every rebuild.
func TestBadServiceEvent(t *testing.T) {
	v4 := discoveryv1.AddressTypeIPv4
	bad := svc("bad", corev1.ServicePort{Name: "x", Protocol: "QUIC", Port: 443})
	f := newFixture(t, 0, bad, svc("web", port("http", 80)),
		slice("web-1", "web", v4, []discoveryv1.EndpointPort{sport("http", 8080, corev1.ProtocolTCP)}, ep("10.0.0.1")))
	if got := keys(f.table.Since(0)); got != "ns/web" {
		t.Errorf("table %s, want ns/web only", got)
	}
	select {
	case e := <-f.rec.Events:
		if !strings.HasPrefix(e, "Warning UnsupportedService") || !strings.Contains(e, "spec.ports[0].protocol") {
			t.Errorf("event %q, want a Warning naming spec.ports[0].protocol", e)
		}
	case <-time.After(wait.ForeverTestTimeout):
		t.Fatal("no event for the bad Service")
	}

	// More changes to the good Service: the bad one is not warned about again.
	f.updateSlice(slice("web-1", "web", v4, []discoveryv1.EndpointPort{sport("http", 8080, corev1.ProtocolTCP)}, ep("10.0.0.1"), ep("10.0.0.2")))
	f.waitTable("web's new endpoint", func(t *cellapi.ServiceTable) bool { return len(endpointsOf(t, "ns/web")) == 2 })
	select {
	case e := <-f.rec.Events:
		t.Errorf("unexpected event %q", e)
	default:
	}
}

func TestNewRequiresInformers(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "informers") {
		t.Errorf("New without informers: %v", err)
	}
}
