package svcpush

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/pki"
	"github.com/kip-dev/kip/internal/servicetable"
)

// countingBody counts the bytes of a request body as the handler reads it.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// BenchmarkServiceUpdate: 1,000 Services (one port, three endpoints each) in a fake API
// server, the real service table over informers, and 100 cells, each an in-memory agent that
// applies tables and deltas behind the real cellapi.Handler over mutual TLS (httptest),
// reached with the real cellapi.Client. After every cell holds the full table, it changes
// one EndpointSlice at a time and reports the time from the change to every cell's agent
// acknowledging the version that carries it (p50/p99), the process CPU time per update
// (kip's side plus the in-process agents, TLS and fake API server: an upper bound), the
// request bytes sent to all cells per update, and how many puts each cell got for a burst of
// 50 back-to-back slice changes.
func BenchmarkServiceUpdate(b *testing.B) {
	const services, cells, updates, burst = 1000, 100, 100, 50
	objs := make([]runtime.Object, 0, 2*services)
	slices := make([]*discoveryv1.EndpointSlice, services)
	for i := range services {
		name := fmt.Sprintf("svc-%d", i)
		ip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
		objs = append(objs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
				Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
		})
		s := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "bench", Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		}
		for j := range 3 {
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.%d.%d.%d", 1+j, i/250, i%250+1)}})
		}
		slices[i] = s
		objs = append(objs, s)
	}
	client := fake.NewClientset(objs...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory := informers.NewSharedInformerFactory(client, 0)
	quiet := slog.New(slog.DiscardHandler)
	table, err := servicetable.New(servicetable.Config{
		Services: factory.Core().V1().Services(), EndpointSlices: factory.Discovery().V1().EndpointSlices(),
		NodeName: "kip", Log: quiet,
	})
	if err != nil {
		b.Fatal(err)
	}

	// The cells: one certificate for all (the agents' names are not what is measured).
	ca, err := pki.NewCA("bench")
	if err != nil {
		b.Fatal(err)
	}
	srvCert, srvKey, err := ca.Issue(pki.LeafSpec{CommonName: "cell", DNSNames: []string{"cell"}, Server: true})
	if err != nil {
		b.Fatal(err)
	}
	cliCert, cliKey, err := ca.Issue(pki.LeafSpec{CommonName: "kip", Client: true})
	if err != nil {
		b.Fatal(err)
	}
	var (
		bytes  atomic.Int64
		puts   atomic.Int64
		ackMu  sync.Mutex
		ackCnd = sync.NewCond(&ackMu)
	)
	agents := make([]*programmer, cells)
	running := &fakeCells{cells: map[string]cellapi.Agent{}}
	for i := range cells {
		p := newProgrammer()
		agents[i] = p
		h := cellapi.Handler(p, cellapi.HandlerOptions{})
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = countingBody{r.Body, &bytes}
			h.ServeHTTP(w, r)
			puts.Add(1)
			ackMu.Lock()
			ackCnd.Broadcast()
			ackMu.Unlock()
		}))
		if srv.TLS, err = pki.ServerTLS(ca.CertPEM, srvCert, srvKey); err != nil {
			b.Fatal(err)
		}
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		srv.StartTLS()
		defer srv.Close()
		ctls, err := pki.ClientTLS(ca.CertPEM, cliCert, cliKey, "cell")
		if err != nil {
			b.Fatal(err)
		}
		c := cellapi.NewClient(srv.URL, ctls)
		defer c.Close()
		running.cells[fmt.Sprintf("cell-%d", i)] = c
	}
	ctrl := New(Options{Log: quiet}, table, running)
	factory.Start(ctx.Done())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); table.Run(ctx) }()
	go func() { defer wg.Done(); ctrl.Run(ctx) }()
	defer wg.Wait()
	defer cancel()

	// waitAll waits until every agent holds version v or later.
	waitAll := func(v uint64) {
		ackMu.Lock()
		defer ackMu.Unlock()
		for {
			all := true
			for _, p := range agents {
				if got, _, _ := p.state(); got < v {
					all = false
					break
				}
			}
			if all {
				return
			}
			ackCnd.Wait()
		}
	}
	// nextVersion waits for a version after prev and returns it.
	nextVersion := func(prev uint64) uint64 {
		for {
			if v := table.Version(); v > prev {
				return v
			}
			time.Sleep(20 * time.Microsecond)
		}
	}
	if err := table.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	waitAll(table.Version())
	if n := table.Len(); n != services {
		b.Fatalf("the table holds %d Services, want %d", n, services)
	}

	change := func(i, round int) {
		s := slices[i%services].DeepCopy()
		s.Endpoints[0].Addresses = []string{fmt.Sprintf("10.200.%d.%d", round%250, i%250+1)}
		slices[i%services] = s
		if _, err := client.DiscoveryV1().EndpointSlices("bench").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	var lat []time.Duration
	var cpu time.Duration
	var sent int64
	b.ResetTimer()
	for n := range b.N {
		bytes.Store(0)
		cpu0 := cpuTime()
		for u := range updates {
			prev := table.Version()
			start := time.Now()
			change(u*7, n*updates+u)
			v := nextVersion(prev)
			waitAll(v)
			lat = append(lat, time.Since(start))
		}
		cpu += cpuTime() - cpu0
		sent += bytes.Load()
	}
	b.StopTimer()

	// A burst: many slice changes at once become few puts per cell.
	puts.Store(0)
	prev := table.Version()
	for u := range burst {
		change(u*13+1, 1000+u)
	}
	// The last change is in once the table's newest version carries its endpoint.
	last := fmt.Sprintf("10.200.%d.%d", (1000+burst-1)%250, ((burst-1)*13+1)%250+1)
	for {
		v := nextVersion(prev)
		if hasEndpoint(table.Since(0), last) {
			waitAll(v)
			break
		}
		prev = v
	}

	total := b.N * updates
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(total), "cpu-ms/update")
	b.ReportMetric(float64(sent)/float64(total), "bytes/update")
	b.ReportMetric(float64(puts.Load())/cells, "puts/cell/burst50")
	b.Logf("%d Services, %d cells: slice change → all cells acked p50 %v p99 %v over %d updates; %.2f ms CPU and %d request bytes per update; a burst of %d changes took %.1f puts per cell",
		services, cells, pct(0.5), pct(0.99), total, float64(cpu.Microseconds())/1000/float64(total), sent/int64(total), burst, float64(puts.Load())/cells)
}

func hasEndpoint(t *cellapi.ServiceTable, ip string) bool {
	for _, s := range t.Services {
		for _, p := range s.Ports {
			for _, e := range p.Endpoints {
				if e.IP == ip {
					return true
				}
			}
		}
	}
	return false
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
