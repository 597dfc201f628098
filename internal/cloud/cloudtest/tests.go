package cloudtest

import (
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/kip-dev/kip/internal/cloud"
)

func testInstanceTypes(t *testing.T, s *suite) {
	c := s.h.New(t)
	types, err := c.InstanceTypes(s.ctx)
	if err != nil {
		t.Fatalf("InstanceTypes: %v", err)
	}
	if len(types) == 0 {
		t.Fatal("InstanceTypes returned an empty catalog")
	}
	found := false
	for _, it := range types {
		if it.Name == "" {
			t.Errorf("instance type with an empty name: %+v", it)
		}
		if it.VCPU <= 0 || it.MemoryMiB <= 0 {
			t.Errorf("instance type %s: vcpu %v, memory %d MiB; want both positive", it.Name, it.VCPU, it.MemoryMiB)
		}
		if len(it.Offerings) == 0 {
			t.Errorf("instance type %s has no offerings", it.Name)
		}
		if it.Name == s.h.InstanceType {
			found = true
		}
	}
	if !found {
		t.Errorf("InstanceTypes does not contain the harness type %q", s.h.InstanceType)
	}
}

func testLaunch(t *testing.T, s *suite) {
	c := s.h.New(t)
	spec := s.spec("a", map[string]string{"extra": "x"})
	inst := s.launch(t, c, spec)
	if inst.Zone == "" {
		t.Errorf("Launch: empty Zone")
	}
}

func testIdempotentLaunch(t *testing.T, s *suite) {
	c := s.h.New(t)
	spec := s.spec("a", nil)
	first := s.launch(t, c, spec)
	second := s.launch(t, c, spec)
	if second.ID != first.ID {
		t.Errorf("second Launch with token %q: ID %q, want %q", spec.ClientToken, second.ID, first.ID)
	}
	// After a restart: a new backend object must remember the token.
	third := s.launch(t, s.h.New(t), spec)
	if third.ID != first.ID {
		t.Errorf("Launch through a new backend with token %q: ID %q, want %q", spec.ClientToken, third.ID, first.ID)
	}
	list, err := s.h.New(t).List(s.ctx, map[string]string{TagRun: s.run})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if got := ids(list); !equal(got, []string{first.ID}) {
		t.Errorf("List after three launches with one token = %v, want exactly [%s]", got, first.ID)
	}
}

func testListByTags(t *testing.T, s *suite) {
	c := s.h.New(t)
	a := s.launch(t, c, s.spec("a", map[string]string{"role": "web", "team": "x"}))
	b := s.launch(t, c, s.spec("b", map[string]string{"role": "db", "team": "x"}))

	c2 := s.h.New(t)
	tests := []struct {
		name   string
		filter map[string]string
		want   []string
	}{
		{"run tag", map[string]string{TagRun: s.run}, []string{a.ID, b.ID}},
		{"two shared tags", map[string]string{TagRun: s.run, "team": "x"}, []string{a.ID, b.ID}},
		{"one cell's tag", map[string]string{TagRun: s.run, "role": "web"}, []string{a.ID}},
		{"cell id tag", map[string]string{TagRun: s.run, cloud.TagCellID: b.CellID}, []string{b.ID}},
		{"value mismatch", map[string]string{TagRun: s.run, "role": "cache"}, nil},
		{"key absent", map[string]string{TagRun: s.run, "missing": "x"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c2.List(s.ctx, tc.filter)
			if err != nil {
				t.Fatalf("List(%v): %v", tc.filter, err)
			}
			if g, w := ids(got), sortedCopy(tc.want); !equal(g, w) {
				t.Errorf("List(%v) = %v, want %v", tc.filter, g, w)
			}
			for _, in := range got {
				for k, v := range tc.filter {
					if in.Tags[k] != v {
						t.Errorf("List(%v) returned %s whose tag %s = %q", tc.filter, in.ID, k, in.Tags[k])
					}
				}
			}
		})
	}
}

func testDescribe(t *testing.T, s *suite) {
	spec := s.spec("a", nil)
	inst := s.launch(t, s.h.New(t), spec)
	c2 := s.h.New(t)
	got, err := c2.Describe(s.ctx, inst.ID)
	if err != nil {
		t.Fatalf("Describe(%s) through a new backend: %v", inst.ID, err)
	}
	if got.ID != inst.ID {
		t.Errorf("Describe(%s).ID = %q", inst.ID, got.ID)
	}
	checkInstance(t, "Describe", got, spec)
	if inst.PrivateIP != "" && got.PrivateIP != inst.PrivateIP {
		t.Errorf("Describe(%s).PrivateIP = %q, Launch said %q", inst.ID, got.PrivateIP, inst.PrivateIP)
	}

	_, err = c2.Describe(s.ctx, s.h.UnknownID)
	if !cloud.IsNotFound(err) {
		t.Errorf("Describe of an unknown id: err = %v, want a NotFound error", err)
	}
}

func testTerminate(t *testing.T, s *suite) {
	c := s.h.New(t)
	gone := s.launch(t, c, s.spec("a", nil))
	kept := s.launch(t, c, s.spec("b", nil))

	if err := c.Terminate(s.ctx, gone.ID); err != nil {
		t.Fatalf("Terminate(%s): %v", gone.ID, err)
	}
	// "It may be called many times; it returns a NotFound error once the instance is gone."
	if err := c.Terminate(s.ctx, gone.ID); err != nil && !cloud.IsNotFound(err) {
		t.Errorf("second Terminate(%s): %v, want nil or NotFound", gone.ID, err)
	}
	c2 := s.h.New(t)
	if err := c2.Terminate(s.ctx, gone.ID); err != nil && !cloud.IsNotFound(err) {
		t.Errorf("Terminate(%s) through a new backend: %v, want nil or NotFound", gone.ID, err)
	}
	// "Describe returns a NotFound error once the instance is gone (a terminated instance
	// may still be described for a while, with StateTerminated)."
	got, err := c2.Describe(s.ctx, gone.ID)
	switch {
	case cloud.IsNotFound(err):
	case err != nil:
		t.Errorf("Describe(%s) after Terminate: %v, want NotFound", gone.ID, err)
	case got.State != cloud.StateTerminated:
		t.Errorf("Describe(%s) after Terminate: state %q, want NotFound or %q", gone.ID, got.State, cloud.StateTerminated)
	}
	list, err := c2.List(s.ctx, map[string]string{TagRun: s.run})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if g := ids(list); !equal(g, []string{kept.ID}) {
		t.Errorf("List after terminating %s = %v, want [%s]", gone.ID, g, kept.ID)
	}
	if err := c2.Terminate(s.ctx, s.h.UnknownID); !cloud.IsNotFound(err) {
		t.Errorf("Terminate of an unknown id: %v, want NotFound", err)
	}
}

func testUnknownInstanceType(t *testing.T, s *suite) {
	c := s.h.New(t)
	spec := s.spec("a", nil)
	spec.InstanceType = "no-such-type." + s.run
	inst, err := c.Launch(s.ctx, spec)
	if inst != nil && inst.ID != "" {
		s.mu.Lock()
		s.launched = append(s.launched, inst.ID)
		s.mu.Unlock()
	}
	if !cloud.IsInvalidSpec(err) {
		t.Fatalf("Launch with instance type %q: err = %v, want an InvalidSpec error", spec.InstanceType, err)
	}
	list, err := c.List(s.ctx, map[string]string{TagRun: s.run})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list) != 0 {
		t.Errorf("a refused launch left instances: %v", ids(list))
	}
}

func testConcurrentLaunches(t *testing.T, s *suite) {
	c := s.h.New(t)
	n := s.h.Concurrency
	insts := make([]*cloud.Instance, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			spec := s.spec(fmt.Sprintf("c%d", i), nil)
			in, err := c.Launch(s.ctx, spec)
			insts[i], errs[i] = in, err
			if in != nil && in.ID != "" {
				s.mu.Lock()
				s.launched = append(s.launched, in.ID)
				s.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	seenID := map[string]int{}
	seenIP := map[string]int{}
	var want []string
	for i := range n {
		if errs[i] != nil {
			t.Errorf("concurrent Launch %d: %v", i, errs[i])
			continue
		}
		in := insts[i]
		if j, dup := seenID[in.ID]; dup {
			t.Errorf("launches %d and %d both got ID %s", j, i, in.ID)
		}
		seenID[in.ID] = i
		if in.PrivateIP != "" {
			if ip := net.ParseIP(in.PrivateIP); ip != nil {
				if j, dup := seenIP[ip.String()]; dup {
					t.Errorf("launches %d and %d both got IP %s", j, i, ip)
				}
				seenIP[ip.String()] = i
			}
		}
		want = append(want, in.ID)
	}
	list, err := s.h.New(t).List(s.ctx, map[string]string{TagRun: s.run})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if g, w := ids(list), sortedCopy(want); !equal(g, w) {
		t.Errorf("List after %d concurrent launches = %v, want %v", n, g, w)
	}
}

// testSetTags checks cloud.Tagger, for backends that implement it: the new tags are added to
// the old (a value replaced), seen by List and Describe through a new backend object, and a
// terminated instance cannot be tagged.
func testSetTags(t *testing.T, s *suite) {
	c := s.h.New(t)
	if _, ok := c.(cloud.Tagger); !ok {
		t.Skipf("the %s backend does not implement cloud.Tagger", c.Name())
	}
	inst := s.launch(t, c, s.spec("a", map[string]string{"kip.dev/conformance-a": "1", "kip.dev/conformance-b": "old"}))
	c2 := s.h.New(t)
	if err := c2.(cloud.Tagger).SetTags(s.ctx, inst.ID, map[string]string{"kip.dev/conformance-b": "new", "kip.dev/conformance-c": "3"}); err != nil {
		t.Fatalf("SetTags(%s): %v", inst.ID, err)
	}
	got, err := s.h.New(t).Describe(s.ctx, inst.ID)
	if err != nil {
		t.Fatalf("Describe(%s): %v", inst.ID, err)
	}
	for k, v := range map[string]string{TagRun: s.run, "kip.dev/conformance-a": "1", "kip.dev/conformance-b": "new", "kip.dev/conformance-c": "3"} {
		if got.Tags[k] != v {
			t.Errorf("after SetTags, tag %s = %q, want %q (tags %v)", k, got.Tags[k], v, got.Tags)
		}
	}
	list, err := c2.List(s.ctx, map[string]string{TagRun: s.run, "kip.dev/conformance-c": "3"})
	if err != nil || len(list) != 1 || list[0].ID != inst.ID {
		t.Errorf("List by a tag SetTags added: %v (%v), want %s", ids(list), err, inst.ID)
	}
	if err := c.Terminate(s.ctx, inst.ID); err != nil {
		t.Fatalf("Terminate(%s): %v", inst.ID, err)
	}
	if err := c.(cloud.Tagger).SetTags(s.ctx, inst.ID, map[string]string{"kip.dev/conformance-d": "4"}); !cloud.IsNotFound(err) {
		t.Errorf("SetTags of a terminated instance: %v, want NotFound", err)
	}
}
