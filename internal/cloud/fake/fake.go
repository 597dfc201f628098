// Package fake is an in-memory cloud.Cloud for unit tests of the packages that use a cloud:
// it keeps instances in a map, logs every call, lets a test inject the error the next call of a
// method returns, and can be Reset. It passes the cloudtest conformance suite.
package fake

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"

	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/instancetype"
)

// Method names accepted by InjectError and recorded in Call.Method.
const (
	MethodInstanceTypes = "InstanceTypes"
	MethodLaunch        = "Launch"
	MethodDescribe      = "Describe"
	MethodList          = "List"
	MethodTerminate     = "Terminate"
	MethodSetTags       = "SetTags"
)

// Zone is the zone the fake's instances are placed in unless the spec names one.
const Zone = "fake-1a"

// Call is one recorded call. Arg is the LaunchSpec for Launch, the id for Describe and
// Terminate, the tag filter for List and nil for InstanceTypes.
type Call struct {
	Method string
	Arg    any
	Err    error
}

// Fake is an in-memory cloud. The zero value is not usable; call New.
type Fake struct {
	clock   clock.Clock
	catalog []instancetype.InstanceType

	mu        sync.Mutex
	instances map[string]*cloud.Instance
	// byTag indexes instances by "key=value" of each tag they were launched with, so that a
	// List by tags visits only the instances with the rarest of them.
	byTag    map[string][]string
	tokens   map[string]tokenUse // client token → what it launched
	calls    []Call
	injected map[string][]error
	nextID   int
	noLog    bool
}

var (
	_ cloud.Cloud  = (*Fake)(nil)
	_ cloud.Tagger = (*Fake)(nil)
)

// Option configures a Fake.
type Option func(*Fake)

// WithClock sets the clock used for launch times.
func WithClock(c clock.Clock) Option { return func(f *Fake) { f.clock = c } }

// WithCatalog replaces the built-in catalog.
func WithCatalog(types []instancetype.InstanceType) Option {
	return func(f *Fake) { f.catalog = slices.Clone(types) }
}

// WithoutCallLog keeps no call log (Calls and CallCount then report nothing), for long
// simulations (hack/tools/scalekip) whose memory the log would otherwise grow with every call.
// Injected errors still apply.
func WithoutCallLog() Option { return func(f *Fake) { f.noLog = true } }

// New returns an empty fake cloud with a small built-in catalog (see Catalog).
func New(opts ...Option) *Fake {
	f := &Fake{clock: clock.RealClock{}, catalog: Catalog()}
	for _, o := range opts {
		o(f)
	}
	f.Reset()
	return f
}

// Catalog returns the fake's built-in instance types: three on-demand/spot sizes in Zone.
func Catalog() []instancetype.InstanceType {
	mk := func(name string, vcpu float64, mem int64, price float64) instancetype.InstanceType {
		return instancetype.InstanceType{
			Name: name, Arch: "amd64", VCPU: vcpu, MemoryMiB: mem,
			Offerings: []instancetype.Offering{
				{Zone: Zone, Price: price, Available: true},
				{Zone: Zone, Spot: true, Price: price / 3, Available: true},
			},
		}
	}
	return []instancetype.InstanceType{
		mk("fake.small", 1, 1024, 0.01),
		mk("fake.medium", 2, 4096, 0.04),
		mk("fake.large", 4, 16384, 0.16),
	}
}

// Reset forgets every instance, token, logged call and injected error.
func (f *Fake) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.instances = map[string]*cloud.Instance{}
	f.byTag = map[string][]string{}
	f.tokens = map[string]tokenUse{}
	f.calls = nil
	f.injected = map[string][]error{}
	f.nextID = 0
}

// InjectError makes the next call of method (one of the Method constants) return err instead
// of doing anything. Several injections for one method are returned in order.
func (f *Fake) InjectError(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.injected[method] = append(f.injected[method], err)
}

// Calls returns a copy of the call log.
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// CallCount returns how many times method was called.
func (f *Fake) CallCount(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c.Method == method {
			n++
		}
	}
	return n
}

// SetState changes an instance's state behind kip's back, as a cloud would when an instance
// is stopped, preempted or fails. Setting StateTerminated removes it from List.
func (f *Fake) SetState(id string, s cloud.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ok := f.instances[id]
	if !ok {
		return cloud.NotFound("instance %s", id)
	}
	in.State = s
	return nil
}

// Instances returns copies of every instance the fake holds, terminated ones included.
func (f *Fake) Instances() []*cloud.Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*cloud.Instance, 0, len(f.instances))
	for _, id := range slices.Sorted(maps.Keys(f.instances)) {
		out = append(out, clone(f.instances[id]))
	}
	return out
}

// Name implements cloud.Cloud.
func (f *Fake) Name() string { return "fake" }

// begin logs a call and returns the injected error for it, if any. f.mu must be held.
func (f *Fake) begin(method string, arg any) error {
	var err error
	if q := f.injected[method]; len(q) > 0 {
		err, f.injected[method] = q[0], q[1:]
	}
	if !f.noLog {
		f.calls = append(f.calls, Call{Method: method, Arg: arg, Err: err})
	}
	return err
}

// InstanceTypes implements cloud.Cloud.
func (f *Fake) InstanceTypes(ctx context.Context) ([]instancetype.InstanceType, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(MethodInstanceTypes, nil); err != nil {
		return nil, err
	}
	out := slices.Clone(f.catalog)
	for i := range out {
		out[i].Offerings = slices.Clone(out[i].Offerings)
	}
	return out, nil
}

// Launch implements cloud.Cloud. Instances start in StateRunning with an address in
// 10.0.0.0/8.
func (f *Fake) Launch(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var logged any
	if !f.noLog {
		logged = cloneSpec(spec)
	}
	if err := f.begin(MethodLaunch, logged); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("launching cell %s: %w", spec.CellID, err)
	}
	if spec.ClientToken != "" {
		if use, ok := f.tokens[spec.ClientToken]; ok {
			if !sameLaunch(use.spec, spec) {
				return nil, cloud.InvalidSpec("launching cell %s: IdempotentParameterMismatch: client token %s was used with other arguments (by instance %s)",
					spec.CellID, spec.ClientToken, use.id)
			}
			return clone(f.instances[use.id]), nil
		}
	}
	if spec.CellID == "" {
		return nil, cloud.InvalidSpec("launch spec: field CellID is empty")
	}
	idx := slices.IndexFunc(f.catalog, func(it instancetype.InstanceType) bool { return it.Name == spec.InstanceType })
	if idx < 0 {
		return nil, cloud.InvalidSpec("launch spec: field InstanceType: unknown instance type %q", spec.InstanceType)
	}
	zone := spec.Zone
	if zone == "" {
		zone = Zone
	}
	f.nextID++
	n := f.nextID
	in := &cloud.Instance{
		ID:           fmt.Sprintf("fake-%08x", n),
		CellID:       spec.CellID,
		InstanceType: spec.InstanceType,
		Spot:         spec.Spot,
		Zone:         zone,
		State:        cloud.StateRunning,
		PrivateIP:    fmt.Sprintf("10.%d.%d.%d", (n>>16)&0xff, (n>>8)&0xff, n&0xff),
		Tags:         maps.Clone(spec.Tags),
		LaunchTime:   f.clock.Now(),
	}
	if in.Tags == nil {
		in.Tags = map[string]string{}
	}
	f.instances[in.ID] = in
	for k, v := range in.Tags {
		f.byTag[k+"="+v] = append(f.byTag[k+"="+v], in.ID)
	}
	if spec.ClientToken != "" {
		// sameLaunch ignores the bootstrap data: do not keep it.
		kept := cloneSpec(spec)
		kept.BootstrapData = nil
		f.tokens[spec.ClientToken] = tokenUse{id: in.ID, spec: kept}
	}
	return clone(in), nil
}

// Describe implements cloud.Cloud. Like EC2, it keeps describing terminated instances with
// StateTerminated (until Reset); unknown ids give NotFound.
func (f *Fake) Describe(ctx context.Context, id string) (*cloud.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(MethodDescribe, id); err != nil {
		return nil, err
	}
	in, ok := f.instances[id]
	if !ok {
		return nil, cloud.NotFound("describing instance %s", id)
	}
	return clone(in), nil
}

// List implements cloud.Cloud.
func (f *Fake) List(ctx context.Context, tags map[string]string) ([]*cloud.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(MethodList, maps.Clone(tags)); err != nil {
		return nil, err
	}
	// Visit only the instances carrying the rarest of the wanted tags, then sort the matches:
	// a List for one pod's instances stays cheap among the 10,000 of a scale simulation.
	var out []*cloud.Instance
	visit := func(in *cloud.Instance) {
		if in.State != cloud.StateTerminated && matches(in.Tags, tags) {
			out = append(out, clone(in))
		}
	}
	if ids, ok := f.rarest(tags); ok {
		for _, id := range ids {
			visit(f.instances[id])
		}
	} else {
		for _, in := range f.instances {
			visit(in)
		}
	}
	slices.SortFunc(out, func(a, b *cloud.Instance) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Terminate implements cloud.Cloud. Like EC2, the instance stays describable with
// StateTerminated, terminating it again succeeds, and its client token stays spent (a Launch
// with it returns the terminated instance). Unknown ids give NotFound.
func (f *Fake) Terminate(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(MethodTerminate, id); err != nil {
		return err
	}
	in, ok := f.instances[id]
	if !ok {
		return cloud.NotFound("terminating instance %s", id)
	}
	in.State = cloud.StateTerminated
	return nil
}

// SetTags implements cloud.Tagger. Terminated and unknown instances give NotFound.
func (f *Fake) SetTags(ctx context.Context, id string, tags map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(MethodSetTags, maps.Clone(tags)); err != nil {
		return err
	}
	in, ok := f.instances[id]
	if !ok || in.State == cloud.StateTerminated {
		return cloud.NotFound("tagging instance %s", id)
	}
	for k, v := range tags {
		// Index the new values; entries of values replaced stay, and List checks each
		// instance's tags anyway.
		if key := k + "=" + v; !slices.Contains(f.byTag[key], id) {
			f.byTag[key] = append(f.byTag[key], id)
		}
	}
	maps.Copy(in.Tags, tags)
	return nil
}

// rarest returns the ids of the instances launched with the least common of the wanted tags;
// false when no tag is wanted. f.mu must be held.
func (f *Fake) rarest(tags map[string]string) ([]string, bool) {
	var best []string
	found := false
	for k, v := range tags {
		ids := f.byTag[k+"="+v]
		if !found || len(ids) < len(best) {
			best, found = ids, true
		}
	}
	return best, found
}

func matches(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func clone(in *cloud.Instance) *cloud.Instance {
	out := *in
	out.Tags = maps.Clone(in.Tags)
	return &out
}

// tokenUse is the launch a client token made: the instance and the spec it was made with.
type tokenUse struct {
	id   string
	spec cloud.LaunchSpec
}

// sameLaunch reports whether two specs ask for the same launch, as EC2 compares the
// arguments of requests that reuse a client token, except for the bootstrap data: the
// cloud.Cloud contract has a reused token with other bootstrap data (a restarted kip issues
// the cell a new certificate) return the earlier instance, as the AWS backend does by adopting
// it. Nil and empty tags and groups are the same request.
func sameLaunch(a, b cloud.LaunchSpec) bool {
	norm := func(s cloud.LaunchSpec) cloud.LaunchSpec {
		s = cloneSpec(s)
		s.BootstrapData = nil
		if len(s.Tags) == 0 {
			s.Tags = nil
		}
		if len(s.SecurityGroups) == 0 {
			s.SecurityGroups = nil
		}
		return s
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

func cloneSpec(s cloud.LaunchSpec) cloud.LaunchSpec {
	s.Tags = maps.Clone(s.Tags)
	s.BootstrapData = slices.Clone(s.BootstrapData)
	s.SecurityGroups = slices.Clone(s.SecurityGroups)
	return s
}
