package selector

import (
	"testing"

	"github.com/kip-dev/kip/internal/instancetype"
)

func TestSelectorFollowsCatalogChanges(t *testing.T) {
	s := &Selector{Options: Options{MaxFallbacks: -1}}
	types := testCatalog()
	p := pod(requests("cpu", "1"))
	pick := func() string {
		t.Helper()
		ch, err := s.Select(p, types)
		if err != nil {
			t.Fatal(err)
		}
		return ch.Type.Name
	}
	if got := pick(); got != "c5.large" {
		t.Fatalf("chose %s, want c5.large", got)
	}
	first := s.ix
	if pick(); s.ix != first {
		t.Error("the index was rebuilt for an unchanged catalog")
	}
	// Marking the offering unavailable in place is noticed.
	for i := range types {
		if types[i].Name == "c5.large" {
			types[i].Offerings[0].Available = false
		}
	}
	if got := pick(); got != "z.large" {
		t.Fatalf("after c5.large ran out: chose %s, want z.large", got)
	}
	// So is a new catalog with another price.
	types = instancetype.Clone(testCatalog())
	types[len(types)-1].Offerings[0].Price = 0.01
	if got := pick(); got != "z.large" {
		t.Fatalf("after z.large got cheaper: chose %s", got)
	}
}

// BenchmarkSelectorSelect measures Selector.Select handed the same catalog each time: the
// fingerprint's cost on top of an Index's.
func BenchmarkSelectorSelect(b *testing.B) {
	types, err := instancetype.Load("aws", "us-east-1")
	if err != nil {
		b.Fatal(err)
	}
	s := &Selector{}
	shapes := genShapes(11, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, _ = s.Select(shapes[i%len(shapes)].pod, types)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "selections/s")
}
