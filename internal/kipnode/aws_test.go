package kipnode

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"

	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cellapi/cellapitest"
	"github.com/kip-dev/kip/internal/cellboot"
	"github.com/kip-dev/kip/internal/cellenroll"
	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/enroll"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/pki"
	"github.com/kip-dev/kip/internal/selector"
)

// awsEnv is the EC2 fake and its Price List fake over HTTP, and a kip config pointing at them.
type awsEnv struct {
	fake *ec2fake.Server
	cfg  *config.ProviderConfig
	log  *slog.Logger
}

// newAWSEnv serves the fakes and loads a config for them through config.Load, as kip run
// does. extra is appended under cloud.aws. Credentials come from the environment, as on a
// host without instance metadata.
func newAWSEnv(t *testing.T, extra string) *awsEnv {
	t.Helper()
	log := slog.New(slog.NewTextHandler(newTestLogWriter(t), nil))
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDKIPTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "no-aws-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "no-aws-credentials"))

	f := ec2fake.New(ec2fake.Options{})
	ec2Srv := httptest.NewServer(f)
	t.Cleanup(ec2Srv.Close)
	priceSrv := httptest.NewServer(f.PricingHandler())
	t.Cleanup(priceSrv.Close)

	// The artifacts whose hashes the user data pins (a stand-in: these cells run no agent).
	artifact := filepath.Join(dir, "artifact")
	if err := os.WriteFile(artifact, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf(`apiVersion: kip.dev/v1alpha1
kind: ProviderConfig
cloud:
  provider: aws
  aws:
    region: us-east-1
    subnetID: %s
    endpoint: %s
    pricingEndpoint: %s
    pollInterval: 50ms
    catalog:
      cacheFile: %s
    bootstrap:
      listenAddr: 127.0.0.1:0
      agentPaths: {amd64: %[5]s, arm64: %[5]s}
      runcPaths: {amd64: %[5]s, arm64: %[5]s}
%[6]s
node:
  name: kip-aws
  internalIP: 10.0.200.10
cells:
  clusterName: kiptest
`, ec2fake.SubnetA, ec2Srv.URL, priceSrv.URL, filepath.Join(dir, "aws-catalog.json"), artifact, extra)
	path := filepath.Join(dir, "kip.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("config.Load:\n%s\n%v", doc, err)
	}
	return &awsEnv{fake: f, cfg: cfg, log: log}
}

func (e *awsEnv) runner() *runner {
	return &runner{opts: Options{Config: e.cfg}, cfg: e.cfg, log: e.log}
}

// instance returns the fake's view of an instance.
func (e *awsEnv) instance(id string) (ec2fake.Instance, bool) {
	for _, in := range e.fake.Instances() {
		if in.ID == id {
			return in, true
		}
	}
	return ec2fake.Instance{}, false
}

// waitUntil polls cond every 10ms for at most 20 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAWSBackendFromConfig builds the backend from a config as kip run does, against the EC2
// fake: the catalog starts embedded, is refreshed from the fake's APIs before the backend is
// returned (and cached in the cache file), and stopping the backend stops the refresh.
func TestAWSBackendFromConfig(t *testing.T) {
	e := newAWSEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := e.runner()
	b, live, stop, err := r.awsBackend(ctx)
	if err != nil {
		t.Fatalf("awsBackend: %v", err)
	}
	if b.Zone() != "us-east-1a" || b.SecurityGroupID() == "" {
		t.Errorf("backend zone %q, group %q; want us-east-1a (subnet %s) and Kip's group", b.Zone(), b.SecurityGroupID(), ec2fake.SubnetA)
	}
	cacheFile := e.cfg.Cloud.AWS.Catalog.CacheFile
	// The first refresh is over before the backend is handed out: no selection can use the
	// embedded catalog it replaces.
	if got := live.Origin(); got != "refreshed" {
		t.Fatalf("catalog origin when the backend is ready = %q, want refreshed", got)
	}
	types, err := b.InstanceTypes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, it := range types {
		names = append(names, it.Name)
	}
	if len(types) != len(e.fake.InstanceTypes()) {
		t.Errorf("backend catalog after refresh = %v, want the fake's %d types", names, len(e.fake.InstanceTypes()))
	}
	fh, err := os.Open(cacheFile)
	if err != nil {
		t.Fatalf("cache file: %v", err)
	}
	cached, err := instancetype.DecodeFile(fh)
	fh.Close()
	if err != nil || cached.Cloud != "aws" || len(cached.Regions["us-east-1"]) != len(types) {
		t.Errorf("cache file = %+v, %v; want the refreshed us-east-1 catalog", cached, err)
	}
	stop() // returns only once the refresh goroutine is gone
	calls := e.fake.Calls("DescribeInstanceTypes")
	if calls == 0 {
		t.Error("no DescribeInstanceTypes call: the refresh did not use the configured endpoint")
	}

	// A restart reads the cache file before any refresh.
	e.cfg.Cloud.AWS.Catalog.RefreshInterval = config.NewDuration(0)
	_, live2, stop2, err := e.runner().awsBackend(ctx)
	if err != nil {
		t.Fatalf("awsBackend with refreshing off: %v", err)
	}
	defer stop2()
	if got := live2.Origin(); got != "cache "+cacheFile {
		t.Errorf("catalog origin after restart = %q, want the cache file", got)
	}
	if n := e.fake.Calls("DescribeInstanceTypes"); n != calls {
		t.Errorf("DescribeInstanceTypes calls went from %d to %d with refreshInterval 0s", calls, n)
	}
}

// TestAWSUnknownRegionRefreshesAtStart: a region the embedded catalog does not know gets its
// catalog from the APIs before the backend starts.
func TestAWSUnknownRegionRefreshesAtStart(t *testing.T) {
	e := newAWSEnv(t, "")
	e.cfg.Cloud.AWS.Region = "eu-south-9"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, live, stop, err := e.runner().awsBackend(ctx)
	if err != nil {
		t.Fatalf("awsBackend: %v", err)
	}
	defer stop()
	if got := live.Origin(); got != "refreshed" {
		t.Errorf("catalog origin = %q, want refreshed before the backend started", got)
	}
	if its, err := b.InstanceTypes(ctx); err != nil || len(its) == 0 {
		t.Errorf("InstanceTypes = %d types, %v", len(its), err)
	}
}

// TestAWSBackendErrors: a config the backend cannot start with fails with an error naming the
// field, and leaves no goroutine behind.
func TestAWSBackendErrors(t *testing.T) {
	tests := []struct {
		name  string
		extra string
		mod   func(c *config.ProviderConfig)
		want  string
	}{
		{"no image matches", "    imageFilters: {name: [no-such-image-*]}\n", nil, "no available image"},
		{"unknown region without refresh", "", func(c *config.ProviderConfig) {
			c.Cloud.AWS.Region = "xx-north-1"
			c.Cloud.AWS.Catalog.RefreshInterval = config.NewDuration(0)
		}, "cloud.aws.catalog: region xx-north-1"},
		{"subnet does not exist", "", func(c *config.ProviderConfig) { c.Cloud.AWS.SubnetID = "subnet-0ffffffffffffffff" }, "subnet-0ffffffffffffffff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newAWSEnv(t, tt.extra)
			if tt.mod != nil {
				tt.mod(e.cfg)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, _, err := e.runner().backend(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("backend: %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

// awsKip is the real cells manager on the backend kip run builds from e's config, with
// in-process agents standing in for the ones the cell image would boot.
type awsKip struct {
	backend cloud.Cloud
	mgr     *cells.Manager
	events  *record.FakeRecorder
	ca      *pki.CA
	tokens  *enroll.Tokens

	mu     sync.Mutex
	agents map[string]*cellapitest.Agent
}

// startKip starts it, once the selector sees the refreshed catalog (the fake's types), not
// the embedded one.
func (e *awsEnv) startKip(t *testing.T, ctx context.Context) *awsKip {
	t.Helper()
	r := e.runner()
	backend, stop, err := r.backend(ctx)
	if err != nil {
		t.Fatalf("backend: %v", err)
	}
	t.Cleanup(stop)
	waitUntil(t, "the catalog refresh", func() bool {
		its, err := backend.InstanceTypes(ctx)
		return err == nil && len(its) == len(e.fake.InstanceTypes())
	})
	ca, err := pki.NewCA("kip-test")
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := enroll.NewTokens(ca, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := &awsKip{backend: backend, tokens: tokens, events: record.NewFakeRecorder(1000), ca: ca, agents: map[string]*cellapitest.Agent{}}
	dial := func(_ context.Context, inst *cloud.Instance, cellID string) (cellapi.Agent, error) {
		// The agent boots from the instance's user data, as kip-cell does.
		fi, ok := e.instance(inst.ID)
		if !ok {
			return nil, fmt.Errorf("instance %s is not in EC2", inst.ID)
		}
		boot, err := decodeBootstrap(fi.UserData)
		if err != nil {
			return nil, err
		}
		if boot.CellID != cellID {
			return nil, fmt.Errorf("instance %s booted as cell %q, kip dials %q", inst.ID, boot.CellID, cellID)
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		a, ok := k.agents[cellID]
		if !ok {
			a = &cellapitest.Agent{CellID: cellID}
			k.agents[cellID] = a
		}
		return a, nil
	}
	k.mgr = cells.New(cellsOptions(e.cfg), cells.NodeInfo{Name: e.cfg.Node.Name, HostIP: e.cfg.Node.InternalIP}, cells.Deps{
		Cloud:    backend,
		Selector: &selector.Selector{Options: selectorOptions(e.cfg)},
		Resolver: cells.ResolverFunc(func(_ context.Context, pod *corev1.Pod) (*cellapi.PodRequest, error) {
			return &cellapi.PodRequest{Pod: pod}, nil
		}),
		Dial:       dial,
		CA:         ca,
		Enrollment: &cells.Enrollment{Mint: tokens.Mint, URL: "https://10.0.200.10:6422"},
		Events:     k.events,
		Log:        r.log,
	})
	t.Cleanup(k.mgr.Close)
	return k
}

// agent returns the agent of a cell, or nil.
func (k *awsKip) agent(cellID string) *cellapitest.Agent {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.agents[cellID]
}

// drainEvents returns the events recorded so far.
func (k *awsKip) drainEvents() []string {
	var out []string
	for {
		select {
		case ev := <-k.events.Events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

// testPod is a pod on the kip-aws node asking 500m and 1Gi.
func testPod(name string, i int) *corev1.Pod {
	grace := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: name, UID: types.UID(fmt.Sprintf("%d0b7c6c1-5d1f-4d59-9a57-2f1f6c0e0001", i))},
		Spec: corev1.PodSpec{
			NodeName:                      "kip-aws",
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{Name: "app", Image: "nginx", Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("1Gi")},
			}}},
		},
	}
}

// TestAWSPodLifecycle runs one pod through the real cells manager on the backend kip run
// builds from its config, against the EC2 fake, with an in-process agent standing in for the
// one the cell image would boot: one instance of the type the selector picks from the
// refreshed catalog (and an image of its architecture), tagged, carrying the bootstrap as user
// data; deleting the pod terminates it.
func TestAWSPodLifecycle(t *testing.T) {
	e := newAWSEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	k := e.startKip(t, ctx)
	backend, mgr, ca := k.backend, k.mgr, k.ca

	images := map[string]string{} // image name → id
	for _, im := range e.fake.Images() {
		images[im.Name] = im.ID
	}
	// Both pods ask 500m + 1Gi, plus the 100m/64Mi reserve: the t3 types' baselines
	// (0.1-0.4 vCPU) are too small, so the cheapest fit of the fake's catalog is c5.large
	// ($0.085) for amd64 (the default) and m6g.large ($0.077) for arm64. The embedded 2020
	// catalog would have chosen types the fake does not have (c5a.large, c6g.medium).
	tests := []struct {
		name, arch, wantType, wantImage string
	}{
		{"web", "", "c5.large", "kip-cell-2026.03.1-x86_64"},
		{"arm", "arm64", "m6g.large", "kip-cell-2026.03.1-arm64"},
	}
	pods := map[string]*corev1.Pod{}
	for i, tt := range tests {
		pod := testPod(tt.name, i)
		if tt.arch != "" {
			pod.Spec.NodeSelector = map[string]string{corev1.LabelArchStable: tt.arch}
		}
		pods[tt.name] = pod
		if err := mgr.CreatePod(ctx, pod); err != nil {
			t.Fatalf("CreatePod %s: %v", tt.name, err)
		}
	}
	for _, tt := range tests {
		waitUntil(t, "pod "+tt.name+" to run", func() bool {
			p, ok := mgr.GetPod("team-a", tt.name)
			return ok && p.Status.Phase == corev1.PodRunning
		})
	}

	byPod := map[string]ec2fake.Instance{}
	for _, in := range e.fake.Instances() {
		byPod[in.Tags[cloud.TagPodName]] = in
	}
	if n := len(e.fake.Instances()); n != len(tests) {
		t.Errorf("EC2 has %d instances, want %d", n, len(tests))
	}
	group := backend.(interface{ SecurityGroupID() string }).SecurityGroupID()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := pods[tt.name]
			in, ok := byPod[tt.name]
			if !ok {
				t.Fatalf("no instance tagged %s=%s", cloud.TagPodName, tt.name)
			}
			if in.InstanceType != tt.wantType || in.Spot || in.Zone != "us-east-1a" {
				t.Errorf("instance %s is %s (spot %v) in %s, want on-demand %s in us-east-1a", in.ID, in.InstanceType, in.Spot, in.Zone, tt.wantType)
			}
			if in.ImageID != images[tt.wantImage] {
				t.Errorf("image %s, want %s (%s): the newest of this account for the type's architecture", in.ImageID, images[tt.wantImage], tt.wantImage)
			}
			cellID := in.Tags[cloud.TagCellID]
			if cellID == "" {
				t.Errorf("instance tags %v have no %s", in.Tags, cloud.TagCellID)
			}
			want := map[string]string{
				cloud.TagCluster: "kiptest", cloud.TagNode: "kip-aws", cloud.TagPodNamespace: "team-a",
				cloud.TagPodName: tt.name, cloud.TagPodUID: string(pod.UID), "Name": "kip-" + cellID,
			}
			for k, v := range want {
				if in.Tags[k] != v {
					t.Errorf("tag %s = %q, want %q (all: %v)", k, in.Tags[k], v, in.Tags)
				}
			}
			boot, err := decodeBootstrap(in.UserData)
			if err != nil {
				t.Fatal(err)
			}
			if boot.CellID != cellID || string(boot.CACert) != string(ca.CertPEM) || len(boot.Key) != 0 || len(boot.Cert) != 0 {
				t.Errorf("bootstrap names cell %q (tag %q), CA matches %v, key %d bytes, cert %d bytes; want no key or cert in user data",
					boot.CellID, cellID, string(boot.CACert) == string(ca.CertPEM), len(boot.Key), len(boot.Cert))
			}
			if claims, err := k.tokens.Verify(boot.EnrollToken); err != nil || claims.CellID != cellID {
				t.Errorf("bootstrap enrollment token: claims %+v, %v; want a good token for cell %s", claims, err, cellID)
			}
			if group == "" || !slices.Contains(in.SecurityGroups, group) {
				t.Errorf("instance groups %v, want Kip's group %q", in.SecurityGroups, group)
			}
			if in.PrivateIP == "" {
				t.Errorf("instance %s has no private address", in.ID)
			}
		})
	}

	for _, tt := range tests {
		if err := mgr.DeletePod(ctx, pods[tt.name]); err != nil {
			t.Fatalf("DeletePod %s: %v", tt.name, err)
		}
	}
	for _, tt := range tests {
		id := byPod[tt.name].ID
		waitUntil(t, "instance "+id+" to terminate", func() bool {
			fi, _ := e.instance(id)
			return fi.State == "shutting-down" || fi.State == "terminated"
		})
		waitUntil(t, "pod "+tt.name+" to be gone", func() bool {
			_, ok := mgr.GetPod("team-a", tt.name)
			return !ok
		})
		a := k.agent(byPod[tt.name].Tags[cloud.TagCellID])
		if a == nil || a.Deletes() != 1 {
			t.Errorf("the agent of pod %s was not asked once to stop it", tt.name)
		}
	}
	if n := e.fake.Calls("RunInstances"); n != len(tests) {
		t.Errorf("RunInstances calls = %d, want %d", n, len(tests))
	}
	if n := e.fake.Calls("TerminateInstances"); n < 1 || n > len(tests) {
		t.Errorf("TerminateInstances calls = %d, want 1 to %d", n, len(tests))
	}
}

// decodeBootstrap returns the agent bootstrap the user data (the cell bootstrap script) holds.
func decodeBootstrap(userData string) (*cellapi.Bootstrap, error) {
	raw, err := base64.StdEncoding.DecodeString(userData)
	if err != nil {
		return nil, fmt.Errorf("user data is not base64: %w", err)
	}
	if !strings.HasPrefix(string(raw), "#!/bin/sh\n") {
		return nil, fmt.Errorf("user data is not the cell bootstrap script: %.40q", raw)
	}
	return cellboot.BootstrapOf(raw)
}

// testLogWriter sends log lines to t.Log until the test and its cleanups are over, then
// drops them (a goroutine may still log while it winds down).
type testLogWriter struct {
	t    *testing.T
	mu   *sync.Mutex
	done *bool
}

func newTestLogWriter(t *testing.T) testLogWriter {
	w := testLogWriter{t: t, mu: &sync.Mutex{}, done: new(bool)}
	t.Cleanup(func() { // registered first, so it runs last
		w.mu.Lock()
		defer w.mu.Unlock()
		*w.done = true
	})
	return w
}

func (w testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !*w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// TestAWSPodMayNameOnlyAllowedGroupsAndProfiles: with the default config (no
// cloud.aws.podSecurityGroups or podInstanceProfiles), a pod naming a security group or an
// instance profile fails before any RunInstances, with an Event naming the annotation; one
// naming what the config allows runs with it.
func TestAWSPodMayNameOnlyAllowedGroupsAndProfiles(t *testing.T) {
	tests := []struct {
		name, extra, annotation, value string
		wantRun                        bool
	}{
		{"group refused", "", annotations.SecurityGroups, ec2fake.DefaultGroupID, false},
		{"profile refused", "", annotations.InstanceProfile, ec2fake.InstanceProfile, false},
		{"group allowed", "    podSecurityGroups: [" + ec2fake.DefaultGroupID + "]\n", annotations.SecurityGroups, ec2fake.DefaultGroupID, true},
		{"profile allowed", "    podInstanceProfiles: [" + ec2fake.InstanceProfile + "]\n", annotations.InstanceProfile, ec2fake.InstanceProfile, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newAWSEnv(t, tt.extra)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			k := e.startKip(t, ctx)
			pod := testPod("named", 1)
			pod.Annotations = map[string]string{tt.annotation: tt.value}
			if err := k.mgr.CreatePod(ctx, pod); err != nil {
				t.Fatal(err)
			}
			var got *corev1.Pod
			waitUntil(t, "the pod to run or fail", func() bool {
				got, _ = k.mgr.GetPod("team-a", "named")
				return got != nil && (got.Status.Phase == corev1.PodRunning || got.Status.Phase == corev1.PodFailed)
			})
			if tt.wantRun {
				if got.Status.Phase != corev1.PodRunning {
					t.Fatalf("pod %s: %s", got.Status.Phase, got.Status.Message)
				}
				in := e.fake.Instances()[0]
				if in.Profile != tt.value && !slices.Contains(in.SecurityGroups, tt.value) {
					t.Errorf("instance has profile %q and groups %v, want %s", in.Profile, in.SecurityGroups, tt.value)
				}
				return
			}
			if got.Status.Phase != corev1.PodFailed || !strings.Contains(got.Status.Message, tt.annotation) {
				t.Errorf("pod %s: %q, want Failed naming %s", got.Status.Phase, got.Status.Message, tt.annotation)
			}
			if n := e.fake.Calls("RunInstances"); n != 0 {
				t.Errorf("RunInstances calls = %d, want 0: the refusal comes before launch", n)
			}
			evs := k.drainEvents()
			if !slices.ContainsFunc(evs, func(ev string) bool { return strings.HasPrefix(ev, "Warning") && strings.Contains(ev, tt.annotation) }) {
				t.Errorf("no Warning event names %s: %v", tt.annotation, evs)
			}
		})
	}
}

// TestAWSCapacityFallsBackAcrossZonesThenWaits runs the cells manager on a backend with a
// subnet in each of two zones, against the EC2 fake: a pod pinned to c5.large whose zone
// lacks capacity launches in the other zone; with no capacity in either it stays Pending with
// a "Waiting for capacity" Event (it used to fail for good after one
// InsufficientInstanceCapacity), and runs once capacity is back; an unpinned pod tries its
// type's other zone before another type.
func TestAWSCapacityFallsBackAcrossZonesThenWaits(t *testing.T) {
	e := newAWSEnv(t, "    subnetIDs: ["+ec2fake.SubnetB+"]\n")
	e.cfg.Cells.CapacityErrorMemory = config.NewDuration(200 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	k := e.startKip(t, ctx)
	zoneOf := func(name string) (typ, zone string) {
		for _, in := range e.fake.Instances() {
			if in.Tags[cloud.TagPodName] == name && in.State != "terminated" {
				return in.InstanceType, in.Zone
			}
		}
		return "", ""
	}
	running := func(name string) bool {
		p, ok := k.mgr.GetPod("team-a", name)
		if ok && p.Status.Phase == corev1.PodFailed {
			t.Fatalf("pod %s failed: %s: %s", name, p.Status.Reason, p.Status.Message)
		}
		return ok && p.Status.Phase == corev1.PodRunning
	}

	// The cheapest fit (c5.large, see TestAWSPodLifecycle) lacks capacity in us-east-1a only.
	e.fake.SetInsufficientCapacity("c5.large", "us-east-1a", true)
	free := testPod("free", 1)
	pinned := testPod("pinned", 2)
	pinned.Annotations = map[string]string{annotations.InstanceType: "c5.large"}
	for _, p := range []*corev1.Pod{free, pinned} {
		if err := k.mgr.CreatePod(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"free", "pinned"} {
		waitUntil(t, "pod "+name+" to run", func() bool { return running(name) })
		if typ, zone := zoneOf(name); typ != "c5.large" || zone != "us-east-1b" {
			t.Errorf("pod %s runs on %s in %s, want c5.large in us-east-1b: the same type in the other zone first", name, typ, zone)
		}
	}

	// No capacity anywhere for the pinned type: the pod waits, then runs.
	e.fake.SetInsufficientCapacity("c5.large", "", true)
	waiting := testPod("waiting", 3)
	waiting.Annotations = map[string]string{annotations.InstanceType: "c5.large"}
	if err := k.mgr.CreatePod(ctx, waiting); err != nil {
		t.Fatal(err)
	}
	var evs []string
	waitUntil(t, "a Waiting for capacity event", func() bool {
		evs = append(evs, k.drainEvents()...)
		return slices.ContainsFunc(evs, func(ev string) bool {
			return strings.Contains(ev, cells.ReasonWaitingForCapacity) && strings.Contains(ev, "Waiting for capacity")
		})
	})
	if p, _ := k.mgr.GetPod("team-a", "waiting"); p.Status.Phase != corev1.PodPending {
		t.Fatalf("pod waiting for capacity is %s (%s), want Pending", p.Status.Phase, p.Status.Message)
	}
	calls := e.fake.Calls("RunInstances")
	e.fake.SetInsufficientCapacity("c5.large", "", false)
	waitUntil(t, "the waiting pod to run", func() bool { return running("waiting") })
	if typ, _ := zoneOf("waiting"); typ != "c5.large" {
		t.Errorf("the waiting pod runs on %s, want its pinned c5.large", typ)
	}
	if n := e.fake.Calls("RunInstances"); n <= calls {
		t.Errorf("RunInstances calls %d → %d: the waiting pod never asked again", calls, n)
	}
}

// TestAWSSpotFallsBackToOnDemand: a spot pod whose spot launches all lack capacity runs
// on-demand when cells.spotFallbackToOnDemand allows it, and waits for spot otherwise.
func TestAWSSpotFallsBackToOnDemand(t *testing.T) {
	for _, allow := range []bool{true, false} {
		t.Run(fmt.Sprintf("allowed=%v", allow), func(t *testing.T) {
			e := newAWSEnv(t, "")
			e.cfg.Cells.SpotFallbackToOnDemand = allow
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			k := e.startKip(t, ctx)
			e.fake.SetNoSpotCapacity(true)
			pod := testPod("spot", 1)
			pod.Annotations = map[string]string{annotations.LaunchType: "spot"}
			if err := k.mgr.CreatePod(ctx, pod); err != nil {
				t.Fatal(err)
			}
			if !allow {
				var evs []string
				waitUntil(t, "a Waiting for capacity event", func() bool {
					evs = append(evs, k.drainEvents()...)
					return slices.ContainsFunc(evs, func(ev string) bool { return strings.Contains(ev, cells.ReasonWaitingForCapacity) })
				})
				if n := len(e.fake.Instances()); n != 0 {
					t.Errorf("%d instances, want none: spot only", n)
				}
				return
			}
			waitUntil(t, "the pod to run", func() bool {
				p, ok := k.mgr.GetPod("team-a", "spot")
				return ok && p.Status.Phase == corev1.PodRunning
			})
			in := e.fake.Instances()
			if len(in) != 1 || in[0].Spot {
				t.Errorf("instances %+v, want one on-demand", in)
			}
		})
	}
}

// TestAWSGPUVendors: from the catalog refreshed from the EC2 fake (which lists an AMD g4ad
// cheaper than the NVIDIA g4dn), a pod asking nvidia.com/gpu runs on the g4dn and one asking
// amd.com/gpu on the g4ad; any GPU used to count as NVIDIA's.
func TestAWSGPUVendors(t *testing.T) {
	e := newAWSEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k := e.startKip(t, ctx)
	for i, tc := range []struct {
		resource corev1.ResourceName
		want     string
	}{{"nvidia.com/gpu", "g4dn.xlarge"}, {"amd.com/gpu", "g4ad.xlarge"}} {
		name := strings.Split(string(tc.resource), ".")[0]
		pod := testPod(name, i)
		pod.Spec.Containers[0].Resources.Limits = corev1.ResourceList{tc.resource: resource.MustParse("1")}
		if err := k.mgr.CreatePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "pod "+name+" to run", func() bool {
			p, ok := k.mgr.GetPod("team-a", name)
			if ok && p.Status.Phase == corev1.PodFailed {
				t.Fatalf("pod %s failed: %s", name, p.Status.Message)
			}
			return ok && p.Status.Phase == corev1.PodRunning
		})
		for _, in := range e.fake.Instances() {
			if in.Tags[cloud.TagPodName] == name && in.InstanceType != tc.want {
				t.Errorf("a pod asking %s runs on %s, want %s", tc.resource, in.InstanceType, tc.want)
			}
		}
	}
}

// TestAWSCellBootServer: kip run's AWS wiring serves what the user data names. The backend's
// renderer pins the configured artifacts at the advertised URL (by default node.internalIP
// and the bound port); the server started with kip's CA serves them with those hashes over
// TLS that the pinned CA verifies, and enrolls a cell with the token of its bootstrap, once.
func TestAWSCellBootServer(t *testing.T) {
	e := newAWSEnv(t, "")
	e.cfg.Node.InternalIP = "127.0.0.1" // the listener is on loopback in this test
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := e.runner()
	_, stop, err := r.backend(ctx)
	if err != nil {
		t.Fatalf("backend: %v", err)
	}
	defer stop()
	if r.boot == nil {
		t.Fatal("the AWS backend was made without the cell boot server")
	}
	port := r.boot.ln.Addr().(*net.TCPAddr).Port
	if want := fmt.Sprintf("https://127.0.0.1:%d", port); r.boot.url != want {
		t.Errorf("advertised URL %q, want %q", r.boot.url, want)
	}
	ca, err := pki.NewCA("kip-test")
	if err != nil {
		t.Fatal(err)
	}
	enrollment, err := r.boot.serve(ctx, ca, 0, &enroll.MemoryLedger{})
	if err != nil {
		t.Fatal(err)
	}
	token, err := enrollment.Mint("c-wired")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(cellapi.Bootstrap{CellID: "c-wired", CACert: ca.CertPEM, EnrollToken: token, EnrollURL: enrollment.URL})
	script, err := r.boot.renderer.UserData("amd64", js)
	if err != nil {
		t.Fatal(err)
	}
	// The pins in the script are those of what the server serves.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	defer hc.CloseIdleConnections()
	for _, name := range []string{"kip-cell", "runc"} {
		urlRe := regexp.MustCompile(`(?m)^amd64\)\n(?:\t.*\n)*?\t` + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + `_URL='([^']+)'\n\t` +
			strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + `_SHA256='([0-9a-f]{64})'`)
		m := urlRe.FindSubmatch(script)
		if m == nil {
			t.Fatalf("no %s pin for amd64 in the script:\n%s", name, script)
		}
		resp, err := hc.Get(string(m[1]))
		if err != nil {
			t.Fatalf("GET %s: %v", m[1], err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		sum := sha256.Sum256(b)
		if resp.StatusCode != 200 || hex.EncodeToString(sum[:]) != string(m[2]) {
			t.Errorf("GET %s: HTTP %d, SHA-256 %x, pinned %s", m[1], resp.StatusCode, sum, m[2])
		}
	}
	bs, err := cellboot.BootstrapOf(script)
	if err != nil {
		t.Fatal(err)
	}
	cfg := cellenroll.Config{URL: bs.EnrollURL, Token: bs.EnrollToken, CellID: bs.CellID, CACert: bs.CACert, Dir: t.TempDir()}
	if _, _, err := cellenroll.Enroll(ctx, cfg); err != nil {
		t.Fatalf("enrolling with the script's bootstrap: %v", err)
	}
	cfg.Dir = t.TempDir()
	if _, _, err := cellenroll.Enroll(ctx, cfg); !cellenroll.IsRefused(err) {
		t.Errorf("enrolling again with the token: %v, want a refusal", err)
	}
}
