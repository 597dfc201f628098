package logctx_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/logctx"
)

func TestFrom(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, nil))
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want *slog.Logger
	}{
		{"none", context.Background(), slog.Default()},
		{"nil logger", logctx.Into(context.Background(), nil), slog.Default()},
		{"carried", logctx.Into(context.Background(), l), l},
		{"carried through a child", context.WithoutCancel(logctx.Into(context.Background(), l)), l},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := logctx.From(tc.ctx); got != tc.want {
				t.Errorf("From = %p, want %p", got, tc.want)
			}
		})
	}
	logctx.From(logctx.Into(context.Background(), l.With("cell", "c1"))).Info("hello")
	if !strings.Contains(buf.String(), "msg=hello cell=c1") {
		t.Errorf("logged %q", buf.String())
	}
}
