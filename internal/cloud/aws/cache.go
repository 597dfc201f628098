package aws

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/kip-dev/kip/internal/cloud"
)

// launchGrace keeps an instance this backend launched in the cache even when a refresh does
// not return it yet: DescribeInstances is eventually consistent.
const launchGrace = time.Minute

// instanceCache is what the last DescribeInstances said about the cluster's instances, plus
// what this backend's own launches and terminations returned since.
type instanceCache struct {
	mu        sync.Mutex
	byID      map[string]*cloud.Instance
	launchAt  map[string]time.Time // instances this backend launched, when
	refreshed time.Time            // when the last successful refresh started
	failed    time.Time            // when the last failed refresh started
	failErr   error                // and why it failed
	inflight  *refresh
	refreshes int
	// tagged are the tags this backend wrote on live instances (SetTags), each set with
	// when: for launchGrace a refresh that does not show them yet (tags too are eventually
	// consistent) gets them added.
	tagged map[string]setTags
}

type setTags struct {
	tags map[string]string
	at   time.Time
}

type refresh struct {
	done chan struct{}
	err  error
}

func (c *instanceCache) launched(in *cloud.Instance, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// A refresh sets byID but not launchAt: each map may be nil alone.
	if c.byID == nil {
		c.byID = map[string]*cloud.Instance{}
	}
	if c.launchAt == nil {
		c.launchAt = map[string]time.Time{}
	}
	c.byID[in.ID] = copyInstance(in)
	c.launchAt[in.ID] = now
}

// tagsSet records tags this backend wrote on instance id (SetTags).
func (c *instanceCache) tagsSet(id string, tags map[string]string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if in := c.byID[id]; in != nil {
		maps.Copy(in.Tags, tags)
	}
	if c.tagged == nil {
		c.tagged = map[string]setTags{}
	}
	all := maps.Clone(c.tagged[id].tags)
	if all == nil {
		all = map[string]string{}
	}
	maps.Copy(all, tags)
	c.tagged[id] = setTags{tags: all, at: now}
}

// setState records a state this backend learned from a call (TerminateInstances).
func (c *instanceCache) setState(id string, s cloud.State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if in := c.byID[id]; in != nil {
		in.State = s
	}
}

// fresh makes sure the cache is younger than PollInterval: if it is older, one caller
// refreshes it with a paginated DescribeInstances of every instance tagged with the cluster
// and the others wait for that refresh. So the backend sends at most one DescribeInstances
// sweep per PollInterval, whatever the number of cells and callers.
func (b *Backend) fresh(ctx context.Context) error {
	c := &b.cache
	c.mu.Lock()
	if !c.refreshed.IsZero() && b.clk.Since(c.refreshed) < b.cfg.PollInterval {
		c.mu.Unlock()
		return nil
	}
	// A sweep that failed is not repeated before PollInterval either: its error stands.
	if c.failErr != nil && b.clk.Since(c.failed) < b.cfg.PollInterval {
		err := c.failErr
		c.mu.Unlock()
		return err
	}
	if r := c.inflight; r != nil {
		c.mu.Unlock()
		select {
		case <-r.done:
			return r.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r := &refresh{done: make(chan struct{})}
	c.inflight = r
	c.mu.Unlock()
	// The sweep serves every waiting caller, so it does not end with the first caller's
	// context; it has its own deadline.
	go func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), refreshTimeout)
		defer cancel()
		b.refresh(ctx, r)
	}()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// refreshTimeout bounds one DescribeInstances sweep, retries on throttling included.
const refreshTimeout = time.Minute

func (b *Backend) refresh(ctx context.Context, r *refresh) {
	c := &b.cache
	start := b.clk.Now()
	got, err := b.describeCluster(ctx)
	c.mu.Lock()
	if err == nil {
		c.refreshes++
		for id, at := range c.launchAt {
			switch _, ok := got[id]; {
			case ok || start.Sub(at) > launchGrace || c.byID[id] == nil:
				delete(c.launchAt, id)
			default:
				got[id] = c.byID[id]
			}
		}
		for id, t := range c.tagged {
			if start.Sub(t.at) > launchGrace {
				delete(c.tagged, id)
			} else if in := got[id]; in != nil {
				maps.Copy(in.Tags, t.tags)
			}
		}
		c.byID, c.refreshed, c.failErr = got, start, nil
	} else {
		c.failed, c.failErr = start, err
	}
	c.inflight = nil
	c.mu.Unlock()
	r.err = err
	close(r.done)
}

func copyInstance(in *cloud.Instance) *cloud.Instance {
	out := *in
	out.Tags = make(map[string]string, len(in.Tags))
	for k, v := range in.Tags {
		out.Tags[k] = v
	}
	return &out
}

// describeCluster lists every instance tagged with the cluster, terminated ones included.
func (b *Backend) describeCluster(ctx context.Context) (map[string]*cloud.Instance, error) {
	got := map[string]*cloud.Instance{}
	in := &ec2.DescribeInstancesInput{MaxResults: aws.Int32(1000),
		Filters: []types.Filter{{Name: aws.String("tag:" + cloud.TagCluster), Values: []string{b.cfg.ClusterName}}}}
	p := ec2.NewDescribeInstancesPaginator(b.ec2, in)
	for p.HasMorePages() {
		var out *ec2.DescribeInstancesOutput
		err := b.call(ctx, "DescribeInstances", 0, func(ctx context.Context) (err error) {
			out, err = p.NextPage(ctx)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("describing the instances of cluster %s: %w", b.cfg.ClusterName, err)
		}
		for _, r := range out.Reservations {
			for _, i := range r.Instances {
				inst := toInstance(i)
				got[inst.ID] = inst
			}
		}
	}
	return got, nil
}

// Describe returns one instance as of the last refresh, which is at most PollInterval old.
// An instance the last refresh did not see (and this backend did not launch) is NotFound.
func (b *Backend) Describe(ctx context.Context, id string) (*cloud.Instance, error) {
	if err := b.fresh(ctx); err != nil {
		return nil, fmt.Errorf("describing instance %s: %w", id, err)
	}
	b.cache.mu.Lock()
	defer b.cache.mu.Unlock()
	in := b.cache.byID[id]
	if in == nil {
		return nil, cloud.NotFound("instance %s is not a cell of cluster %s", id, b.cfg.ClusterName)
	}
	return copyInstance(in), nil
}

// List returns the cluster's live instances carrying all tags, as of the last refresh.
func (b *Backend) List(ctx context.Context, tags map[string]string) ([]*cloud.Instance, error) {
	if err := b.fresh(ctx); err != nil {
		return nil, fmt.Errorf("listing instances: %w", err)
	}
	b.cache.mu.Lock()
	defer b.cache.mu.Unlock()
	var out []*cloud.Instance
	for _, in := range b.cache.byID {
		if in.State == cloud.StateTerminated || in.State == cloud.StateTerminating {
			continue
		}
		match := true
		for k, v := range tags {
			if got, ok := in.Tags[k]; !ok || got != v {
				match = false
				break
			}
		}
		if match {
			out = append(out, copyInstance(in))
		}
	}
	return out, nil
}

// Refreshes returns how many DescribeInstances sweeps the cache has made.
func (b *Backend) Refreshes() int {
	b.cache.mu.Lock()
	defer b.cache.mu.Unlock()
	return b.cache.refreshes
}
