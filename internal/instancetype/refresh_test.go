package instancetype

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

type fakeRefresher struct {
	mu    sync.Mutex
	types []InstanceType
	err   error
	calls int
}

func (f *fakeRefresher) Refresh(_ context.Context, region string) ([]InstanceType, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return Clone(f.types), f.err
}

func (f *fakeRefresher) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func fresh() []InstanceType {
	return []InstanceType{{Name: "x.fresh", Arch: ArchARM64, VCPU: 1, MemoryMiB: 2048,
		Offerings: []Offering{{Zone: "us-east-1a", Price: 0.01, Available: true}}}}
}

func TestLiveFallsBackToEmbedded(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "catalog.json")
	for name, content := range map[string]string{"missing": "", "corrupt": "{not json"} {
		t.Run(name, func(t *testing.T) {
			if content != "" {
				if err := os.WriteFile(cache, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			l := &Live{Cloud: "aws", Region: "us-east-1", CacheFile: cache}
			types, err := l.InstanceTypes()
			if err != nil {
				t.Fatal(err)
			}
			if l.Origin() != "embedded" || len(types) < 250 {
				t.Fatalf("origin %q, %d types; want the embedded catalog", l.Origin(), len(types))
			}
		})
	}
}

func TestLiveRefreshCachesToFile(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "aws-us-east-1.json")
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	r := &fakeRefresher{types: fresh()}
	l := &Live{Cloud: "aws", Region: "us-east-1", Refresher: r, CacheFile: cache, Clock: clk}
	if err := l.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, _ := l.InstanceTypes()
	if l.Origin() != "refreshed" || len(got) != 1 || got[0].Name != "x.fresh" {
		t.Fatalf("after refresh: origin %q types %+v", l.Origin(), got)
	}
	raw, err := os.ReadFile(cache)
	if err != nil || !strings.Contains(string(raw), "2026-01-02T03:04:05Z") {
		t.Fatalf("cache file: %v %s", err, raw)
	}
	// A restart reads the cache, not the embedded copy.
	l2 := &Live{Cloud: "aws", Region: "us-east-1", CacheFile: cache}
	got, err = l2.InstanceTypes()
	if err != nil || len(got) != 1 || got[0].Name != "x.fresh" || l2.Origin() != "cache "+cache {
		t.Fatalf("after restart: %v origin %q types %+v", err, l2.Origin(), got)
	}
	// The same file is not taken for another region.
	l3 := &Live{Cloud: "aws", Region: "us-west-2", CacheFile: cache}
	if _, err := l3.InstanceTypes(); err != nil || l3.Origin() != "embedded" {
		t.Fatalf("other region: %v origin %q", err, l3.Origin())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestLiveRefreshFailureKeepsCurrent(t *testing.T) {
	bad := fresh()
	bad[0].VCPU = 0
	tests := []struct {
		name string
		r    Refresher
		want string
	}{
		{"no refresher", nil, "no refresher"},
		{"api error", &fakeRefresher{err: errors.New("throttled")}, "throttled"},
		{"invalid data", &fakeRefresher{types: bad}, ".vcpu"},
		{"empty", &fakeRefresher{}, "catalog is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := filepath.Join(t.TempDir(), "c.json")
			l := &Live{Cloud: "aws", Region: "us-east-1", Refresher: tt.r, CacheFile: cache}
			before, _ := l.InstanceTypes()
			err := l.Refresh(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Refresh error = %v, want it to mention %q", err, tt.want)
			}
			after, _ := l.InstanceTypes()
			if len(after) != len(before) || l.Origin() != "embedded" {
				t.Fatalf("catalog changed after a failed refresh: origin %q", l.Origin())
			}
			if _, err := os.Stat(cache); !os.IsNotExist(err) {
				t.Errorf("cache file written after a failed refresh: %v", err)
			}
		})
	}
}

func TestLiveRun(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	r := &fakeRefresher{err: errors.New("throttled")}
	l := &Live{Cloud: "aws", Region: "us-east-1", Refresher: r, Clock: clk}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx, time.Hour); close(done) }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitFor("the first refresh", func() bool { return r.Calls() == 1 })
	if types, err := l.InstanceTypes(); err != nil || l.Origin() != "embedded" || len(types) < 250 {
		t.Fatalf("after a failed refresh: %v origin %q", err, l.Origin())
	}
	r.mu.Lock()
	r.types, r.err = fresh(), nil
	r.mu.Unlock()
	waitFor("the ticker", clk.HasWaiters)
	clk.Step(time.Hour)
	waitFor("the second refresh", func() bool { return l.Origin() == "refreshed" })
	cancel()
	<-done
}

// blockingRefresher answers once release is closed, or fails when its context ends first.
type blockingRefresher struct {
	release chan struct{}
}

func (b *blockingRefresher) Refresh(ctx context.Context, region string) ([]InstanceType, error) {
	select {
	case <-b.release:
		return fresh(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestLiveStartWaitsForTheFirstRefresh: Start returns only once the first refresh is done, so
// the first selection sees the refreshed catalog; a first refresh that does not end within
// its timeout leaves the cache file current.
func TestLiveStartWaitsForTheFirstRefresh(t *testing.T) {
	t.Run("refreshed", func(t *testing.T) {
		r := &blockingRefresher{release: make(chan struct{})}
		l := &Live{Cloud: "aws", Region: "us-east-1", Refresher: r}
		time.AfterFunc(50*time.Millisecond, func() { close(r.release) })
		stop := l.Start(context.Background(), time.Hour, time.Minute)
		defer stop()
		if types, err := l.InstanceTypes(); err != nil || l.Origin() != "refreshed" || len(types) != len(fresh()) {
			t.Fatalf("after Start: %d types, %v, origin %q; want the refreshed catalog", len(types), err, l.Origin())
		}
	})
	t.Run("timed out to the cache", func(t *testing.T) {
		cache := filepath.Join(t.TempDir(), "aws.json")
		seed := &Live{Cloud: "aws", Region: "us-east-1", Refresher: &fakeRefresher{types: fresh()}, CacheFile: cache}
		if err := seed.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
		r := &blockingRefresher{release: make(chan struct{})}
		defer close(r.release)
		l := &Live{Cloud: "aws", Region: "us-east-1", Refresher: r, CacheFile: cache}
		stop := l.Start(context.Background(), time.Hour, 10*time.Millisecond)
		defer stop()
		if l.Origin() != "cache "+cache {
			t.Fatalf("after a first refresh that timed out: origin %q, want the cache file", l.Origin())
		}
	})
}
