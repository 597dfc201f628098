package controlplane

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLogTail(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	three := write("three.log", "one\ntwo\nthree\n")
	for _, tc := range []struct {
		name, path string
		n          int
		want       string
	}{
		{"last lines", three, 2, "two\nthree"},
		{"fewer lines than asked", three, 5, "one\ntwo\nthree"},
		{"no trailing newline", write("open.log", "a\nb"), 1, "b"},
		{"empty file", write("empty.log", ""), 3, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := LogTail(tc.path, tc.n); got != tc.want {
				t.Errorf("LogTail(%s, %d) = %q, want %q", filepath.Base(tc.path), tc.n, got, tc.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		missing := filepath.Join(dir, "missing.log")
		if got := LogTail(missing, 3); !strings.HasPrefix(got, "(reading "+missing) {
			t.Errorf("LogTail of a missing file = %q, want a note naming it", got)
		}
	})
}
