// Package logctx carries a *slog.Logger in a context.Context, as virtual-kubelet's log.G does:
// wiring puts the logger in once (Into), and code that only logs takes it from its ctx (From)
// rather than from a parameter.
package logctx

import (
	"context"
	"log/slog"
)

type key struct{}

// Into returns a copy of ctx that carries l.
func Into(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, key{}, l)
}

// From returns the logger ctx carries; slog.Default() when it carries none.
func From(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(key{}).(*slog.Logger); ok && l != nil {
		return l
	}
	return slog.Default()
}
