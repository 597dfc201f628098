package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cellapi"
)

// fakeIMDS is EC2's instance metadata service as far as spot notices go: IMDSv2 tokens
// (a GET without a valid one is refused with 401), instance-life-cycle and
// spot/instance-action (404 until a notice is set).
type fakeIMDS struct {
	lifeCycle string

	mu      sync.Mutex
	token   string
	tokens  int
	notice  string
	actions int // GETs of spot/instance-action with a valid token
	served  int // of them, those answered with the notice
	other   atomic.Int64
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut || r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			http.Error(w, "bad token request", http.StatusBadRequest)
			return
		}
		f.tokens++
		f.token = fmt.Sprintf("token-%d", f.tokens)
		fmt.Fprint(w, f.token)
		return
	}
	if r.Method != http.MethodGet || f.token == "" || r.Header.Get("X-aws-ec2-metadata-token") != f.token {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	switch r.URL.Path {
	case "/latest/meta-data/instance-life-cycle":
		f.other.Add(1)
		fmt.Fprint(w, f.lifeCycle)
	case "/latest/meta-data/spot/instance-action":
		f.actions++
		if f.notice == "" {
			http.NotFound(w, r)
			return
		}
		f.served++
		fmt.Fprint(w, f.notice)
	default:
		f.other.Add(1)
		http.NotFound(w, r)
	}
}

func (f *fakeIMDS) counts() (actions, served int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.actions, f.served
}

func (f *fakeIMDS) set(fn func(*fakeIMDS)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func bareAgent() *Agent {
	return &Agent{cfg: Config{CellID: "c-test"}, log: slog.New(slog.DiscardHandler), watchers: map[*watcher]struct{}{}}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWatchSpotReportsTheNoticeOnce(t *testing.T) {
	f := &fakeIMDS{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	a := bareAgent()
	a.publish(&cellapi.PodStatus{UID: "u1", Seq: 1, Phase: "Running"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := a.WatchPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st := <-ch; st.SpotInterruption != nil {
		t.Fatalf("a notice before any: %+v", st.SpotInterruption)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		a.WatchSpot(ctx, SpotConfig{Instance: &cellapi.InstanceBootstrap{Spot: true, MetadataURL: srv.URL + "/"}, Interval: time.Millisecond})
	}()
	waitUntil(t, "three asks without a notice", func() bool { n, _ := f.counts(); return n >= 3 })
	// The token expires: the next ask gets a new one and goes on.
	f.set(func(f *fakeIMDS) { f.token = "rotated" })
	waitUntil(t, "an ask with a new token", func() bool { n, _ := f.counts(); return n >= 5 })
	f.set(func(f *fakeIMDS) { f.notice = `{"action": "terminate", "time": "2026-12-06T16:02:00Z"}` })

	var got *cellapi.PodStatus
	select {
	case got = <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("no status with the notice")
	}
	want := cellapi.SpotInterruption{Action: "terminate", Time: time.Date(2026, 12, 6, 16, 2, 0, 0, time.UTC)}
	if got.SpotInterruption == nil || got.SpotInterruption.Action != want.Action || !got.SpotInterruption.Time.Equal(want.Time) {
		t.Fatalf("status carries %+v, want %+v", got.SpotInterruption, want)
	}
	if got.UID != "u1" || got.Seq != 1 {
		t.Errorf("the notice changed the status: uid %s seq %d", got.UID, got.Seq)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("WatchSpot still polls after the notice")
	}
	if _, served := f.counts(); served != 1 {
		t.Errorf("the notice was read %d times, want once", served)
	}
	select {
	case st := <-ch:
		t.Errorf("a second status after the notice: %+v", st)
	default:
	}
	// Later statuses of the pod carry it too.
	a.publish(&cellapi.PodStatus{UID: "u1", Seq: 2, Phase: "Running"})
	if st := <-ch; st.Seq != 2 || st.SpotInterruption == nil {
		t.Errorf("a later status: seq %d, notice %+v", st.Seq, st.SpotInterruption)
	}
}

func TestWatchSpotNeverPollsANonSpotCell(t *testing.T) {
	for _, tc := range []struct {
		name      string
		instance  *cellapi.InstanceBootstrap
		lifeCycle string
		polls     bool
	}{
		{name: "local cell", instance: nil, lifeCycle: "spot"},
		{name: "on-demand instance", instance: &cellapi.InstanceBootstrap{}, lifeCycle: "on-demand"},
		{name: "spot instance kip did not mark", instance: &cellapi.InstanceBootstrap{}, lifeCycle: "spot", polls: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeIMDS{lifeCycle: tc.lifeCycle, notice: `{"action": "stop", "time": "2026-12-06T16:02:00Z"}`}
			srv := httptest.NewServer(f)
			defer srv.Close()
			if tc.instance != nil {
				tc.instance.MetadataURL = srv.URL
			}
			a := bareAgent()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			a.WatchSpot(ctx, SpotConfig{Instance: tc.instance, Interval: time.Millisecond})
			if ctx.Err() != nil {
				t.Fatal("WatchSpot did not return")
			}
			actions, _ := f.counts()
			if tc.polls != (actions > 0) {
				t.Errorf("spot/instance-action asked %d times; want polls=%v", actions, tc.polls)
			}
			if tc.polls != (a.spotNotice() != nil) {
				t.Errorf("notice %+v; want one=%v", a.spotNotice(), tc.polls)
			}
			if tc.instance == nil && (f.other.Load() > 0 || f.tokens > 0) {
				t.Errorf("a local cell's agent asked the metadata service")
			}
		})
	}
}
