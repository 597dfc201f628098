package pod

import (
	"testing"
	"time"
)

func TestBackOff(t *testing.T) {
	b := newBackOff(BackOff{Base: 10 * time.Second, Max: 5 * time.Minute, Reset: 10 * time.Minute})
	var got []time.Duration
	for i := 0; i < 7; i++ {
		got = append(got, b.next(time.Second))
	}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 300 * time.Second, 300 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delays %v, want %v", got, want)
		}
	}
	if d := b.next(10 * time.Minute); d != 10*time.Second {
		t.Errorf("after a 10m run the back-off is %s, want it reset to 10s", d)
	}
}

// TestRestartBackOff: as kubelet, a crashed container restarts at once the first time, then
// waits 10s doubling to 5m; a run of 10m or longer starts over with an immediate restart.
func TestRestartBackOff(t *testing.T) {
	b := newBackOff(BackOff{Base: 10 * time.Second, Max: 5 * time.Minute, Reset: 10 * time.Minute})
	var got []time.Duration
	for i := 0; i < 8; i++ {
		got = append(got, b.nextRestart(time.Second))
	}
	want := []time.Duration{0, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 300 * time.Second, 300 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delays %v, want %v", got, want)
		}
	}
	if d := b.nextRestart(10 * time.Minute); d != 0 {
		t.Errorf("after a 10m run the restart waits %s, want an immediate one", d)
	}
	if d := b.nextRestart(time.Second); d != 10*time.Second {
		t.Errorf("the restart after that waits %s, want 10s", d)
	}
}
