package instancetype

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Refresher fetches a region's instance types, with current offerings and prices, from a
// cloud's own APIs (for AWS: EC2 DescribeInstanceTypes, DescribeInstanceTypeOfferings,
// DescribeSpotPriceHistory and the Price List API). Implementations live beside their cloud's
// backend; hack/gen-catalog uses the same interface to regenerate the embedded catalog.
type Refresher interface {
	Refresh(ctx context.Context, region string) ([]InstanceType, error)
}

// Live is the catalog of one cloud region as a running kip sees it: the last successful
// refresh, kept in CacheFile so a restart starts from it, falling back to the embedded copy.
// It is safe for concurrent use.
type Live struct {
	Cloud, Region string
	// Refresher fetches fresh figures; nil means the catalog never changes.
	Refresher Refresher
	// CacheFile keeps the last refresh across restarts; empty means memory only.
	CacheFile string
	// Clock stamps refreshes and paces Run; nil means the real clock.
	Clock clock.WithTicker
	// Log receives Run's refresh failures; nil means slog.Default().
	Log *slog.Logger

	mu     sync.Mutex
	types  []InstanceType
	origin string
}

// InstanceTypes returns the current catalog, a deep copy the caller may change. On first use
// it reads CacheFile (when set, readable, valid and for this cloud and region) and otherwise
// the embedded catalog.
func (l *Live) InstanceTypes() ([]InstanceType, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.types == nil {
		if err := l.loadLocked(); err != nil {
			return nil, err
		}
	}
	return Clone(l.types), nil
}

// Origin says where the current catalog came from: "embedded", "cache <file>" or "refreshed".
func (l *Live) Origin() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.origin
}

func (l *Live) loadLocked() error {
	if types, err := l.readCache(); err == nil {
		l.types, l.origin = types, "cache "+l.CacheFile
		return nil
	}
	types, err := Load(l.Cloud, l.Region)
	if err != nil {
		return err
	}
	l.types, l.origin = types, "embedded"
	return nil
}

func (l *Live) readCache() ([]InstanceType, error) {
	if l.CacheFile == "" {
		return nil, errors.New("no cache file")
	}
	fh, err := os.Open(l.CacheFile)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	f, err := DecodeFile(fh)
	if err != nil {
		return nil, err
	}
	types, ok := f.Regions[CanonicalRegion(l.Cloud, l.Region)]
	if f.Cloud != l.Cloud || !ok {
		return nil, fmt.Errorf("cache file %s is not for %s %s", l.CacheFile, l.Cloud, l.Region)
	}
	return types, nil
}

// Refresh asks the Refresher for fresh figures, validates them and, when they are good, makes
// them current and writes them to CacheFile (atomically). On any error the current catalog is
// kept and the error returned.
func (l *Live) Refresh(ctx context.Context) error {
	if l.Refresher == nil {
		return fmt.Errorf("refreshing %s %s catalog: no refresher configured", l.Cloud, l.Region)
	}
	types, err := l.Refresher.Refresh(ctx, l.Region)
	if err != nil {
		return fmt.Errorf("refreshing %s %s catalog: %w", l.Cloud, l.Region, err)
	}
	if err := Validate(types); err != nil {
		return fmt.Errorf("refreshing %s %s catalog: validating: %w", l.Cloud, l.Region, err)
	}
	types = Clone(types)
	if l.CacheFile != "" {
		f := &File{Cloud: l.Cloud, Source: "refresh", Fetched: l.clock().Now().UTC(),
			Regions: map[string][]InstanceType{CanonicalRegion(l.Cloud, l.Region): types}}
		if err := writeFileAtomic(l.CacheFile, f); err != nil {
			return fmt.Errorf("refreshing %s %s catalog: %w", l.Cloud, l.Region, err)
		}
	}
	l.mu.Lock()
	l.types, l.origin = types, "refreshed"
	l.mu.Unlock()
	return nil
}

// Run refreshes now and then every interval until ctx ends. A failed refresh is logged and
// the current catalog kept; the next tick tries again.
func (l *Live) Run(ctx context.Context, every time.Duration) {
	l.run(ctx, every, true)
}

// Start makes the first refresh before it returns, so that no selection is made from a
// catalog the APIs are about to replace: it waits up to firstTimeout for it (on failure or
// timeout, logged, the cache file or embedded catalog stays current), then refreshes every
// interval in a goroutine until ctx ends or stop is called; stop returns once the goroutine
// is gone.
func (l *Live) Start(ctx context.Context, every, firstTimeout time.Duration) (stop func()) {
	l.mu.Lock()
	if l.types == nil {
		_ = l.loadLocked() // a region with neither cache nor embedded catalog: the refresh decides
	}
	l.mu.Unlock()
	first, cancel := context.WithTimeout(ctx, firstTimeout)
	err := l.Refresh(first)
	cancel()
	if err != nil && ctx.Err() == nil {
		l.log().Warn("the first instance type catalog refresh failed; starting with the current one",
			"cloud", l.Cloud, "region", l.Region, "origin", l.Origin(), "timeout", firstTimeout.String(), "err", err)
	}
	ctx, cancel = context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.run(ctx, every, false)
	}()
	return func() { cancel(); <-done }
}

func (l *Live) run(ctx context.Context, every time.Duration, now bool) {
	t := l.clock().NewTicker(every)
	defer t.Stop()
	for {
		if now {
			if err := l.Refresh(ctx); err != nil && ctx.Err() == nil {
				l.log().Warn("instance type catalog refresh failed; keeping the current one",
					"cloud", l.Cloud, "region", l.Region, "origin", l.Origin(), "err", err)
			}
		}
		now = true
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

func (l *Live) log() *slog.Logger {
	if l.Log == nil {
		return slog.Default()
	}
	return l.Log
}

func (l *Live) clock() clock.WithTicker {
	if l.Clock == nil {
		return clock.RealClock{}
	}
	return l.Clock
}

func writeFileAtomic(name string, f *File) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing cache file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := f.Encode(tmp, false); err != nil {
		tmp.Close()
		return fmt.Errorf("writing cache file %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing cache file %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("writing cache file: %w", err)
	}
	return nil
}
