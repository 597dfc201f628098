package local

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/logs"

	"github.com/kip-dev/kip/internal/agent/image"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/registry"
)

// pullResult is what the stand-in agent's /pull answers: how long the pull took from inside
// the cell and a trace of its connections (httptrace events and go-containerregistry's
// warnings, with milliseconds since the pull began).
type pullResult struct {
	Millis float64 `json:"millis"`
	// ConnectMillis is the longest TCP connect of the pull.
	ConnectMillis float64 `json:"connectMillis"`
	Err           string  `json:"err,omitempty"`
	// RootFS is where the image was unpacked.
	RootFS string   `json:"rootfs,omitempty"`
	Trace  []string `json:"trace"`
}

// standinPull pulls ref into a fresh image store under stateDir, as kip-cell does, with its
// images in shared when that is set, tracing every connection the pull makes.
func standinPull(stateDir, shared, ref, insecure string) pullResult {
	var mu sync.Mutex
	var trace []string
	start := time.Now()
	note := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		trace = append(trace, fmt.Sprintf("%7.1fms ", ms(time.Since(start)))+fmt.Sprintf(format, args...))
	}
	connects := map[string]time.Time{}
	var longest time.Duration
	var warn bytes.Buffer
	logs.Warn.SetOutput(&warn)
	ct := &httptrace.ClientTrace{
		GetConn:  func(hp string) { note("get conn %s", hp) },
		DNSStart: func(i httptrace.DNSStartInfo) { note("dns start %s", i.Host) },
		DNSDone:  func(i httptrace.DNSDoneInfo) { note("dns done %v", i.Err) },
		ConnectStart: func(n, a string) {
			note("connect start %s", a)
			mu.Lock()
			connects[a] = time.Now()
			mu.Unlock()
		},
		ConnectDone: func(n, a string, err error) {
			note("connect done %s err=%v", a, err)
			mu.Lock()
			longest = max(longest, time.Since(connects[a]))
			mu.Unlock()
		},
		TLSHandshakeStart: func() {
			note("tls handshake start")
		},
		TLSHandshakeDone: func(_ tls.ConnectionState, err error) { note("tls handshake done err=%v", err) },
		GotConn: func(i httptrace.GotConnInfo) {
			note("got conn %s reused=%v idle=%v", i.Conn.LocalAddr(), i.Reused, i.IdleTime)
		},
		WroteRequest:         func(i httptrace.WroteRequestInfo) { note("wrote request err=%v", i.Err) },
		GotFirstResponseByte: func() { note("first response byte") },
	}
	ctx := httptrace.WithClientTrace(context.Background(), ct)
	s, err := image.NewStore(image.Config{Root: filepath.Join(stateDir, "images"), Shared: shared, Insecure: []string{insecure}})
	var img *image.Image
	if err == nil {
		img, err = s.Pull(ctx, ref, nil)
	}
	r := pullResult{Millis: ms(time.Since(start))}
	if img != nil {
		r.RootFS = img.RootFS
	}
	if err != nil {
		r.Err = err.Error()
	}
	for _, l := range strings.Split(strings.TrimSpace(warn.String()), "\n") {
		if l != "" {
			note("ggcr: %s", l)
		}
	}
	mu.Lock()
	r.Trace = trace
	r.ConnectMillis = ms(longest)
	mu.Unlock()
	return r
}

// BenchmarkCellPull has cells pull an image from a registry on the bridge address as soon as
// their agent answers, as kip-cell does for a pod, and reports the pull's p50/p99 (timed
// inside the cell, with a fresh store and connection pool each) over max(b.N, 50) cells,
// the longest TCP connect of a pull (connect-p99-ms; connects-over-900ms counts pulls that
// lost a SYN), Launch until the agent answers (ready-p50/p99-ms), the host's whole call
// to the agent that pulls (call-p50/p99-ms: the pull plus getting the answer back), and
// prints the traces of the slowest pulls.
//
//	burst:      10 cells at a time, each terminated after its pull (a burst of pods)
//	sequential: one cell at a time, the previous one terminated while the next one boots
//	            and pulls (pods started one after another, each deleted once running)
//	cached:     as sequential, on the host's shared image store (Config.ImageStore) that
//	            one cell filled before: the manifest fetch alone, as kip-cell's pulls of an
//	            image the host has
func BenchmarkCellPull(b *testing.B) {
	b.Run("burst", func(b *testing.B) { benchCellPull(b, 10, false, false) })
	b.Run("sequential", func(b *testing.B) { benchCellPull(b, 1, true, false) })
	b.Run("cached", func(b *testing.B) { benchCellPull(b, 1, true, true) })
}

func benchCellPull(b *testing.B, parallel int, terminateLater, shared bool) {
	e := newEnv(b)
	ctx := context.Background()
	reg, err := registry.Start(e.backend().BridgeIP().String() + ":0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = reg.Close() })
	if err := registry.SeedBusybox(ctx, reg.Host(), reg.Auth(), "library/foo"); err != nil {
		b.Fatal(err)
	}
	ref := reg.Host() + "/library/foo"
	c := e.cloud()
	query := "/pull?ref=" + ref + "&insecure=" + reg.Host()
	if shared {
		query += "&shared=1"
		warm := e.launch(c, "pull-warm-"+randTag(b), "local.nano")
		var r pullResult
		if err := getJSONTimeout(warm.PrivateIP, query, &r); err != nil || r.Err != "" {
			b.Fatalf("filling the image store: %v %s", err, r.Err)
		}
		if err := c.Terminate(ctx, warm.ID); err != nil {
			b.Fatal(err)
		}
	}
	n := max(b.N, benchCells)
	tag := randTag(b)
	results := make([]pullResult, n)
	readies := make([]time.Duration, n) // Launch → the agent answers
	calls := make([]time.Duration, n)   // the host's GET /pull, as kip's calls to an agent
	sem := make(chan struct{}, parallel)
	var wg, terminating sync.WaitGroup
	b.ResetTimer()
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id := fmt.Sprintf("pull-%s-%d", tag, i)
			start := time.Now()
			in, err := c.Launch(ctx, cloud.LaunchSpec{CellID: id, ClientToken: id, InstanceType: "local.nano", BootstrapData: []byte("{}")})
			if err != nil {
				results[i].Err = fmt.Sprintf("Launch: %v", err)
				return
			}
			defer func() {
				if !terminateLater {
					_ = c.Terminate(ctx, in.ID)
					return
				}
				terminating.Add(1)
				go func() {
					defer terminating.Done()
					_ = c.Terminate(ctx, in.ID)
				}()
			}()
			e.waitHealthy(in.PrivateIP)
			readies[i] = time.Since(start)
			callStart := time.Now()
			if err := getJSONTimeout(in.PrivateIP, query, &results[i]); err != nil {
				results[i].Err = err.Error()
			}
			calls[i] = time.Since(callStart)
		}()
	}
	wg.Wait()
	b.StopTimer()
	terminating.Wait()
	var ds, cs []time.Duration
	slow := 0
	for i, r := range results {
		if r.Err != "" {
			b.Errorf("cell %d: %s", i, r.Err)
			continue
		}
		ds = append(ds, time.Duration(r.Millis*float64(time.Millisecond)))
		cs = append(cs, time.Duration(r.ConnectMillis*float64(time.Millisecond)))
		if r.ConnectMillis >= 900 { // a lost SYN costs at least the 1 s initial RTO
			slow++
		}
	}
	if len(ds) == 0 {
		return
	}
	b.ReportMetric(float64(len(ds)), "pulls")
	b.ReportMetric(ms(percentile(ds, 50)), "pull-p50-ms")
	b.ReportMetric(ms(percentile(ds, 99)), "pull-p99-ms")
	b.ReportMetric(ms(percentile(ds, 100)), "pull-max-ms")
	b.ReportMetric(ms(percentile(cs, 99)), "connect-p99-ms")
	b.ReportMetric(float64(slow), "connects-over-900ms")
	b.ReportMetric(ms(percentile(readies, 50)), "ready-p50-ms")
	b.ReportMetric(ms(percentile(readies, 99)), "ready-p99-ms")
	b.ReportMetric(ms(percentile(calls, 50)), "call-p50-ms")
	b.ReportMetric(ms(percentile(calls, 99)), "call-p99-ms")
	sort.Slice(results, func(i, j int) bool { return results[i].Millis > results[j].Millis })
	for _, r := range results[:min(3, len(results))] {
		// Printed, not logged: the benchmark log keeps only a few lines.
		fmt.Fprintf(os.Stderr, "pull took %.0f ms:\n  %s\n", r.Millis, strings.Join(r.Trace, "\n  "))
	}
}

// getJSONTimeout is getJSON without the 2 s client timeout (a pull may take longer).
func getJSONTimeout(ip, path string, v any) error {
	resp, err := http.Get("http://" + ip + fmt.Sprintf(":%d", standinPort) + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
