package aws_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kip-dev/kip/internal/cloud"
	kipaws "github.com/kip-dev/kip/internal/cloud/aws"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2limits"
	"github.com/kip-dev/kip/internal/cloud/cloudtest"
	"github.com/kip-dev/kip/internal/instancetype"
)

const cluster = "kiptest"

// env is an EC2 fake served over HTTP.
type env struct {
	fake *ec2fake.Server
	url  string
}

func newEnv(t testing.TB, opts ec2fake.Options) *env {
	t.Helper()
	f := ec2fake.New(opts)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return &env{fake: f, url: srv.URL}
}

func (e *env) config() kipaws.Config {
	return kipaws.Config{
		Region:          "us-east-1",
		SubnetID:        ec2fake.SubnetA,
		ClusterName:     cluster,
		ImageOwners:     []string{ec2fake.ImageOwner},
		ImageFilters:    map[string][]string{"name": {"kip-cell-*"}},
		Endpoint:        e.url,
		Credentials:     credentials.NewStaticCredentialsProvider("AKIDKIPTEST", "secret", ""),
		PollInterval:    20 * time.Millisecond,
		TerminateWindow: 5 * time.Millisecond,
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// backend makes a Backend against the fake; mod adjusts its config.
func (e *env) backend(t testing.TB, mod func(*kipaws.Config)) *kipaws.Backend {
	t.Helper()
	cfg := e.config()
	if mod != nil {
		mod(&cfg)
	}
	b, err := kipaws.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("kipaws.New: %v", err)
	}
	return b
}

func spec(cell string) cloud.LaunchSpec {
	return cloud.LaunchSpec{
		CellID: cell, ClientToken: "tok-" + cell, InstanceType: "t3.nano",
		Tags: map[string]string{cloud.TagNode: "kip-node", cloud.TagPodNamespace: "default", cloud.TagPodName: "p-" + cell,
			cloud.TagPodUID: "uid-" + cell, cloud.TagCellID: cell},
		BootstrapData: []byte(`{"cell":"` + cell + `"}`),
	}
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestConformance(t *testing.T) {
	e := newEnv(t, ec2fake.Options{PendingDelay: 50 * time.Millisecond})
	cloudtest.Run(t, cloudtest.Harness{
		New:          func(t *testing.T) cloud.Cloud { return e.backend(t, nil) },
		InstanceType: "t3.nano",
		Tags:         map[string]string{cloud.TagCluster: cluster},
		Concurrency:  16,
	})
}

func TestSetUp(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	b := e.backend(t, nil)
	b2 := e.backend(t, nil) // a second kip start finds and keeps the group
	if b.Zone() != "us-east-1a" {
		t.Errorf("zone = %q, want the subnet's us-east-1a", b.Zone())
	}
	if b.SecurityGroupID() == "" || b.SecurityGroupID() != b2.SecurityGroupID() {
		t.Errorf("security groups %q and %q, want one group found twice", b.SecurityGroupID(), b2.SecurityGroupID())
	}
	var found *ec2fake.SecurityGroup
	for _, g := range e.fake.SecurityGroups() {
		if g.ID == b.SecurityGroupID() {
			found = &g
		}
	}
	if found == nil {
		t.Fatalf("group %s not in the fake", b.SecurityGroupID())
	}
	want := []string{"tcp 6421-6421 " + ec2fake.VPCCIDR, "-1 0-0 " + ec2fake.VPCCIDR}
	if found.Name != "kip-"+cluster+"-cells" || found.Tags[cloud.TagCluster] != cluster || strings.Join(found.Ingress, ";") != strings.Join(want, ";") {
		t.Errorf("group = %+v, want name kip-%s-cells, cluster tag, ingress %v", *found, cluster, want)
	}
	if n := e.fake.Calls("CreateSecurityGroup"); n != 1 {
		t.Errorf("CreateSecurityGroup called %d times for two starts, want 1", n)
	}
	if n := e.fake.Calls("AuthorizeSecurityGroupIngress"); n != 1 {
		t.Errorf("AuthorizeSecurityGroupIngress called %d times for two starts, want 1", n)
	}
	// The newest x86_64 image of the owner, not another owner's newer one.
	inst, err := b.Launch(ctxT(t, 10*time.Second), spec("img"))
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range e.fake.Instances() {
		if in.ID == inst.ID && in.ImageID != imageID(t, e, "kip-cell-2026.03.1-x86_64") {
			t.Errorf("launched from %s, want the newest kip-cell x86_64 image", in.ImageID)
		}
	}
}

// imageID finds a seeded image by name.
func imageID(t *testing.T, e *env, name string) string {
	t.Helper()
	for _, in := range e.fake.Images() {
		if in.Name == name {
			return in.ID
		}
	}
	t.Fatalf("no image %s", name)
	return ""
}

func TestSetUpErrors(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	sameZone, err := e.fake.AddSubnet("10.0.32.0/20", "us-east-1a", false)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mod  func(*kipaws.Config)
		want string
	}{
		{"no cluster", func(c *kipaws.Config) { c.ClusterName = "" }, "ClusterName"},
		{"unknown subnet", func(c *kipaws.Config) { c.SubnetID = "subnet-0000000000000dead" }, "subnet-0000000000000dead"},
		{"subnet outside the VPC", func(c *kipaws.Config) { c.VPCID = "vpc-0000000000000dead" }, "not in the configured VPC"},
		{"no image matches", func(c *kipaws.Config) { c.ImageFilters = map[string][]string{"name": {"nothing-*"}} }, "no available image"},
		{"no image configured", func(c *kipaws.Config) { c.ImageOwners, c.ImageFilters = nil, nil }, "imageID"},
		{"unknown image", func(c *kipaws.Config) { c.ImageID = "ami-0000000000000dead" }, "ami-0000000000000dead"},
		{"unknown second subnet", func(c *kipaws.Config) { c.SubnetIDs = []string{"subnet-0000000000000dead"} }, "subnet-0000000000000dead"},
		{"two subnets in one zone", func(c *kipaws.Config) { c.SubnetIDs = []string{sameZone} }, "both in us-east-1a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.config()
			tc.mod(&cfg)
			_, err := kipaws.New(ctxT(t, 10*time.Second), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// TestCrashBetweenLaunchAndRecord: kip launches, dies before recording the instance, restarts
// and launches the same cell again: one instance.
func TestCrashBetweenLaunchAndRecord(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	ctx := ctxT(t, 10*time.Second)
	first, err := e.backend(t, nil).Launch(ctx, spec("crash"))
	if err != nil {
		t.Fatal(err)
	}
	second, err := e.backend(t, nil).Launch(ctx, spec("crash"))
	if err != nil {
		t.Fatal(err)
	}
	if first.ID != second.ID {
		t.Errorf("relaunch after a crash made %s, first launch made %s", second.ID, first.ID)
	}
	if n := len(e.fake.Instances()); n != 1 {
		t.Errorf("the fake holds %d instances, want 1", n)
	}
}

// TestRelaunchWithNewBootstrapAdopts: a restarted kip relaunching a cell sends the same
// client token with new user data (the cell's certificate is issued afresh); EC2 answers
// IdempotentParameterMismatch, and the backend returns the instance the first launch made,
// as the cloud contract promises, instead of failing the pod.
func TestRelaunchWithNewBootstrapAdopts(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	ctx := ctxT(t, 10*time.Second)
	s := spec("restarted")
	s.BootstrapData = []byte(`{"cert":"first"}`)
	first, err := e.backend(t, nil).Launch(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	s.BootstrapData = []byte(`{"cert":"second"}`)
	second, err := e.backend(t, nil).Launch(ctx, s)
	if err != nil {
		t.Fatalf("relaunch with new user data under the same client token: %v", err)
	}
	if first.ID != second.ID {
		t.Errorf("relaunch returned %s, the first launch made %s", second.ID, first.ID)
	}
	if n := len(e.fake.Instances()); n != 1 {
		t.Errorf("the fake holds %d instances, want 1", n)
	}
	other := spec("restarted")
	other.ClientToken, other.BootstrapData = "another-token", []byte(`{"cert":"third"}`)
	if third, err := e.backend(t, nil).Launch(ctx, other); err != nil || third.ID == first.ID {
		t.Errorf("a launch with another token = %v, %v; want a new instance", third, err)
	}
}

func TestLaunchSpecMapping(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	b := e.backend(t, func(c *kipaws.Config) {
		c.PodSecurityGroups, c.PodInstanceProfiles = []string{ec2fake.DefaultGroupID}, []string{ec2fake.InstanceProfile}
	})
	ctx := ctxT(t, 10*time.Second)
	s := spec("map")
	s.Spot, s.PrivateIPOnly, s.VolumeSizeGiB = true, true, 20
	s.InstanceProfile = ec2fake.InstanceProfile
	s.SecurityGroups = []string{ec2fake.DefaultGroupID}
	s.Tags["team"] = "blue"
	inst, err := b.Launch(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if !inst.Spot || inst.PublicIP != "" || inst.CellID != "map" || inst.Zone != "us-east-1a" {
		t.Errorf("Launch = %+v", inst)
	}
	got := e.fake.Instances()[0]
	ud, _ := base64.StdEncoding.DecodeString(got.UserData)
	checks := []struct {
		what      string
		got, want any
	}{
		{"user data", string(ud), string(s.BootstrapData)},
		{"spot", got.Spot, true},
		{"public IP", got.PublicIP, ""},
		{"root volume", got.RootVolumeGiB, 20},
		{"profile", got.Profile, ec2fake.InstanceProfile},
		{"groups", strings.Join(got.SecurityGroups, ","), b.SecurityGroupID() + "," + ec2fake.DefaultGroupID},
		{"client token", got.ClientToken, "tok-map"},
		{"subnet", got.SubnetID, ec2fake.SubnetA},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	// Every instance and its volume carry the tags.
	want := map[string]string{"Name": "kip-map", cloud.TagCluster: cluster, "team": "blue"}
	for k, v := range s.Tags {
		want[k] = v
	}
	for k, v := range want {
		if got.Tags[k] != v || got.VolumeTags[k] != v {
			t.Errorf("tag %s: instance %q, volume %q, want %q", k, got.Tags[k], got.VolumeTags[k], v)
		}
	}
}

func TestLaunchRefusals(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	b := e.backend(t, func(c *kipaws.Config) {
		// Pods may name these, so that EC2's own refusals are reached.
		c.PodSecurityGroups = []string{"web", "sg-0000000000000dead", "sg-00000001", "sg-00000002", "sg-00000003", "sg-00000004", "sg-00000005"}
		c.PodInstanceProfiles = []string{"nope"}
	})
	ctx := ctxT(t, 10*time.Second)
	tests := []struct {
		name string
		mod  func(*cloud.LaunchSpec)
		kind cloud.Kind
		want string
	}{
		{"user data at the limit", func(s *cloud.LaunchSpec) { s.BootstrapData = make([]byte, 12288) }, cloud.KindUnknown, ""},
		{"user data over the limit", func(s *cloud.LaunchSpec) { s.BootstrapData = make([]byte, 12289) }, cloud.KindInvalidSpec, "bootstrapData: 12289 bytes are 16388 base64-encoded; EC2 user data is limited to 16384"},
		{"unknown type", func(s *cloud.LaunchSpec) { s.InstanceType = "x9.huge" }, cloud.KindInvalidSpec, "instanceType"},
		{"type the region lacks", func(s *cloud.LaunchSpec) { s.InstanceType = "m5.24xlarge" }, cloud.KindInvalidSpec, "InvalidParameterValue"},
		{"other zone", func(s *cloud.LaunchSpec) { s.Zone = "us-east-1b" }, cloud.KindInvalidSpec, "zone"},
		{"bad group id", func(s *cloud.LaunchSpec) { s.SecurityGroups = []string{"web"} }, cloud.KindInvalidSpec, "securityGroups"},
		{"unknown group", func(s *cloud.LaunchSpec) { s.SecurityGroups = []string{"sg-0000000000000dead"} }, cloud.KindInvalidSpec, "InvalidGroup.NotFound"},
		{"too many groups", func(s *cloud.LaunchSpec) {
			s.SecurityGroups = []string{"sg-00000001", "sg-00000002", "sg-00000003", "sg-00000004", "sg-00000005"}
		}, cloud.KindInvalidSpec, "securityGroups: 6 groups"},
		{"unknown profile", func(s *cloud.LaunchSpec) { s.InstanceProfile = "nope" }, cloud.KindInvalidSpec, "iamInstanceProfile"},
		{"reserved tag", func(s *cloud.LaunchSpec) { s.Tags["aws:x"] = "y" }, cloud.KindInvalidSpec, "tags"},
		{"other cluster", func(s *cloud.LaunchSpec) { s.Tags[cloud.TagCluster] = "other" }, cloud.KindInvalidSpec, "tags[kip.dev/cluster]"},
		{"long token", func(s *cloud.LaunchSpec) { s.ClientToken = strings.Repeat("t", 65) }, cloud.KindInvalidSpec, "clientToken"},
		{"negative volume", func(s *cloud.LaunchSpec) { s.VolumeSizeGiB = -1 }, cloud.KindInvalidSpec, "volumeSizeGiB"},
		{"unknown image", func(s *cloud.LaunchSpec) { s.Image = "ami-0000000000000dead" }, cloud.KindInvalidSpec, "ami-0000000000000dead"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := spec(fmt.Sprintf("refuse%d", i))
			tc.mod(&s)
			before := len(e.fake.Instances())
			inst, err := b.Launch(ctx, s)
			if tc.kind == cloud.KindUnknown {
				if err != nil {
					t.Fatalf("Launch: %v", err)
				}
				return
			}
			if cloud.KindOf(err) != tc.kind || !strings.Contains(err.Error(), tc.want) || inst != nil {
				t.Fatalf("Launch = %v, %v; want a %v error mentioning %q", inst, err, tc.kind, tc.want)
			}
			if after := len(e.fake.Instances()); after != before {
				t.Errorf("a refused launch left %d instances", after-before)
			}
		})
	}
	if n := e.fake.Calls("RunInstances"); n != 4 { // at-limit + the three refused by EC2 itself
		t.Errorf("RunInstances calls = %d, want 4: checks the backend can make must not reach EC2", n)
	}
}

func TestCapacityFallback(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	clk := clocktesting.NewFakeClock(time.Now())
	b := e.backend(t, func(c *kipaws.Config) { c.Clock = clk; c.CapacityTTL = time.Minute })
	ctx := ctxT(t, 10*time.Second)
	e.fake.SetInsufficientCapacity("t3.nano", "us-east-1a", true)

	_, err := b.Launch(ctx, spec("ice0"))
	if !cloud.IsInsufficientCapacity(err) || !strings.Contains(err.Error(), "InsufficientInstanceCapacity") {
		t.Fatalf("Launch of a type without capacity: %v, want InsufficientCapacity", err)
	}
	if n := e.fake.Calls("RunInstances"); n != 1 {
		t.Errorf("RunInstances calls = %d; the SDK must not retry capacity errors", n)
	}
	// Fall back as the cells manager does: the next type on a capacity error.
	var inst *cloud.Instance
	for _, typ := range []string{"t3.nano", "t3.micro"} {
		s := spec("ice1")
		s.InstanceType = typ
		if inst, err = b.Launch(ctx, s); !cloud.IsInsufficientCapacity(err) {
			break
		}
	}
	if err != nil || inst.InstanceType != "t3.micro" {
		t.Fatalf("LaunchWithFallback = %v, %v; want a t3.micro", inst, err)
	}
	if n := e.fake.Calls("RunInstances"); n != 2 {
		t.Errorf("RunInstances calls = %d, want 2: the remembered t3.nano must not be asked again", n)
	}
	avail := func(name string, spot bool) bool {
		types, err := b.InstanceTypes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range types {
			if it.Name == name {
				for _, o := range it.Offerings {
					if o.Spot == spot {
						return o.Available
					}
				}
			}
		}
		t.Fatalf("%s not in InstanceTypes", name)
		return false
	}
	if avail("t3.nano", false) || !avail("t3.nano", true) || !avail("t3.micro", false) {
		t.Errorf("after the capacity error: t3.nano on-demand available %v (want false), spot %v (want true), t3.micro %v (want true)",
			avail("t3.nano", false), avail("t3.nano", true), avail("t3.micro", false))
	}
	e.fake.SetInsufficientCapacity("t3.nano", "us-east-1a", false)
	clk.Step(time.Minute)
	if !avail("t3.nano", false) {
		t.Errorf("t3.nano still unavailable after CapacityTTL")
	}
	if _, err := b.Launch(ctx, spec("ice2")); err != nil {
		t.Errorf("Launch after CapacityTTL: %v", err)
	}
}

func TestTerminateBatchedAndIdempotent(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	b := e.backend(t, func(c *kipaws.Config) { c.TerminateWindow = 50 * time.Millisecond })
	ctx := ctxT(t, 20*time.Second)
	const n = 40
	var ids []string
	for i := range n {
		in, err := b.Launch(ctx, spec(fmt.Sprintf("t%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, in.ID)
	}
	terminateAll := func(ids []string) []error {
		errs := make([]error, len(ids))
		var wg sync.WaitGroup
		for i, id := range ids {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = b.Terminate(ctx, id) }()
		}
		wg.Wait()
		return errs
	}
	for i, err := range terminateAll(ids) {
		if err != nil {
			t.Errorf("Terminate(%s): %v", ids[i], err)
		}
	}
	calls := e.fake.Calls("TerminateInstances")
	if calls < 1 || calls > 3 {
		t.Errorf("%d concurrent terminations took %d TerminateInstances calls, want 1 (at most 3 if the window split them)", n, calls)
	}
	// Again, plus an id EC2 never knew, in the same batch: the known ones succeed, the other is NotFound.
	unknown := "i-0000000000000beef"
	errs := terminateAll(append(ids[:5:5], unknown))
	for i, err := range errs[:5] {
		if err != nil {
			t.Errorf("second Terminate(%s): %v", ids[i], err)
		}
	}
	if !cloud.IsNotFound(errs[5]) {
		t.Errorf("Terminate(%s): %v, want NotFound", unknown, errs[5])
	}
	if err := b.Terminate(ctx, "not-an-id"); !cloud.IsNotFound(err) {
		t.Errorf("Terminate of a malformed id: %v, want NotFound", err)
	}
	list, err := e.backend(t, nil).List(ctx, map[string]string{cloud.TagCluster: cluster})
	if err != nil || len(list) != 0 {
		t.Errorf("List after terminating everything = %d instances, %v", len(list), err)
	}
}

// TestDescribeCallsPerPollInterval: however many cells and callers, the backend sends at most
// one DescribeInstances per poll interval.
func TestDescribeCallsPerPollInterval(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	clk := clocktesting.NewFakeClock(time.Now())
	b := e.backend(t, func(c *kipaws.Config) { c.Clock = clk; c.PollInterval = 5 * time.Second })
	ctx := ctxT(t, 30*time.Second)
	const cells, callers, intervals = 300, 50, 10
	var ids []string
	for i := range cells {
		in, err := b.Launch(ctx, spec(fmt.Sprintf("d%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, in.ID)
	}
	before := e.fake.Calls("DescribeInstances")
	for range intervals {
		var wg sync.WaitGroup
		for c := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 20 {
					id := ids[(c*20+j)%cells]
					if in, err := b.Describe(ctx, id); err != nil || in.ID != id {
						t.Errorf("Describe(%s) = %v, %v", id, in, err)
						return
					}
				}
				if l, err := b.List(ctx, map[string]string{cloud.TagCluster: cluster}); err != nil || len(l) != cells {
					t.Errorf("List = %d instances, %v; want %d", len(l), err, cells)
				}
			}()
		}
		wg.Wait()
		clk.Step(5 * time.Second)
	}
	calls := e.fake.Calls("DescribeInstances") - before
	t.Logf("%d cells, %d callers x 21 reads, %d poll intervals: %d DescribeInstances calls", cells, callers, intervals, calls)
	if calls > intervals {
		t.Errorf("DescribeInstances calls = %d over %d poll intervals, want at most one per interval", calls, intervals)
	}
}

// TestThousandCellsUnderThrottling launches 1,000 cells at once against a fake enforcing EC2's
// token buckets (scaled so that the test takes seconds): no throttling error reaches a caller.
func TestThousandCellsUnderThrottling(t *testing.T) {
	if testing.Short() {
		t.Skip("launches 1,000 cells; skipped with -short")
	}
	tests := []struct {
		name string
		// fake are the buckets the fake enforces, EC2's scaled so that the test takes seconds;
		// client the backend's own.
		fake   ec2limits.Limits
		client ec2limits.Limits
		// throttledAtFake says whether the fake is expected to refuse calls: with client
		// buckets above the fake's, the backend's retries absorb the refusals; with buckets
		// below, (almost) none happen: requests that a stalled machine delays still reach the
		// fake bunched together, so up to 2% are tolerated, and absorbed like the rest.
		throttledAtFake bool
	}{
		// RunInstances: the fake allows EC2's 1000 burst and 40/s (EC2's 2/s sped up 20 times),
		// the backend asks for 800 and 32/s. (Speeding refills up more would shrink the 200
		// tokens of slack to less than a stall of a loaded machine.)
		{"client buckets below EC2's", ec2limits.Published().Scaled(1, 20), kipaws.DefaultLimits().Scaled(1, 20), false},
		// RunInstances: the fake allows 100 burst and 200/s, the backend asks for 800 and 1600/s.
		{"client buckets above EC2's", ec2limits.Published().Scaled(0.1, 100), kipaws.DefaultLimits().Scaled(1, 1000), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, ec2fake.Options{Limits: &tc.fake})
			b := e.backend(t, func(c *kipaws.Config) { c.Limits = &tc.client; c.PollInterval = 100 * time.Millisecond })
			ctx := ctxT(t, 2*time.Minute)
			const n = 1000
			errs := make([]error, n)
			var wg sync.WaitGroup
			start := time.Now()
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = b.Launch(ctx, spec(fmt.Sprintf("k%d", i)))
				}()
			}
			wg.Wait()
			failed := 0
			for i, err := range errs {
				if err != nil {
					failed++
					if failed <= 5 {
						t.Errorf("Launch %d: %v", i, err)
					}
				}
			}
			insts := len(e.fake.Instances())
			t.Logf("%d launches in %v: %d failed, %d instances, %d RunInstances calls, %d refused by the fake, %d backend back-offs",
				n, time.Since(start).Round(time.Millisecond), failed, insts, e.fake.Calls("RunInstances"), e.fake.TotalThrottled(), b.Throttled())
			if insts != n {
				t.Errorf("the fake holds %d instances, want %d", insts, n)
			}
			for _, a := range ec2fake.Actions() {
				if n := e.fake.Throttled(a); n > 0 {
					t.Logf("fake refused %d %s calls", n, a)
				}
			}
			refused := e.fake.TotalThrottled()
			if tc.throttledAtFake && refused == 0 {
				t.Errorf("the fake throttled no call: the retry path was not exercised")
			}
			if !tc.throttledAtFake && refused > n/50 {
				t.Errorf("the fake throttled %d calls with client buckets below its own, want at most %d", refused, n/50)
			}
		})
	}
}

func TestIMDSDiscovery(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	const mac = "0e:11:22:33:44:55"
	meta := map[string]string{
		"/latest/meta-data/mac": mac,
		"/latest/meta-data/network/interfaces/macs/" + mac + "/subnet-id": ec2fake.SubnetB,
		"/latest/meta-data/network/interfaces/macs/" + mac + "/vpc-id":    ec2fake.VPCID,
		"/latest/meta-data/placement/region":                              "us-east-1",
		"/latest/dynamic/instance-identity/document":                      `{"region":"us-east-1","availabilityZone":"us-east-1b"}`,
	}
	var tokened atomic.Bool
	imdsSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
			tokened.Store(true)
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
			io.WriteString(w, "token-1")
			return
		}
		if r.Header.Get("X-Aws-Ec2-Metadata-Token") != "token-1" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		v, ok := meta[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, v)
	}))
	t.Cleanup(imdsSrv.Close)
	cfg := e.config()
	cfg.Region, cfg.SubnetID, cfg.IMDSEndpoint = "", "", imdsSrv.URL
	got, err := kipaws.Discover(ctxT(t, 10*time.Second), cfg)
	if err != nil || got.Region != "us-east-1" || got.SubnetID != ec2fake.SubnetB || got.VPCID != ec2fake.VPCID {
		t.Errorf("Discover = region %q, subnet %q, VPC %q, %v; want us-east-1, %s, %s", got.Region, got.SubnetID, got.VPCID, err, ec2fake.SubnetB, ec2fake.VPCID)
	}
	b := e.backend(t, func(c *kipaws.Config) { c.Region, c.SubnetID, c.IMDSEndpoint = "", "", imdsSrv.URL })
	if b.Zone() != "us-east-1b" || !tokened.Load() {
		t.Errorf("discovered zone %q (IMDSv2 token asked: %v), want us-east-1b from subnet %s", b.Zone(), tokened.Load(), ec2fake.SubnetB)
	}
	inst, err := b.Launch(ctxT(t, 10*time.Second), spec("imds"))
	if err != nil || inst.Zone != "us-east-1b" {
		t.Errorf("Launch = %v, %v; want a cell in us-east-1b", inst, err)
	}
}

// TestFailedRefreshNotRepeated: a DescribeInstances sweep that fails is not retried by every
// caller; its error stands for a poll interval.
func TestFailedRefreshNotRepeated(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	clk := clocktesting.NewFakeClock(time.Now())
	b := e.backend(t, func(c *kipaws.Config) { c.Clock = clk; c.PollInterval = 5 * time.Second })
	ctx := ctxT(t, 10*time.Second)
	e.fake.InjectError("DescribeInstances", "UnauthorizedOperation", "You are not authorized to perform this operation.", 1)
	for range 10 {
		if _, err := b.List(ctx, nil); err == nil || !strings.Contains(err.Error(), "UnauthorizedOperation") {
			t.Fatalf("List while DescribeInstances is refused: %v", err)
		}
	}
	if n := e.fake.Calls("DescribeInstances"); n != 1 {
		t.Errorf("DescribeInstances called %d times within one poll interval, want 1", n)
	}
	clk.Step(5 * time.Second)
	if _, err := b.List(ctx, nil); err != nil {
		t.Errorf("List after the interval: %v", err)
	}
}

// TestLaunchHardening: every RunInstances requires IMDSv2 tokens with a hop limit of 1 (a
// container one hop behind the instance gets no token), and sets a burstable type's credit
// mode explicitly (standard unless the spec asks for unlimited) instead of taking the
// account default; non-burstable types get no credit specification, which EC2 refuses.
func TestLaunchHardening(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	b := e.backend(t, nil)
	ctx := ctxT(t, 10*time.Second)
	tests := []struct {
		name, typ   string
		unlimited   bool
		wantCredits string
	}{
		{"burstable", "t3.nano", false, "standard"},
		{"burstable unlimited", "t3.micro", true, "unlimited"},
		{"fixed performance", "m5.large", false, ""},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := spec(fmt.Sprintf("hard%d", i))
			s.InstanceType, s.UnlimitedCredits = tc.typ, tc.unlimited
			inst, err := b.Launch(ctx, s)
			if err != nil {
				t.Fatal(err)
			}
			var got *ec2fake.Instance
			for _, in := range e.fake.Instances() {
				if in.ID == inst.ID {
					got = &in
				}
			}
			if got == nil {
				t.Fatalf("the fake has no instance %s", inst.ID)
			}
			if want := (ec2fake.MetadataOptions{HttpTokens: "required", HopLimit: 1, HttpEndpoint: "enabled"}); got.Metadata != want {
				t.Errorf("metadata options = %+v, want %+v", got.Metadata, want)
			}
			if got.CPUCredits != tc.wantCredits {
				t.Errorf("CPU credits = %q, want %q", got.CPUCredits, tc.wantCredits)
			}
		})
	}
}

// TestPodAllowlist: a spec may name only the security groups and instance profiles the
// config allows pods to name (none by default); any other is refused with an InvalidSpec error
// about its field before EC2 is asked. The backend's own groups and default profile are
// always allowed.
func TestPodAllowlist(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	ctx := ctxT(t, 10*time.Second)
	const otherProfile = "arn:aws:iam::123456789012:instance-profile/admin"
	tests := []struct {
		name      string
		mod       func(*kipaws.Config)
		groups    []string
		profile   string
		wantField string
	}{
		{"group by default", nil, []string{ec2fake.DefaultGroupID}, "", "SecurityGroups"},
		{"profile by default", nil, nil, ec2fake.InstanceProfile, "InstanceProfile"},
		{"group not listed", func(c *kipaws.Config) { c.PodSecurityGroups = []string{"sg-00000001"} }, []string{ec2fake.DefaultGroupID}, "", "SecurityGroups"},
		{"profile not listed", func(c *kipaws.Config) { c.PodInstanceProfiles = []string{ec2fake.InstanceProfile} }, nil, otherProfile, "InstanceProfile"},
		{"listed", func(c *kipaws.Config) {
			c.PodSecurityGroups, c.PodInstanceProfiles = []string{ec2fake.DefaultGroupID}, []string{ec2fake.InstanceProfile}
		}, []string{ec2fake.DefaultGroupID}, ec2fake.InstanceProfile, ""},
		{"the backend's own", func(c *kipaws.Config) {
			c.SecurityGroups, c.InstanceProfile = []string{ec2fake.DefaultGroupID}, ec2fake.InstanceProfile
		}, []string{ec2fake.DefaultGroupID}, ec2fake.InstanceProfile, ""},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := e.backend(t, tc.mod)
			s := spec(fmt.Sprintf("allow%d", i))
			s.SecurityGroups, s.InstanceProfile = tc.groups, tc.profile
			before := e.fake.Calls("RunInstances")
			_, err := b.Launch(ctx, s)
			if tc.wantField == "" {
				if err != nil {
					t.Fatalf("Launch: %v", err)
				}
				return
			}
			if !cloud.IsInvalidSpec(err) || cloud.FieldOf(err) != tc.wantField {
				t.Fatalf("Launch = %v (field %q), want InvalidSpec about %s", err, cloud.FieldOf(err), tc.wantField)
			}
			if n := e.fake.Calls("RunInstances"); n != before {
				t.Errorf("a refused spec reached EC2 (%d RunInstances calls)", n-before)
			}
		})
	}
}

// TestSeveralZones: with a subnet per zone, every type is offered in each zone, a spec's zone
// picks its subnet, and a capacity error marks only that zone's offering unavailable, so the
// same type still launches in the other zone.
func TestSeveralZones(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	b := e.backend(t, func(c *kipaws.Config) { c.SubnetIDs = []string{ec2fake.SubnetB} })
	ctx := ctxT(t, 10*time.Second)
	if got := strings.Join(b.Zones(), ","); got != "us-east-1a,us-east-1b" {
		t.Fatalf("zones = %s, want us-east-1a,us-east-1b", got)
	}
	offered := func() map[string]bool { // zone → t3.nano on-demand available
		types, err := b.InstanceTypes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, it := range types {
			if it.Name != "t3.nano" {
				continue
			}
			for _, o := range it.Offerings {
				if !o.Spot {
					out[o.Zone] = o.Available
				}
			}
		}
		return out
	}
	if got := offered(); len(got) != 2 || !got["us-east-1a"] || !got["us-east-1b"] {
		t.Fatalf("t3.nano on-demand offerings = %v, want available in us-east-1a and us-east-1b", got)
	}
	e.fake.SetInsufficientCapacity("t3.nano", "us-east-1a", true)
	s := spec("zones0")
	s.Zone = "us-east-1a"
	if _, err := b.Launch(ctx, s); !cloud.IsInsufficientCapacity(err) {
		t.Fatalf("Launch in us-east-1a: %v, want InsufficientCapacity", err)
	}
	if got := offered(); got["us-east-1a"] || !got["us-east-1b"] {
		t.Errorf("after a capacity error in us-east-1a: %v, want only us-east-1b available", got)
	}
	s = spec("zones1")
	s.Zone = "us-east-1b"
	inst, err := b.Launch(ctx, s)
	if err != nil {
		t.Fatalf("Launch in us-east-1b: %v", err)
	}
	if inst.Zone != "us-east-1b" || e.fake.Instances()[0].SubnetID != ec2fake.SubnetB {
		t.Errorf("launched in %s, subnet %s; want us-east-1b, %s", inst.Zone, e.fake.Instances()[0].SubnetID, ec2fake.SubnetB)
	}
	// A spec naming no zone goes to the first subnet.
	if inst, err := b.Launch(ctx, spec("zones2")); err == nil || inst != nil {
		t.Errorf("Launch with no zone = %v, %v; want the first subnet's zone, us-east-1a, without capacity", inst, err)
	}
}

// TestLaunchRendersUserData: with Config.UserData the instance's user data is what it
// renders from the bootstrap for the instance type's architecture (kip: the cell bootstrap
// script); a rendering error refuses the launch as InvalidSpec before RunInstances, and the
// rendered size is what EC2's limit is checked against.
func TestLaunchRendersUserData(t *testing.T) {
	e := newEnv(t, ec2fake.Options{})
	render := func(arch string, bs []byte) ([]byte, error) {
		switch {
		case arch != "amd64":
			return nil, fmt.Errorf("no agent for %s", arch)
		case string(bs) == "big":
			return make([]byte, 12289), nil
		}
		return []byte("#!/bin/sh\n# " + arch + "\n" + string(bs) + "\n"), nil
	}
	types, err := instancetype.Load("aws", "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	// The embedded 2020 catalog has no arm64 type in us-east-1: add one.
	i := slices.IndexFunc(types, func(it instancetype.InstanceType) bool { return it.Name == "t3.nano" })
	arm := types[i]
	arm.Name, arm.Arch = "t4g.nano", "arm64"
	types = append(types, arm)
	b := e.backend(t, func(c *kipaws.Config) { c.UserData, c.Catalog = render, kipaws.StaticCatalog(types) })
	ctx := ctxT(t, 10*time.Second)
	if _, err := b.Launch(ctx, spec("script")); err != nil {
		t.Fatal(err)
	}
	got := e.fake.Instances()[0]
	ud, _ := base64.StdEncoding.DecodeString(got.UserData)
	if want := "#!/bin/sh\n# amd64\n" + `{"cell":"script"}` + "\n"; string(ud) != want {
		t.Errorf("user data %q, want %q", ud, want)
	}
	for _, tc := range []struct {
		name string
		mod  func(*cloud.LaunchSpec)
		want string
	}{
		{"no agent for the architecture", func(s *cloud.LaunchSpec) { s.InstanceType = "t4g.nano" }, "bootstrapData: no agent for arm64"},
		{"rendered over the limit", func(s *cloud.LaunchSpec) { s.BootstrapData = []byte("big") }, "bootstrapData: 12289 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := spec("refused")
			tc.mod(&s)
			_, err := b.Launch(ctx, s)
			if !cloud.IsInvalidSpec(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Launch = %v, want InvalidSpec with %q", err, tc.want)
			}
		})
	}
	if n := e.fake.Calls("RunInstances"); n != 1 {
		t.Errorf("RunInstances calls = %d, want 1 (refusals never reach EC2)", n)
	}
}
