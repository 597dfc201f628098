package capacity

import (
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func TestMemory(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Now())
	m := New(clk, time.Minute)
	nano := Offering{Type: "t3.nano", Zone: "a"}
	nanoSpot := Offering{Type: "t3.nano", Zone: "a", Spot: true}
	m.Remember(nano)
	steps := []struct {
		after      time.Duration
		o          Offering
		wantRecent bool
	}{
		{0, nano, true},
		{0, nanoSpot, false},
		{59 * time.Second, nano, true},
		{time.Second, nano, false},
	}
	for i, s := range steps {
		clk.SetTime(clk.Now().Add(s.after))
		if got := m.Recent(s.o); got != s.wantRecent {
			t.Errorf("step %d: Recent(%v) = %t, want %t", i, s.o, got, s.wantRecent)
		}
	}
}

func TestOrder(t *testing.T) {
	m := New(clocktesting.NewFakePassiveClock(time.Now()), time.Minute)
	m.Remember(Offering{Type: "a"})
	m.Remember(Offering{Type: "c"})
	got := Order(m, []string{"a", "b", "c", "d"}, func(s string) Offering { return Offering{Type: s} })
	want := []string{"b", "d", "a", "c"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Order = %v, want %v", got, want)
		}
	}
}
