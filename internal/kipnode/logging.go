package kipnode

import (
	"context"
	"log/slog"
)

// demoted lowers the level of records below Warn by one step (Info → Debug): client-go's
// informational lines (cache syncs, reflector starts) are debugging detail for kip's users.
type demoted struct{ slog.Handler }

func (d demoted) Enabled(ctx context.Context, l slog.Level) bool {
	return d.Handler.Enabled(ctx, demote(l))
}

func (d demoted) Handle(ctx context.Context, r slog.Record) error {
	r.Level = demote(r.Level)
	return d.Handler.Handle(ctx, r)
}

func (d demoted) WithAttrs(as []slog.Attr) slog.Handler { return demoted{d.Handler.WithAttrs(as)} }
func (d demoted) WithGroup(n string) slog.Handler       { return demoted{d.Handler.WithGroup(n)} }

func demote(l slog.Level) slog.Level {
	if l < slog.LevelWarn {
		return l - 4
	}
	return l
}
