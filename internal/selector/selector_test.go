package selector

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/instancetype"
	corev1 "k8s.io/api/core/v1"
)

func TestSelect(t *testing.T) {
	tests := []struct {
		name      string
		pod       *corev1.Pod
		opts      Options
		wantType  string
		wantSpot  bool
		wantPrice float64
		wantZone  string
		unlimited bool
		reason    string // substring of Choice.Reason
	}{
		{name: "no resources: cheapest fit, burstable within baseline", pod: pod(), wantType: "t3.small", wantPrice: 0.0208, reason: "cheapest fitting on-demand"},
		{name: "no resources: default type", pod: pod(), opts: Options{DefaultType: "c5.large"}, wantType: "c5.large", wantPrice: 0.085, reason: "default instance type c5.large"},
		{name: "default type ignored when resources are asked", pod: pod(requests("memory", "6Gi")), opts: Options{DefaultType: "c5.large"}, wantType: "z.large", wantPrice: 0.09, wantZone: "us-east-1a"},
		{name: "cpu above every burstable baseline", pod: pod(requests("cpu", "1")), wantType: "c5.large", wantPrice: 0.085},
		{name: "unlimited credits price the surplus in", pod: pod(requests("cpu", "1")), opts: Options{UnlimitedCredits: true},
			wantType: "t3.small", wantPrice: 0.0208 + 0.65*0.05, unlimited: true},
		{name: "unlimited credits with a custom surplus price", pod: pod(requests("cpu", "1")), opts: Options{UnlimitedCredits: true, SurplusCreditPrice: 0.2},
			wantType: "c5.large", wantPrice: 0.085},
		{name: "memory", pod: pod(requests("memory", "6Gi")), wantType: "z.large", wantPrice: 0.09, wantZone: "us-east-1a"},
		{name: "limits count where requests are absent", pod: pod(containers(ctr("app", nil, rl("memory", "6Gi")))), wantType: "z.large", wantPrice: 0.09, wantZone: "us-east-1a"},
		{name: "gpu", pod: pod(containers(ctr("app", nil, rl("nvidia.com/gpu", "1")))), wantType: "g4dn.xlarge", wantPrice: 0.526},
		{name: "arch from nodeSelector", pod: pod(nodeSelector("kubernetes.io/arch", "arm64")), wantType: "m6g.large", wantPrice: 0.077},
		{name: "arch from node affinity", pod: pod(affinity([]corev1.NodeSelectorRequirement{expr("kubernetes.io/arch", "In", "arm64")})), wantType: "m6g.large", wantPrice: 0.077},
		{name: "any arch allowed by option", pod: pod(requests("cpu", "1")), opts: Options{DefaultArch: "*"}, wantType: "m6g.large", wantPrice: 0.077},
		{name: "zone picks the zoned offering", pod: pod(requests("memory", "6Gi"), nodeSelector("topology.kubernetes.io/zone", "us-east-1c")), wantType: "z.large", wantPrice: 0.092, wantZone: "us-east-1c"},
		{name: "unavailable offering skipped; region-wide offering launched in the asked zone", pod: pod(requests("memory", "6Gi"), nodeSelector("topology.kubernetes.io/zone", "us-east-1b")),
			wantType: "m5.large", wantPrice: 0.096, wantZone: "us-east-1b"},
		{name: "instance-type label", pod: pod(nodeSelector("node.kubernetes.io/instance-type", "r5.large")), wantType: "r5.large", wantPrice: 0.126},
		{name: "spot annotation", pod: pod(annotate(AnnotationLaunchType, "spot")), wantType: "t3.small", wantSpot: true, wantPrice: 0.0062},
		{name: "legacy spot annotation", pod: pod(requests("cpu", "1"), annotate(LegacyAnnotationLaunchType, "spot")), wantType: "c5.large", wantSpot: true, wantPrice: 0.031},
		{name: "spot by default", pod: pod(requests("cpu", "1")), opts: Options{Spot: true}, wantType: "c5.large", wantSpot: true, wantPrice: 0.031},
		{name: "on-demand annotation beats spot default", pod: pod(requests("cpu", "1"), annotate(AnnotationLaunchType, "On-Demand")), opts: Options{Spot: true}, wantType: "c5.large", wantPrice: 0.085},
		{name: "exact instance type", pod: pod(annotate(AnnotationInstanceType, "m5.large")), wantType: "m5.large", wantPrice: 0.096, reason: `pod.kip.dev/instance-type="m5.large"`},
		{name: "legacy exact instance type", pod: pod(annotate(LegacyAnnotationInstanceType, "r5.large")), wantType: "r5.large", wantPrice: 0.126, reason: "pod.elotl.co/instance-type"},
		{name: "both spellings agreeing", pod: pod(annotate(AnnotationInstanceType, "r5.large", LegacyAnnotationInstanceType, "r5.large")), wantType: "r5.large", wantPrice: 0.126},
		{name: "exact arm64 type needs no arch selector", pod: pod(annotate(AnnotationInstanceType, "m6g.large")), wantType: "m6g.large", wantPrice: 0.077},
		{name: "a glob keeps the default arch", pod: pod(annotate(AnnotationInstanceType, "m*.large")), wantType: "m5.large", wantPrice: 0.096},
		{name: "a glob of arm64 types only names arm64", pod: pod(annotate(AnnotationInstanceType, "m6g*")), wantType: "m6g.large", wantPrice: 0.077},
		{name: "a glob under an arch selector keeps it", pod: pod(annotate(AnnotationInstanceType, "m*.large"), nodeSelector("kubernetes.io/arch", "arm64")), wantType: "m6g.large", wantPrice: 0.077},
		{name: "glob", pod: pod(annotate(AnnotationInstanceType, "c5*")), wantType: "c5.large", wantPrice: 0.085},
		{name: "glob narrows further", pod: pod(annotate(AnnotationInstanceType, "c5.x*")), wantType: "c5.xlarge", wantPrice: 0.17},
		{name: "glob with a question mark", pod: pod(annotate(AnnotationInstanceType, "?5.large")), wantType: "c5.large", wantPrice: 0.085},
		{name: "blank annotation counts as unset", pod: pod(annotate(AnnotationInstanceType, "  ", AnnotationLaunchType, "")), wantType: "t3.small", wantPrice: 0.0208},
	}
	ix := NewIndex(testCatalog())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, err := ix.Select(tt.pod, tt.opts)
			if err != nil {
				t.Fatalf("Select: %v", err)
			}
			if ch.Type.Name != tt.wantType || ch.Offering.Spot != tt.wantSpot || math.Abs(ch.Price-tt.wantPrice) > 1e-9 {
				t.Fatalf("chose %s spot=%v $%v, want %s spot=%v $%v", ch.Type.Name, ch.Offering.Spot, ch.Price, tt.wantType, tt.wantSpot, tt.wantPrice)
			}
			if ch.Zone != tt.wantZone || ch.UnlimitedCredits != tt.unlimited {
				t.Errorf("zone %q unlimited %v, want %q %v", ch.Zone, ch.UnlimitedCredits, tt.wantZone, tt.unlimited)
			}
			if !strings.Contains(ch.Reason, tt.reason) {
				t.Errorf("reason %q does not contain %q", ch.Reason, tt.reason)
			}
			// Fallbacks are other fitting offerings, never cheaper than the choice, in order.
			prev := ch.Price
			for _, f := range ch.Fallbacks {
				if f.Price < prev || f.Offering.Spot != tt.wantSpot || (f.Type.Name == ch.Type.Name && f.Offering == ch.Offering) {
					t.Errorf("bad fallback %s $%v after $%v", f.Type.Name, f.Price, prev)
				}
				prev = f.Price
			}
			// Rejected candidates are cheaper (as listed) and say why.
			for _, r := range ch.Rejected {
				if r.Price > ch.Price || len(r.Reasons()) == 0 || r.Type == ch.Type.Name && r.Zone == ch.Offering.Zone {
					t.Errorf("bad rejection %v", r)
				}
			}
		})
	}
}

func TestSelectExplains(t *testing.T) {
	ch, err := Select(pod(requests("cpu", "1")), testCatalog(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range ch.Rejected {
		got = append(got, r.String())
	}
	want := []string{
		"m6g.large ($0.0770/h): arch arm64 not in (amd64)",
		"z.large ($0.0500/h): no capacity now",
		"Standard_B2s ($0.0416/h): burstable baseline 0.4 vCPU < 1.05 (unlimited credits off)",
		"t3.small ($0.0208/h): burstable baseline 0.4 vCPU < 1.05 (unlimited credits off)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rejected:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var fb []string
	for _, f := range ch.Fallbacks {
		fb = append(fb, f.Type.Name+"@"+f.Zone)
	}
	if w := "z.large@us-east-1a z.large@us-east-1c m5.large@ r5.large@ c5.xlarge@"; strings.Join(fb, " ") != w {
		t.Errorf("fallbacks %v, want %s", fb, w)
	}
	raw, err := json.Marshal(ch)
	if err != nil || !strings.Contains(string(raw), `"reasons":["arch arm64 not in (amd64)"]`) {
		t.Errorf("JSON %s (%v) lacks the reasons", raw, err)
	}
}

func TestSelectLimits(t *testing.T) {
	ix := NewIndex(testCatalog())
	for _, tt := range []struct {
		opts                Options
		fallbacks, rejected int
	}{
		{Options{}, DefaultMaxFallbacks, 4},
		{Options{MaxFallbacks: 2, MaxRejected: 1}, 2, 1},
		{Options{MaxFallbacks: -1, MaxRejected: -1}, 0, 0},
	} {
		ch, err := ix.Select(pod(requests("cpu", "1")), tt.opts)
		if err != nil {
			t.Fatal(err)
		}
		if len(ch.Fallbacks) != tt.fallbacks || len(ch.Rejected) != tt.rejected {
			t.Errorf("%+v: %d fallbacks %d rejected, want %d %d", tt.opts, len(ch.Fallbacks), len(ch.Rejected), tt.fallbacks, tt.rejected)
		}
	}
}

func TestSelectErrors(t *testing.T) {
	tests := []struct {
		name string
		pod  *corev1.Pod
		opts Options
		kind func(error) bool
		want []string // substrings of the message
	}{
		{"nothing fits", pod(requests("cpu", "100")), Options{}, IsNoFit,
			[]string{"asked cpu 100.05, memory 128Mi", "on-demand", "closest: t3.small", "cpu 2 < 100.05", "largest: g4dn.xlarge (4 vCPU"}},
		{"nothing fits the gpu and arch", pod(requests("nvidia.com/gpu", "2"), nodeSelector("kubernetes.io/arch", "arm64")), Options{}, IsNoFit,
			[]string{"gpu 2", "arch in (arm64)", "closest: m6g.large"}},
		{"exact type too small", pod(requests("memory", "6Gi"), annotate(AnnotationInstanceType, "c5.large")), Options{}, IsNoFit,
			[]string{`annotation pod.kip.dev/instance-type="c5.large"`, "memory 4096Mi < 6272Mi"}},
		{"spot of a type without spot", pod(annotate(AnnotationInstanceType, "r5.large", AnnotationLaunchType, "spot")), Options{}, IsNoFit,
			[]string{"spot", "no instance type is offered in that market and zone"}},
		{"unknown instance type", pod(annotate(AnnotationInstanceType, "m9.huge")), Options{}, IsBadAnnotation,
			[]string{`annotation pod.kip.dev/instance-type="m9.huge"`, "unknown instance type"}},
		{"bad glob", pod(annotate(LegacyAnnotationInstanceType, "c5[")), Options{}, IsBadAnnotation,
			[]string{`annotation pod.elotl.co/instance-type="c5["`, "bad glob"}},
		{"glob matching nothing", pod(annotate(AnnotationInstanceType, "zz*")), Options{}, IsBadAnnotation,
			[]string{"matches no instance type"}},
		{"bad launch type", pod(annotate(AnnotationLaunchType, "cheap")), Options{}, IsBadAnnotation,
			[]string{`annotation pod.kip.dev/launch-type="cheap"`, "spot or on-demand"}},
		{"dedicated launch type", pod(annotate(LegacyAnnotationLaunchType, "dedicated")), Options{}, IsBadAnnotation,
			[]string{"pod.elotl.co/launch-type", "dedicated hosts are not supported"}},
		{"conflicting spellings", pod(annotate(AnnotationInstanceType, "c5.large", LegacyAnnotationInstanceType, "m5.large")), Options{}, IsBadAnnotation,
			[]string{"conflicts with pod.elotl.co/instance-type"}},
		{"negative request", pod(requests("cpu", "-1")), Options{}, IsBadPod,
			[]string{"spec.containers[0].resources.requests[cpu]", "must not be negative"}},
		{"default type not in catalog", pod(), Options{DefaultType: "t9.nano"}, func(err error) bool { return err != nil },
			[]string{`default instance type "t9.nano" is not in the catalog`}},
		{"nil pod", nil, Options{}, IsBadPod, []string{"pod: is nil"}},
	}
	ix := NewIndex(testCatalog())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, err := ix.Select(tt.pod, tt.opts)
			if err == nil {
				t.Fatalf("Select chose %s, want an error", ch.Type.Name)
			}
			if !tt.kind(err) {
				t.Errorf("error %T %v is not of the expected kind", err, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestIndexConcurrent selects from one Index on many goroutines (run with -race), globs
// included, and checks every answer matches a sequential run.
func TestIndexConcurrent(t *testing.T) {
	ix := NewIndex(testCatalog())
	pods := []*corev1.Pod{
		pod(requests("cpu", "1")),
		pod(annotate(AnnotationInstanceType, "c5*")),
		pod(annotate(AnnotationInstanceType, "?5.*", AnnotationLaunchType, "spot")),
		pod(requests("nvidia.com/gpu", "1")),
	}
	want := make([]string, len(pods))
	for i, p := range pods {
		ch, err := ix.Select(p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		want[i] = ch.Type.Name
	}
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		go func() {
			for k := 0; k < 200; k++ {
				i := (g + k) % len(pods)
				ch, err := ix.Select(pods[i].DeepCopy(), Options{})
				if err == nil && ch.Type.Name != want[i] {
					err = fmt.Errorf("pod %d: chose %s, want %s", i, ch.Type.Name, want[i])
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for g := 0; g < 8; g++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestNvidiaGPUsOnly: nvidia.com/gpu asks for NVIDIA GPUs; an AMD GPU type (a g4ad) never
// serves it, however cheap, while a type whose model is unknown still counts as NVIDIA.
func TestNvidiaGPUsOnly(t *testing.T) {
	cat := append(testCatalog(), amdGPU(it("g4ad.xlarge", "amd64", 4, 16384, 1, od(0.379), spotAt(0.114))))
	gpuPod := pod(containers(ctr("app", nil, rl("nvidia.com/gpu", "1"))))
	ch, err := Select(gpuPod, cat, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ch.Type.Name != "g4dn.xlarge" {
		t.Errorf("chose %s for an NVIDIA GPU, want g4dn.xlarge", ch.Type.Name)
	}
	for _, f := range ch.Fallbacks {
		if f.Type.Name == "g4ad.xlarge" {
			t.Error("the AMD type is a fallback for an NVIDIA GPU")
		}
	}
	// With only the AMD type on offer, nothing fits and the message says why.
	_, err = Select(gpuPod, []instancetype.InstanceType{cat[len(cat)-1]}, Options{})
	if err == nil || !strings.Contains(err.Error(), "gpu 0 < 1") {
		t.Errorf("error %v, want a no-fit naming gpu 0 < 1", err)
	}
}

// TestSpotFallback: with Options.SpotFallback a spot pod's fallbacks continue with on-demand
// offerings after the spot ones, and a spot pod that no spot offering fits (r5.large has none)
// gets on-demand; without it, neither.
func TestSpotFallback(t *testing.T) {
	ix := NewIndex(testCatalog())
	spotPod := pod(requests("cpu", "1"), annotate(AnnotationLaunchType, "spot"))
	ch, err := ix.Select(spotPod, Options{SpotFallback: true})
	if err != nil {
		t.Fatal(err)
	}
	if !ch.Offering.Spot {
		t.Fatalf("chose on-demand %s while spot fits", ch.Type.Name)
	}
	firstOD := slices.IndexFunc(ch.Fallbacks, func(c Candidate) bool { return !c.Offering.Spot })
	if firstOD < 0 {
		t.Fatalf("no on-demand fallback among %d", len(ch.Fallbacks))
	}
	for _, c := range ch.Fallbacks[firstOD:] {
		if c.Offering.Spot {
			t.Errorf("spot fallback %s after an on-demand one", c.Type.Name)
		}
	}
	if plain, _ := ix.Select(spotPod, Options{}); slices.ContainsFunc(plain.Fallbacks, func(c Candidate) bool { return !c.Offering.Spot }) {
		t.Error("on-demand fallbacks without SpotFallback")
	}

	noSpot := pod(annotate(AnnotationInstanceType, "r5.large", AnnotationLaunchType, "spot"))
	if _, err := ix.Select(noSpot, Options{}); !IsNoFit(err) {
		t.Fatalf("r5.large spot without fallback: %v, want no fit", err)
	}
	ch, err = ix.Select(noSpot, Options{SpotFallback: true})
	if err != nil || ch.Type.Name != "r5.large" || ch.Offering.Spot || !strings.Contains(ch.Reason, "on-demand fallback") {
		t.Fatalf("r5.large spot with fallback = %+v, %v; want on-demand r5.large", ch, err)
	}
}

// TestAMDGPUs: amd.com/gpu asks for AMD GPUs: only a type whose GPUs AMD makes (by
// GPUVendor, or the model's vendor prefix) serves it, and an NVIDIA type never does.
func TestAMDGPUs(t *testing.T) {
	g4ad := it("g4ad.xlarge", "amd64", 4, 16384, 1, od(0.379), spotAt(0.114))
	g4ad.GPUVendor = "amd"
	cat := append(testCatalog(), g4ad)
	amdPod := pod(containers(ctr("app", nil, rl("amd.com/gpu", "1"))))
	ch, err := Select(amdPod, cat, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ch.Type.Name != "g4ad.xlarge" || ch.Needs.AMDGPU != 1 || ch.Needs.GPU != 0 {
		t.Errorf("chose %s (needs %v) for an AMD GPU, want g4ad.xlarge", ch.Type.Name, ch.Needs)
	}
	for _, f := range ch.Fallbacks {
		if f.Type.GPUMaker() != "amd" {
			t.Errorf("fallback %s (GPUs by %q) for an AMD GPU", f.Type.Name, f.Type.GPUMaker())
		}
	}
	nvidiaPod := pod(containers(ctr("app", nil, rl("nvidia.com/gpu", "1"))))
	if ch, err := Select(nvidiaPod, cat, Options{}); err != nil || ch.Type.GPUMaker() != "nvidia" {
		t.Errorf("nvidia.com/gpu chose %v (%v), want an NVIDIA type", ch, err)
	}
	_, err = Select(amdPod, testCatalog(), Options{})
	if err == nil || !strings.Contains(err.Error(), "amd gpu 0 < 1") {
		t.Errorf("AMD GPU pod on a catalog of NVIDIA GPUs: %v, want a no-fit naming amd gpu 0 < 1", err)
	}
	if _, err := Select(pod(containers(ctr("app", nil, rl("amd.com/gpu", "500m")))), cat, Options{}); !IsBadPod(err) {
		t.Errorf("half an AMD GPU: %v, want a pod error", err)
	}
}

// TestPinnedTypeGPUShortfall: a pod naming an instance type with fewer GPUs (of the maker it
// asks for) than it asks for is the pod's error, naming the first container field that asks,
// the type and the annotation; a type with enough GPUs is chosen.
func TestPinnedTypeGPUShortfall(t *testing.T) {
	g4ad := amdGPU(it("g4ad.xlarge", "amd64", 4, 16384, 1, od(0.379), spotAt(0.114)))
	ix := NewIndex(append(testCatalog(), g4ad))
	gpus := func(res, n string) corev1.ResourceList { return rl(res, n) }
	for _, tc := range []struct {
		name      string
		pod       *corev1.Pod
		wantField string
		wantMsg   string
	}{
		{"no GPU at all", pod(annotate(AnnotationInstanceType, "m5.large"), containers(ctr("app", nil, gpus("nvidia.com/gpu", "1")))),
			"spec.containers[0].resources.limits[nvidia.com/gpu]", `asks for 1 nvidia.com/gpu, but instance type m5.large (annotation pod.kip.dev/instance-type) has 0 NVIDIA GPUs`},
		{"AMD's GPUs for an NVIDIA ask", pod(annotate(AnnotationInstanceType, "g4ad.xlarge"), containers(ctr("app", nil, gpus("nvidia.com/gpu", "1")))),
			"spec.containers[0].resources.limits[nvidia.com/gpu]", "has 1 GPUs, none of them NVIDIA"},
		{"two containers, one GPU", pod(annotate(AnnotationInstanceType, "g4dn.xlarge"),
			containers(ctr("a", nil, nil), ctr("b", gpus("nvidia.com/gpu", "1"), nil), ctr("c", nil, gpus("nvidia.com/gpu", "1")))),
			"spec.containers[1].resources.requests[nvidia.com/gpu]", "asks for 2 nvidia.com/gpu"},
		{"a sidecar's GPU", pod(annotate(AnnotationInstanceType, "m5.large"), inits(sidecar("sc", gpus("amd.com/gpu", "1")))),
			"spec.initContainers[0].resources.requests[amd.com/gpu]", "has 0 AMD GPUs"},
		{"the legacy annotation", pod(annotate("pod.elotl.co/instance-type", "m5.large"), containers(ctr("app", nil, gpus("nvidia.com/gpu", "1")))),
			"spec.containers[0].resources.limits[nvidia.com/gpu]", "(annotation pod.elotl.co/instance-type)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ix.Select(tc.pod, Options{})
			var pe *PodError
			if !errors.As(err, &pe) || pe.Field != tc.wantField || !strings.Contains(pe.Reason, tc.wantMsg) {
				t.Errorf("Select = %v, want a pod error on %s saying %q", err, tc.wantField, tc.wantMsg)
			}
		})
	}
	ch, err := ix.Select(pod(annotate(AnnotationInstanceType, "g4dn.xlarge"), containers(ctr("app", nil, gpus("nvidia.com/gpu", "1")))), Options{})
	if err != nil || ch.Type.Name != "g4dn.xlarge" {
		t.Errorf("one GPU on g4dn.xlarge: %+v, %v", ch, err)
	}
}
