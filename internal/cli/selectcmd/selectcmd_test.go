package selectcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/config"
	"k8s.io/apimachinery/pkg/api/resource"
)

const examples = "../../../examples/select"

// execute runs `kip select` with args and returns stdout, stderr and the error.
func execute(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	cmd := NewCommand()
	var out, errOut bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func exampleFiles(t *testing.T) []string {
	files, err := filepath.Glob(filepath.Join(examples, "*.yaml"))
	if err != nil || len(files) < 5 {
		t.Fatalf("examples: %v %v", files, err)
	}
	return files
}

// TestExamplesText runs the command the way the docs show, on the shipped examples.
func TestExamplesText(t *testing.T) {
	args := append([]string{"--cloud", "aws", "--region", "us-east-1", "-f"}, exampleFiles(t)...)
	out, errOut, err := execute(t, "", args...)
	if err != nil {
		t.Fatalf("kip select: %v\n%s", err, out)
	}
	for _, want := range []string{
		"Catalog: aws us-east-1",
		"Deployment shop/web", "chosen:    t3a.small (2 vCPU, 2048 MiB, on-demand)  $0.0188/h", "x 3 replicas = $0.0564/h",
		"burstable baseline 0.2 vCPU < 0.3 (unlimited credits off)",
		"Pod shop/api", "needs:     cpu 2.05, memory 3712Mi",
		"CronJob analytics/nightly-report", "spot)",
		"Job ml/train", "nvidia-t4", "gpu 0 < 1",
		"StatefulSet shop/cache", `annotation pod.kip.dev/instance-type="r5*"`,
		"Pod default/hello", "fallbacks:",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "skipping "+filepath.Join(examples, "web.yaml")+"#2 (v1 Service)") {
		t.Errorf("stderr %q does not mention the skipped Service", errOut)
	}
}

func TestExamplesJSON(t *testing.T) {
	out, _, err := execute(t, "", "-o", "json", "-f", examples) // a directory
	if err != nil {
		t.Fatal(err)
	}
	var results []result
	if err := json.Unmarshal([]byte(out), &results); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	if len(results) != 6 {
		t.Fatalf("%d results, want 6", len(results))
	}
	byName := map[string]result{}
	for _, r := range results {
		if r.Error != "" || r.Chosen == nil || r.Chosen.PricePerHour <= 0 || r.Needs == nil || r.Reason == "" {
			t.Errorf("%s: incomplete result %+v", r.Name, r)
			continue
		}
		prev := r.Chosen.PricePerHour
		for _, f := range r.Fallbacks {
			if f.PricePerHour < prev {
				t.Errorf("%s: fallbacks out of order", r.Name)
			}
			prev = f.PricePerHour
		}
		byName[r.Name] = r
	}
	checks := []struct {
		name string
		ok   func(r result) bool
	}{
		{"web", func(r result) bool {
			return r.Chosen.InstanceType == "t3a.small" && *r.Replicas == 3 && r.Needs.CPU == "0.3" && r.Needs.Memory == "384Mi"
		}},
		{"train", func(r result) bool { return r.Chosen.GPU >= 1 && r.Needs.GPU == 1 }},
		{"nightly-report", func(r result) bool { return r.Chosen.Spot && r.Chosen.VCPU >= 4.05 }},
		{"cache", func(r result) bool {
			return strings.HasPrefix(r.Chosen.InstanceType, "r5") && r.Chosen.MemoryMiB >= 12416
		}},
		{"hello", func(r result) bool { return r.Chosen.InstanceType == "t3a.nano" && r.Needs.CPU == "0.05" }},
		{"api", func(r result) bool {
			return r.Chosen.VCPU >= 2.05 && len(r.Rejected) > 0 && len(r.Rejected[0].Reasons) > 0
		}},
	}
	for _, c := range checks {
		if r, ok := byName[c.name]; !ok || !c.ok(r) {
			t.Errorf("%s: unexpected result %+v", c.name, r)
		}
	}
}

// TestPlacementErrors: templates that cannot be placed are reported with the others, and the
// command fails. The local catalog has no GPUs, no spot market and no r5 types.
func TestPlacementErrors(t *testing.T) {
	out, _, err := execute(t, "", "--cloud", "local", "-o", "json", "-f", examples)
	if err == nil || !strings.Contains(err.Error(), "3 of 6 pod templates cannot be placed") {
		t.Fatalf("error = %v, want three templates unplaced", err)
	}
	var results []result
	if err := json.Unmarshal([]byte(out), &results); err != nil {
		t.Fatal(err)
	}
	wantErr := map[string]string{
		"train":          "no instance type fits: asked cpu 6.05, memory 24704Mi, gpu 1",
		"nightly-report": "spot; no instance type is offered in that market and zone",
		"cache":          `annotation pod.kip.dev/instance-type="r5*": matches no instance type in the catalog`,
	}
	for _, r := range results {
		want, bad := wantErr[r.Name]
		switch {
		case bad && !strings.Contains(r.Error, want):
			t.Errorf("%s: error %q, want it to contain %q", r.Name, r.Error, want)
		case !bad && (r.Error != "" || !strings.HasPrefix(r.Chosen.InstanceType, "local.")):
			t.Errorf("%s: %+v, want a local type", r.Name, r)
		}
	}
	out, _, err = execute(t, "", "--cloud", "azure", "--region", "West Europe", "-f", filepath.Join(examples, "web.yaml"))
	if err != nil || !strings.Contains(out, "Catalog: azure West Europe") || !strings.Contains(out, "Standard_") {
		t.Errorf("azure: %v\n%s", err, out)
	}
}

func TestStdinAndFlags(t *testing.T) {
	pod := `apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - name: c
    image: busybox
    resources: {requests: {cpu: "1"}}
`
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"stdin", []string{"-f", "-"}, "c5a.large"},
		{"unlimited credits", []string{"-f", "-", "--unlimited-credits"}, "unlimited credits"},
		{"spot", []string{"-f", "-", "--spot"}, "spot)"},
		{"no reserve", []string{"-f", "-", "--reserve-cpu", "0", "--reserve-memory", "0", "--fallbacks", "0"}, "needs:     cpu 1, memory 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := execute(t, pod, tt.args...)
			if err != nil || !strings.Contains(out, tt.want) {
				t.Fatalf("err %v; output lacks %q:\n%s", err, tt.want, out)
			}
			if tt.name == "no reserve" && strings.Contains(out, "fallbacks:") {
				t.Errorf("--fallbacks 0 still printed fallbacks")
			}
		})
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	unknownField := write("unknown.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containerz: []\n")
	noKind := write("nokind.yaml", "metadata: {name: p}\n")
	badYAML := write("bad.yaml", "apiVersion: v1\nkind: Pod\nspec: [\n")
	badAnn := write("ann.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {pod.kip.dev/launch-type: cheap}}\nspec: {containers: [{name: c, image: busybox}]}\n")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no files", nil, "no manifests"},
		{"bad output", []string{"-f", badAnn, "-o", "yaml"}, `--output: "yaml"`},
		{"unknown cloud", []string{"-f", badAnn, "--cloud", "gcp"}, "--cloud gcp"},
		{"unknown region", []string{"-f", badAnn, "--region", "mars-1"}, `unknown region "mars-1"`},
		{"missing file", []string{"-f", filepath.Join(dir, "nope.yaml")}, "no such file"},
		{"unknown field", []string{"-f", unknownField}, `unknown field "spec.containerz"`},
		{"no kind", []string{"-f", noKind}, "apiVersion and kind must be set"},
		{"bad yaml", []string{"-f", badYAML}, "bad.yaml"},
		{"bad annotation", []string{"-f", badAnn}, "1 of 1 pod templates cannot be placed"},
		{"bad reserve", []string{"-f", badAnn, "--reserve-cpu", "lots"}, "--reserve-cpu"},
		{"negative fallbacks", []string{"-f", badAnn, "--fallbacks", "-2"}, "--fallbacks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := execute(t, "", tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to contain %q\n%s", err, tt.want, out)
			}
			if tt.name == "bad annotation" && !strings.Contains(out, `annotation pod.kip.dev/launch-type="cheap": must be spot or on-demand`) {
				t.Errorf("output does not explain the annotation:\n%s", out)
			}
		})
	}
}

// TestDefaultReserveIsKipRuns: kip select's default reserve is the one kip run adds when its
// config sets none, so the preview agrees with what runs.
func TestDefaultReserveIsKipRuns(t *testing.T) {
	run := config.NewDefault().Cells.Reserve
	flags := NewCommand().Flags()
	for _, f := range []struct {
		flag string
		want resource.Quantity
	}{{"reserve-cpu", run.CPU.Quantity}, {"reserve-memory", run.Memory.Quantity}} {
		got := resource.MustParse(flags.Lookup(f.flag).DefValue)
		if got.Cmp(f.want) != 0 {
			t.Errorf("--%s defaults to %s; kip run reserves %s", f.flag, got.String(), f.want.String())
		}
	}
}
