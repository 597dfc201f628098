package pod

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestTerminationMessage(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "0.log")
	var b strings.Builder
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, "2026-01-01T00:00:00Z stdout F line %d\n", i)
	}
	b.WriteString("2026-01-01T00:00:00Z stderr P par\n2026-01-01T00:00:00Z stderr F tial\n")
	os.WriteFile(logPath, []byte(b.String()), 0o644)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	written := filepath.Join(dir, "written")
	os.WriteFile(written, []byte(strings.Repeat("x", 5000)), 0o644)
	fallback := &corev1.Container{TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError}
	// `echo -n DONE; false`: the runtime wrote the unterminated output as a partial record.
	unterminated := filepath.Join(dir, "1.log")
	os.WriteFile(unterminated, []byte("2026-01-01T00:00:00Z stdout P DONE\n"), 0o644)

	cases := []struct {
		name    string
		c       *corev1.Container
		term    string
		code    int
		check   func(string) bool
		explain string
	}{
		{"file wins, capped at 4096", fallback, written, 1, func(m string) bool { return len(m) == 4096 }, "4096 x"},
		{"default policy ignores logs", &corev1.Container{}, empty, 1, func(m string) bool { return m == "" }, "empty"},
		{"fallback only on failure", fallback, empty, 0, func(m string) bool { return m == "" }, "empty"},
		{"fallback tail", fallback, empty, 2, func(m string) bool {
			return strings.HasSuffix(m, "line 99\npartial\n") && strings.Count(m, "\n") <= 80 && len(m) <= 2048 && !strings.Contains(m, "line 20\n")
		}, "the last lines, partial records joined"},
		{"fallback keeps the output's own bytes", fallback, empty, 1, func(m string) bool { return m == "DONE" }, `"DONE", no newline added`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := logPath
			if strings.Contains(tc.name, "own bytes") {
				path = unterminated
			}
			if m := terminationMessage(tc.c, tc.term, path, tc.code); !tc.check(m) {
				t.Errorf("message %q, want %s", m, tc.explain)
			}
		})
	}
}
