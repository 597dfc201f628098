package metrics

import (
	"context"
	"fmt"

	"github.com/kip-dev/kip/internal/cloud"
)

// Launch results, the result label of kip_cell_launches_total.
const (
	ResultSuccess              = "success"
	ResultInsufficientCapacity = "insufficient_capacity"
	ResultInvalidSpec          = "invalid_spec"
	ResultThrottled            = "throttled"
	ResultError                = "error"
)

// instrumentedCloud counts Launch calls; every other method is the wrapped cloud's.
type instrumentedCloud struct {
	cloud.Cloud
	m *Metrics
}

// InstrumentCloud returns c with every Launch counted in kip_cell_launches_total by the
// spec's instance type and the call's result. Each call counts, retries included. The
// wrapper offers only the cloud.Cloud methods and cloud.Tagger's SetTags (an error when c
// cannot tag): type-assert other optional interfaces on c itself.
func (m *Metrics) InstrumentCloud(c cloud.Cloud) cloud.Cloud {
	return &instrumentedCloud{Cloud: c, m: m}
}

func (c *instrumentedCloud) Launch(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	inst, err := c.Cloud.Launch(ctx, spec)
	c.m.launches.WithLabelValues(spec.InstanceType, launchResult(err)).Inc()
	return inst, err
}

// SetTags forwards to the wrapped cloud when it is a cloud.Tagger (warm cells' binding).
func (c *instrumentedCloud) SetTags(ctx context.Context, id string, tags map[string]string) error {
	t, ok := c.Cloud.(cloud.Tagger)
	if !ok {
		return fmt.Errorf("tagging instance %s: the %s backend cannot tag live instances", id, c.Cloud.Name())
	}
	return t.SetTags(ctx, id, tags)
}

// launchResult names how a Launch ended.
func launchResult(err error) string {
	if err == nil {
		return ResultSuccess
	}
	switch cloud.KindOf(err) {
	case cloud.KindInsufficientCapacity:
		return ResultInsufficientCapacity
	case cloud.KindInvalidSpec:
		return ResultInvalidSpec
	case cloud.KindThrottled:
		return ResultThrottled
	}
	return ResultError
}
