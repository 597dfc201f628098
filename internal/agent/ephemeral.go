package agent

import (
	"context"

	"github.com/kip-dev/kip/internal/cellapi"
)

// PutEphemeralContainers implements cellapi.EphemeralRunner: each ephemeral container of e
// the running pod does not have yet starts once (internal/agent/pod). A pod other than e.UID,
// or none, is NotFound.
func (a *Agent) PutEphemeralContainers(ctx context.Context, e *cellapi.EphemeralContainers) (*cellapi.PodStatus, error) {
	a.mu.Lock()
	p := a.pod
	a.mu.Unlock()
	if p == nil || p.UID() != e.UID {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "cell %s does not run pod %s", a.cfg.CellID, e.UID)
	}
	if err := p.AddEphemeral(e.Containers); err != nil {
		return nil, err
	}
	return p.Status(), nil
}

var _ cellapi.EphemeralRunner = (*Agent)(nil)
