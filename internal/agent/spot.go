package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cellapi"
)

// DefaultSpotInterval is how often the agent of a spot cell asks for an interruption notice,
// as AWS recommends (every 5 seconds; the notice comes 2 minutes ahead).
const DefaultSpotInterval = 5 * time.Second

// SpotConfig configures WatchSpot.
type SpotConfig struct {
	// Instance is the bootstrap's; nil (a local cell) watches nothing.
	Instance *cellapi.InstanceBootstrap
	// Interval between asks; DefaultSpotInterval when zero.
	Interval time.Duration
	// Client reaches the metadata service; one with a 2 s timeout when nil.
	Client *http.Client
	Clock  clock.Clock
}

// WatchSpot watches the instance metadata service (IMDSv2) of a spot cell for an
// interruption notice (spot/instance-action) until ctx ends or one comes; the notice then
// rides on every status the agent sends (cellapi.PodStatus.SpotInterruption), so kip stops
// the pod in time. A cell kip did not launch as spot is asked once whether it is
// (instance-life-cycle); a cell that is not spot, or a local one, is never polled.
func (a *Agent) WatchSpot(ctx context.Context, cfg SpotConfig) {
	if cfg.Instance == nil {
		return
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultSpotInterval
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 2 * time.Second}
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	md := &imds{base: strings.TrimRight(cfg.Instance.MetadataURL, "/"), client: cfg.Client}
	if md.base == "" {
		md.base = cellapi.DefaultMetadataURL
	}
	if !cfg.Instance.Spot {
		lc, err := md.get(ctx, "meta-data/instance-life-cycle")
		if err != nil || strings.TrimSpace(string(lc)) != "spot" {
			a.log.Debug("not watching for spot interruptions", "lifeCycle", string(lc), "err", err)
			return
		}
	}
	a.log.Info("spot cell: watching for interruption notices", "metadata", md.base, "every", cfg.Interval)
	for failures := 0; ; {
		n, err := md.instanceAction(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			// Said once, then quietly: the metadata service may be slow to come up.
			if failures++; failures == 1 {
				a.log.Warn("asking for a spot interruption notice; retrying", "err", err)
			} else {
				a.log.Debug("asking for a spot interruption notice", "err", err)
			}
		case n != nil:
			a.log.Warn("spot interruption notice", "action", n.Action, "time", n.Time)
			a.noticeSpot(n)
			return // the notice is final: the instance goes
		}
		t := cfg.Clock.NewTimer(cfg.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}

// noticeSpot records a spot interruption notice and sends the latest status, now carrying
// it, to every watcher.
func (a *Agent) noticeSpot(n *cellapi.SpotInterruption) {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	a.spot = n
	if a.last == nil {
		return // the next pod's first status carries it
	}
	a.last = withSpot(a.last, n)
	for w := range a.watchers {
		w.offer(a.last)
	}
}

// withSpot returns st carrying the notice n (st itself when n is nil or already there).
func withSpot(st *cellapi.PodStatus, n *cellapi.SpotInterruption) *cellapi.PodStatus {
	if st == nil || n == nil || st.SpotInterruption == n {
		return st
	}
	cp := *st
	cp.SpotInterruption = n
	return &cp
}

// spotNotice is the notice seen, if any.
func (a *Agent) spotNotice() *cellapi.SpotInterruption {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	return a.spot
}

// imds is a client of the instance metadata service, IMDSv2: a session token from
// PUT /latest/api/token goes with every GET.
type imds struct {
	base   string
	client *http.Client
	token  string
}

const imdsTokenTTL = "21600"

func (m *imds) refreshToken(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, m.base+"/latest/api/token", nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", imdsTokenTTL)
	resp, err := m.client.Do(req)
	if err != nil {
		return fmt.Errorf("getting a metadata token: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("getting a metadata token: %s", resp.Status)
	}
	m.token = strings.TrimSpace(string(b))
	return nil
}

var errNotFound = errors.New("not found")

// get reads latest/<path>, with a token (a new one when the old is refused); errNotFound
// on 404.
func (m *imds) get(ctx context.Context, path string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		if m.token == "" {
			if err := m.refreshToken(ctx); err != nil {
				return nil, err
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.base+"/latest/"+path, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("X-aws-ec2-metadata-token", m.token)
		resp, err := m.client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("reading metadata %s: %w", path, err)
		}
		b, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusUnauthorized && attempt == 0:
			m.token = "" // expired: once more with a new one
			continue
		case resp.StatusCode == http.StatusNotFound:
			return nil, errNotFound
		case resp.StatusCode != http.StatusOK:
			return nil, fmt.Errorf("reading metadata %s: %s", path, resp.Status)
		case rerr != nil:
			return nil, fmt.Errorf("reading metadata %s: %w", path, rerr)
		}
		return b, nil
	}
}

// instanceAction returns the spot interruption notice, nil while there is none (404).
func (m *imds) instanceAction(ctx context.Context) (*cellapi.SpotInterruption, error) {
	b, err := m.get(ctx, "meta-data/spot/instance-action")
	if errors.Is(err, errNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var n cellapi.SpotInterruption
	if err := json.Unmarshal(b, &n); err != nil {
		return nil, fmt.Errorf("decoding spot/instance-action %q: %w", b, err)
	}
	if n.Action == "" || n.Time.IsZero() {
		return nil, fmt.Errorf("spot/instance-action %q: action and time are required", b)
	}
	return &n, nil
}
