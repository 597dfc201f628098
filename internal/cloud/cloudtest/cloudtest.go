// Package cloudtest is the conformance suite every cloud backend passes. A backend's test calls
// Run with a Harness that makes backend objects; the suite launches, describes, lists and
// terminates real cells through them and checks the cloud.Cloud contract, including that a new
// backend object (as after a restart of kip) sees what an earlier one made.
package cloudtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cloud"
)

// TagRun is the tag key the suite puts on every cell it launches, with a random value per
// subtest, so that List results never include cells of other tests or earlier runs.
const TagRun = "kip.dev/conformance-run"

// Harness tells the suite how to make the backend under test.
type Harness struct {
	// New returns a backend object. It is called more than once per test: later objects must
	// see the cells made by earlier ones, as after a restart of the process. Cleanup of the
	// backend's own resources (not of cells) is New's business, through t.Cleanup.
	New func(t *testing.T) cloud.Cloud
	// InstanceType is a type from the backend's catalog that the suite launches.
	InstanceType string
	// Tags are added to every launched cell (for example a cluster tag).
	Tags map[string]string
	// Timeout bounds each subtest; zero means one minute.
	Timeout time.Duration
	// Concurrency is how many cells the concurrent-launch subtest starts; zero means 4.
	Concurrency int
	// UnknownID is an id shaped like the backend's own that names no instance (Describe and
	// Terminate of it must give NotFound). Empty means "no-such-instance-<random>".
	UnknownID string
}

// Run runs the conformance suite against h.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil {
		t.Fatal("cloudtest.Harness.New is nil")
	}
	if h.InstanceType == "" {
		t.Fatal("cloudtest.Harness.InstanceType is empty")
	}
	if h.Timeout == 0 {
		h.Timeout = time.Minute
	}
	if h.Concurrency == 0 {
		h.Concurrency = 4
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, s *suite)
	}{
		{"InstanceTypes", testInstanceTypes},
		{"Launch", testLaunch},
		{"IdempotentLaunch", testIdempotentLaunch},
		{"ListByTags", testListByTags},
		{"Describe", testDescribe},
		{"Terminate", testTerminate},
		{"UnknownInstanceType", testUnknownInstanceType},
		{"ConcurrentLaunches", testConcurrentLaunches},
		{"SetTags", testSetTags},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
			defer cancel()
			s := &suite{h: h, ctx: ctx, run: randomHex(4)}
			if s.h.UnknownID == "" {
				s.h.UnknownID = "no-such-instance-" + s.run
			}
			s.cleanup(t)
			tc.fn(t, s)
		})
	}
}

// suite is the state of one subtest.
type suite struct {
	h   Harness
	ctx context.Context
	run string

	mu       sync.Mutex
	launched []string
}

// cleanup terminates, through a fresh backend object, every cell the subtest launched.
func (s *suite) cleanup(t *testing.T) {
	t.Cleanup(func() {
		s.mu.Lock()
		ids := append([]string(nil), s.launched...)
		s.mu.Unlock()
		if len(ids) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.h.Timeout)
		defer cancel()
		c := s.h.New(t)
		for _, id := range ids {
			if err := c.Terminate(ctx, id); err != nil && !cloud.IsNotFound(err) {
				t.Errorf("cleanup: terminating %s: %v", id, err)
			}
		}
	})
}

// spec returns a launch spec for a cell named after the subtest run and suffix, tagged with
// the run tag, the harness tags and extra.
func (s *suite) spec(suffix string, extra map[string]string) cloud.LaunchSpec {
	cellID := fmt.Sprintf("ct%s%s", s.run, suffix)
	tags := map[string]string{TagRun: s.run, cloud.TagCellID: cellID}
	for k, v := range s.h.Tags {
		tags[k] = v
	}
	for k, v := range extra {
		tags[k] = v
	}
	return cloud.LaunchSpec{
		CellID:        cellID,
		ClientToken:   "tok-" + cellID,
		InstanceType:  s.h.InstanceType,
		Tags:          tags,
		BootstrapData: []byte(`{"cellID":"` + cellID + `"}`),
	}
}

// launch launches spec on c, remembers the instance for cleanup and checks the answer.
func (s *suite) launch(t *testing.T, c cloud.Cloud, spec cloud.LaunchSpec) *cloud.Instance {
	t.Helper()
	inst, err := c.Launch(s.ctx, spec)
	if err != nil {
		t.Fatalf("Launch(%s): %v", spec.CellID, err)
	}
	if inst == nil {
		t.Fatalf("Launch(%s) returned a nil instance and no error", spec.CellID)
	}
	if inst.ID != "" {
		s.mu.Lock()
		s.launched = append(s.launched, inst.ID)
		s.mu.Unlock()
	}
	checkInstance(t, "Launch", inst, spec)
	return inst
}

// checkInstance checks what every answer about a live instance must hold.
func checkInstance(t *testing.T, op string, inst *cloud.Instance, spec cloud.LaunchSpec) {
	t.Helper()
	if inst.ID == "" {
		t.Errorf("%s(%s): empty ID", op, spec.CellID)
	}
	if inst.CellID != spec.CellID {
		t.Errorf("%s(%s): CellID = %q, want %q", op, spec.CellID, inst.CellID, spec.CellID)
	}
	if inst.InstanceType != spec.InstanceType {
		t.Errorf("%s(%s): InstanceType = %q, want %q", op, spec.CellID, inst.InstanceType, spec.InstanceType)
	}
	switch inst.State {
	case cloud.StatePending, cloud.StateRunning:
	default:
		t.Errorf("%s(%s): State = %q, want pending or running", op, spec.CellID, inst.State)
	}
	if inst.State == cloud.StateRunning && net.ParseIP(inst.PrivateIP) == nil {
		t.Errorf("%s(%s): running but PrivateIP %q is not an IP address", op, spec.CellID, inst.PrivateIP)
	}
	if inst.PrivateIP != "" && net.ParseIP(inst.PrivateIP) == nil {
		t.Errorf("%s(%s): PrivateIP %q is not an IP address", op, spec.CellID, inst.PrivateIP)
	}
	for k, v := range spec.Tags {
		if got, ok := inst.Tags[k]; !ok || got != v {
			t.Errorf("%s(%s): tag %q = %q (present %v), want %q", op, spec.CellID, k, got, ok, v)
		}
	}
	if inst.LaunchTime.IsZero() {
		t.Errorf("%s(%s): LaunchTime is zero", op, spec.CellID)
	}
}

// ids returns the sorted IDs of instances.
func ids(insts []*cloud.Instance) []string {
	out := make([]string, 0, len(insts))
	for _, in := range insts {
		out = append(out, in.ID)
	}
	sort.Strings(out)
	return out
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("reading random bytes: %v", err))
	}
	return hex.EncodeToString(b)
}
