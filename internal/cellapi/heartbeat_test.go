package cellapi_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cellapi"
)

// next returns the next message of ch, failing after 10 s.
func next[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatalf("%s: the stream closed", what)
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: nothing came", what)
	}
	panic("unreachable")
}

// TestWatchHeartbeats: asked for heartbeats, the agent says so and sends them while the stream
// is quiet, between the statuses.
func TestWatchHeartbeats(t *testing.T) {
	r := newRig(t)
	ctx, cancel := context.WithCancel(t.Context())
	ch, beats, err := r.client.WatchPodHeartbeats(ctx, 50*time.Millisecond)
	if err != nil || !beats {
		t.Fatalf("WatchPodHeartbeats: beats %v, err %v", beats, err)
	}
	for i := 0; i < 3; i++ {
		if m := next(t, ch, "a heartbeat"); m.Status != nil {
			t.Fatalf("got status %+v on a quiet stream, want a heartbeat", m.Status)
		}
	}
	r.agent.updates <- &cellapi.PodStatus{UID: "u", Seq: 7}
	for {
		m := next(t, ch, "the status")
		if m.Status == nil {
			continue
		}
		if m.Status.Seq != 7 {
			t.Fatalf("got seq %d, want 7", m.Status.Seq)
		}
		break
	}
	if m := next(t, ch, "a heartbeat after the status"); m.Status != nil {
		t.Fatalf("got status %+v, want a heartbeat", m.Status)
	}
	cancel()
	for range ch { // must close after cancel
	}
}

// TestWatchWithoutHeartbeats: an old client (WatchPod) never sees a heartbeat line, and a
// client of an old agent (one that ignores the parameter) learns it gets none.
func TestWatchWithoutHeartbeats(t *testing.T) {
	t.Run("old client", func(t *testing.T) {
		r := newRig(t)
		ch, err := r.client.WatchPod(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		select {
		case st := <-ch:
			t.Fatalf("got %+v on a quiet stream without heartbeats", st)
		case <-time.After(300 * time.Millisecond):
		}
		r.agent.updates <- &cellapi.PodStatus{UID: "u", Seq: 1}
		if st := next(t, ch, "the status"); st.UID != "u" || st.Seq != 1 {
			t.Fatalf("got %+v", st)
		}
	})
	t.Run("old agent", func(t *testing.T) {
		fa := &fakeAgent{updates: make(chan *cellapi.PodStatus)}
		old := func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				q := req.URL.Query()
				q.Del(cellapi.HeartbeatParam)
				req.URL.RawQuery = q.Encode()
				h.ServeHTTP(w, req)
			})
		}
		r := newRigWrapped(t, fa, fa, old)
		ch, beats, err := r.client.WatchPodHeartbeats(t.Context(), 50*time.Millisecond)
		if err != nil || beats {
			t.Fatalf("WatchPodHeartbeats of an old agent: beats %v, err %v", beats, err)
		}
		fa.updates <- &cellapi.PodStatus{UID: "u", Seq: 2}
		if m := next(t, ch, "the status"); m.Status == nil || m.Status.Seq != 2 {
			t.Fatalf("got %+v", m)
		}
	})
	t.Run("bad interval", func(t *testing.T) {
		r := newRig(t)
		if _, _, err := r.client.WatchPodHeartbeats(t.Context(), time.Nanosecond); !cellapi.IsInvalid(err) {
			t.Fatalf("want Invalid naming the parameter, got %v", err)
		}
	})
}
