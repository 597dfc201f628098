package logarchive

import (
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cellapi"
)

func TestFilterLog(t *testing.T) {
	data := []byte("2026-01-01T00:00:01Z one\n2026-01-01T00:00:02Z two\n2026-01-01T00:00:03Z three\n")
	now := time.Date(2026, 1, 1, 0, 0, 4, 0, time.UTC)
	i64 := func(n int64) *int64 { return &n }
	since := time.Date(2026, 1, 1, 0, 0, 2, 0, time.UTC)
	tests := []struct {
		name string
		opts cellapi.LogOptions
		want string
	}{
		{"plain", cellapi.LogOptions{}, "one\ntwo\nthree\n"},
		{"timestamps", cellapi.LogOptions{Timestamps: true, TailLines: i64(1)}, "2026-01-01T00:00:03Z three\n"},
		{"tail", cellapi.LogOptions{TailLines: i64(2)}, "two\nthree\n"},
		{"since time", cellapi.LogOptions{SinceTime: &since}, "two\nthree\n"},
		{"since seconds", cellapi.LogOptions{SinceSeconds: i64(1)}, "three\n"},
		{"limit bytes", cellapi.LogOptions{LimitBytes: i64(5)}, "one\nt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(filterLog(data, tt.opts, now)); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
