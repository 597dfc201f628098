package kipnode

import (
	"context"
	"log/slog"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/servicetable"
)

// nodePortHost is a backend that forwards the node's nodePorts itself (the local backend: the
// virtual node's address is its bridge's, on this host).
type nodePortHost interface {
	EnableNodePortForwarding() error
	SetNodePorts(ctx context.Context, svcs []cellapi.Service) error
}

// runNodePorts programs the whole service table's nodePorts on the host after each new
// version, until ctx ends; a failed apply is retried with back-off (the previous rules stay).
func runNodePorts(ctx context.Context, h nodePortHost, table *servicetable.Table, log *slog.Logger) {
	if err := h.EnableNodePortForwarding(); err != nil {
		log.Error("nodePorts will not reach cells from other cells", "err", err)
	}
	changed := make(chan struct{}, 1)
	table.OnChange(func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	if err := table.WaitReady(ctx); err != nil {
		return
	}
	var applied uint64
	backoff := wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Cap: 30 * time.Second, Steps: 1 << 30}
	for {
		if full := table.Since(0); full.Version != applied {
			err := h.SetNodePorts(ctx, full.Services)
			if err == nil {
				applied = full.Version
				backoff.Duration = 100 * time.Millisecond
			} else {
				log.Error("programming nodePorts on the host (the previous rules stay)", "version", full.Version, "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff.Step()):
				}
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
