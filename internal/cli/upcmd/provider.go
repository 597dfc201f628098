package upcmd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/controlplane"
	"github.com/kip-dev/kip/internal/kipnode"
)

// provider is kip's provider (kipnode.Start, what `kip run` runs) running in this process on the backend kip
// up set up, logging to its own file so its lines do not bury kip up's progress.
type provider struct {
	cancel  context.CancelFunc
	ready   chan struct{}
	done    chan struct{}
	runErr  error
	logFile *os.File
	node    string
	log     string
}

func startProvider(ctx context.Context, st *state, cfgText string, cp *controlplane.ControlPlane, backend cloud.Cloud) (*provider, error) {
	cfg, err := config.Parse([]byte(cfgText))
	if err != nil {
		return nil, fmt.Errorf("starting kip's provider: %w", err)
	}
	logPath := filepath.Join(st.LogDir, "kip.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("starting kip's provider: %w", err)
	}
	pctx, cancel := context.WithCancel(ctx)
	p := &provider{cancel: cancel, ready: make(chan struct{}), done: make(chan struct{}), logFile: logf,
		node: cfg.Node.Name, log: logPath}
	var once sync.Once
	go func() {
		defer close(p.done)
		p.runErr = kipnode.Start(pctx, kipnode.Options{
			Config:     cfg,
			RESTConfig: cp.RESTConfig(),
			Cloud:      backend,
			Log:        slog.New(slog.NewTextHandler(logf, nil)),
			Ready:      func() { once.Do(func() { close(p.ready) }) },
		})
	}()
	return p, nil
}

// waitReady waits for the virtual node to be Ready, the provider to stop, or timeout.
func (p *provider) waitReady(ctx context.Context, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.ready:
		return nil
	case <-p.done:
		return fmt.Errorf("kip's provider stopped before node %s was Ready: %v; see %s", p.node, p.runErr, p.log)
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return fmt.Errorf("node %s was not Ready within %v; see %s", p.node, timeout, p.log)
	}
}

// err returns why the provider stopped.
func (p *provider) err() error { return p.runErr }

// stop ends the provider and waits for it (cells stay; the backend's Teardown removes them).
func (p *provider) stop(ctx context.Context) error {
	p.cancel()
	defer p.logFile.Close()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("kip's provider did not stop in time; see %s", p.log)
	}
}
