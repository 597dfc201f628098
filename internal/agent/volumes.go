package agent

import (
	"context"
	"time"

	"github.com/kip-dev/kip/internal/cellapi"
)

// UpdateVolumes implements cellapi.VolumeUpdater: the running pod's configMap, secret,
// downwardAPI and projected volumes named in u are rewritten with kubelet's atomic writer
// (internal/agent/pod). A pod other than u.UID, or none, is NotFound.
func (a *Agent) UpdateVolumes(ctx context.Context, u *cellapi.VolumeUpdate) (*cellapi.VolumeUpdateStatus, error) {
	a.mu.Lock()
	p := a.pod
	a.mu.Unlock()
	if p == nil || p.UID() != u.UID {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "cell %s does not run pod %s", a.cfg.CellID, u.UID)
	}
	if err := p.ValidateVolumeUpdate(u); err != nil {
		return nil, err
	}
	start := time.Now()
	updated, err := p.UpdateVolumes(u)
	if len(updated) > 0 {
		a.log.Info("volumes updated", "uid", u.UID, "volumes", updated, "took", time.Since(start))
	}
	if err != nil {
		return nil, err
	}
	return &cellapi.VolumeUpdateStatus{Updated: updated}, nil
}

var _ cellapi.VolumeUpdater = (*Agent)(nil)
