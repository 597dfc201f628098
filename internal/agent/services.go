package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/kip-dev/kip/internal/cellapi"
)

// PutServices implements cellapi.ServiceProgrammer. A full table (Base 0) replaces every rule;
// a delta applies only on top of the version in force, else it fails with KindConflict and kip
// sends the full table. The version lives in memory: a restarted agent has none, so its first
// delta conflicts, while the rules of the agent before it stay in force until the full table
// replaces them. Applies run one at a time; a failed one leaves the version and the rules as
// they were.
func (a *Agent) PutServices(ctx context.Context, t *cellapi.ServiceTable) (*cellapi.ServiceTableStatus, error) {
	if a.cfg.Services == nil {
		return nil, cellapi.Errorf(cellapi.KindBadVersion, "cell %s does not program Services", a.cfg.CellID)
	}
	if t.Version == 0 {
		return nil, cellapi.Errorf(cellapi.KindInvalid, "service table: field version must be greater than 0")
	}
	a.smu.Lock()
	defer a.smu.Unlock()
	start := time.Now()
	if t.Base == 0 {
		if len(t.Deleted) > 0 {
			return nil, cellapi.Errorf(cellapi.KindInvalid, "service table: field deleted is only for a delta (base > 0), this table is full")
		}
		if err := a.cfg.Services.Replace(ctx, t.Services); err != nil {
			return nil, fmt.Errorf("programming service table version %d: %w", t.Version, err)
		}
	} else {
		if t.Version <= t.Base {
			return nil, cellapi.Errorf(cellapi.KindInvalid, "service table: version %d must be greater than base %d", t.Version, t.Base)
		}
		if a.svcVersion == 0 || a.svcVersion != t.Base {
			return nil, cellapi.Errorf(cellapi.KindConflict, "service table delta applies to version %d, cell %s has version %d; send the full table", t.Base, a.cfg.CellID, a.svcVersion)
		}
		if err := a.cfg.Services.Update(ctx, t.Services, t.Deleted); err != nil {
			return nil, fmt.Errorf("applying service table delta %d→%d: %w", t.Base, t.Version, err)
		}
	}
	a.svcVersion = t.Version
	st := &cellapi.ServiceTableStatus{Version: t.Version, Services: a.cfg.Services.Len()}
	level := slog.LevelInfo // a full table is rare: at kip's start, and after a conflict
	if t.Base > 0 {
		level = slog.LevelDebug
	}
	a.log.Log(ctx, level, "services programmed", "version", t.Version, "base", t.Base, "services", st.Services,
		"upserted", len(t.Services), "deleted", len(t.Deleted), "took", time.Since(start))
	return st, nil
}
