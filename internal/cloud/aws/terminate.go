package aws

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/kip-dev/kip/internal/cloud"
)

var instanceIDRe = regexp.MustCompile(`^i-[0-9a-f]{8}([0-9a-f]{9})?$`)

// terminateTimeout bounds one TerminateInstances batch, retries on throttling included.
const terminateTimeout = 2 * time.Minute

// Terminate stops an instance. Requests are collected for TerminateWindow and sent as one
// TerminateInstances of up to 1000 ids. Terminating an instance that is already terminating
// or terminated succeeds; an id EC2 does not know (any more) is NotFound.
func (b *Backend) Terminate(ctx context.Context, id string) error {
	if !instanceIDRe.MatchString(id) {
		return cloud.NotFound("terminating instance %q: not an EC2 instance id", id)
	}
	if err := b.term.terminate(ctx, id); err != nil {
		return fmt.Errorf("terminating instance %s: %w", id, err)
	}
	return nil
}

// SetTags writes tags on instance id in one CreateTags call, which EC2 applies together (a
// standby cell's binding to its pod, internal/cells). An instance that is not a live cell of
// the cluster (as of the last refresh, and this backend's own terminations) is NotFound: EC2
// itself would tag a terminated instance.
func (b *Backend) SetTags(ctx context.Context, id string, tags map[string]string) error {
	if !instanceIDRe.MatchString(id) {
		return cloud.NotFound("tagging instance %q: not an EC2 instance id", id)
	}
	in, err := b.Describe(ctx, id)
	if err != nil {
		return fmt.Errorf("tagging instance %s: %w", id, err)
	}
	if in.State == cloud.StateTerminating || in.State == cloud.StateTerminated {
		return cloud.NotFound("tagging instance %s: it is %s", id, in.State)
	}
	if len(tags) == 0 {
		return nil
	}
	keys := slices.Sorted(maps.Keys(tags))
	req := &ec2.CreateTagsInput{Resources: []string{id}, Tags: make([]types.Tag, 0, len(keys))}
	for _, k := range keys {
		req.Tags = append(req.Tags, types.Tag{Key: aws.String(k), Value: aws.String(tags[k])})
	}
	err = b.call(ctx, "CreateTags", 1, func(ctx context.Context) error {
		_, err := b.ec2.CreateTags(ctx, req)
		return err
	})
	if err != nil {
		return fmt.Errorf("tagging instance %s: %w", id, err)
	}
	b.cache.tagsSet(id, tags, b.clk.Now())
	return nil
}

var _ cloud.Tagger = (*Backend)(nil)

// terminator batches terminations.
type terminator struct {
	b         *Backend
	mu        sync.Mutex
	pending   map[string][]chan error
	scheduled bool
}

func newTerminator(b *Backend) *terminator {
	return &terminator{b: b, pending: map[string][]chan error{}}
}

func (t *terminator) terminate(ctx context.Context, id string) error {
	ch := make(chan error, 1)
	t.mu.Lock()
	t.pending[id] = append(t.pending[id], ch)
	if !t.scheduled {
		t.scheduled = true
		time.AfterFunc(t.b.cfg.TerminateWindow, t.flush)
	}
	full := len(t.pending) >= t.b.limits.maxTerminateBatch()
	t.mu.Unlock()
	if full {
		go t.flush()
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flush sends what is pending, at most one batch; it schedules itself again for the rest.
func (t *terminator) flush() {
	t.mu.Lock()
	batch := map[string][]chan error{}
	for id, chs := range t.pending {
		if len(batch) == t.b.limits.maxTerminateBatch() {
			break
		}
		batch[id] = chs
		delete(t.pending, id)
	}
	more := len(t.pending) > 0
	t.scheduled = more
	t.mu.Unlock()
	if more {
		go t.flush()
	}
	if len(batch) > 0 {
		t.send(batch)
	}
}

var anyInstanceIDRe = regexp.MustCompile(`i-[0-9a-f]{8,17}`)

// send terminates a batch and answers every waiter. When EC2 refuses the batch because some
// ids do not exist, those get NotFound and the rest is sent again.
func (t *terminator) send(batch map[string][]chan error) {
	b := t.b
	ctx, cancel := context.WithTimeout(context.Background(), terminateTimeout)
	defer cancel()
	answer := func(id string, err error) {
		for _, ch := range batch[id] {
			ch <- err
		}
		delete(batch, id)
	}
	for len(batch) > 0 {
		ids := make([]string, 0, len(batch))
		for id := range batch {
			ids = append(ids, id)
		}
		var out *ec2.TerminateInstancesOutput
		err := b.call(ctx, "TerminateInstances", len(ids), func(ctx context.Context) (err error) {
			out, err = b.ec2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids})
			return err
		})
		if err == nil {
			for _, c := range out.TerminatingInstances {
				if c.CurrentState != nil {
					b.cache.setState(aws.ToString(c.InstanceId), toInstance(types.Instance{State: c.CurrentState}).State)
				}
			}
			for _, id := range ids {
				answer(id, nil)
			}
			return
		}
		if !cloud.IsNotFound(err) {
			for _, id := range ids {
				answer(id, err)
			}
			return
		}
		missing := anyInstanceIDRe.FindAllString(err.Error(), -1)
		found := false
		for _, id := range missing {
			if _, ok := batch[id]; ok {
				found = true
				answer(id, cloud.Wrap(cloud.KindNotFound, err, "instance %s does not exist", id))
			}
		}
		if !found { // unparseable message: find the culprits one id at a time
			if len(ids) == 1 {
				answer(ids[0], err)
				continue
			}
			for _, id := range ids {
				t.send(map[string][]chan error{id: batch[id]})
				delete(batch, id)
			}
		}
	}
}
