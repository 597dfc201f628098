package kipnode

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/kip-dev/kip/internal/cli/selectcmd"
	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/selector"
)

// shapes generates n pods of varied shapes, the same ones every run: requests or only limits,
// init containers bigger than the app, arm64 selectors, spot annotations, pods asking for
// nothing.
func shapes(n int) []*corev1.Pod {
	r := rand.New(rand.NewPCG(12, 2026))
	pods := make([]*corev1.Pod, n)
	for i := range pods {
		res := corev1.ResourceList{}
		if r.IntN(10) > 0 {
			res[corev1.ResourceCPU] = *resource.NewMilliQuantity(int64(10*(1+r.IntN(1600))), resource.DecimalSI)
			res[corev1.ResourceMemory] = *resource.NewQuantity(int64(1+r.IntN(64*1024))<<20, resource.BinarySI)
		}
		ctr := corev1.Container{Name: "app", Image: "busybox", Resources: corev1.ResourceRequirements{Requests: res}}
		if r.IntN(5) == 0 {
			ctr.Resources = corev1.ResourceRequirements{Limits: res}
		}
		p := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("shape-%03d", i), Namespace: "default"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{ctr}}}
		if r.IntN(6) == 0 {
			p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceMemory: *resource.NewQuantity(int64(1+r.IntN(16*1024))<<20, resource.BinarySI)}}}}
		}
		if r.IntN(8) == 0 {
			p.Spec.NodeSelector = map[string]string{corev1.LabelArchStable: "arm64"}
		}
		if r.IntN(8) == 0 {
			p.Annotations = map[string]string{selector.AnnotationLaunchType: "spot"}
		}
		pods[i] = p
	}
	return pods
}

// TestKipSelectAgreesWithKipRun: for 200 generated pod shapes, `kip select --config` chooses
// the instance type kip run's selector (configured by selectorOptions from the same file)
// chooses from the same catalog, with a reserve, default type and spot fallback that are not
// the defaults; and with no config, kip select's defaults are kip run's defaults.
func TestKipSelectAgreesWithKipRun(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "kip.yaml")
	if err := os.WriteFile(cfgPath, []byte(`apiVersion: kip.dev/v1alpha1
kind: ProviderConfig
cells:
  reserve: {cpu: 350m, memory: 700Mi}
  defaultInstanceType: m5.large
  spotFallbackToOnDemand: true
`), 0o600); err != nil {
		t.Fatal(err)
	}
	pods := shapes(200)
	var manifests bytes.Buffer
	for _, p := range pods {
		b, err := yaml.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		manifests.WriteString("---\n")
		manifests.Write(b)
	}
	types, err := instancetype.Load("aws", "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		cfg  func() (*config.ProviderConfig, error)
	}{
		{"config file", []string{"--config", cfgPath}, func() (*config.ProviderConfig, error) { return config.Load(cfgPath) }},
		{"defaults", nil, func() (*config.ProviderConfig, error) { return config.NewDefault(), nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.cfg()
			if err != nil {
				t.Fatal(err)
			}
			run := &selector.Selector{Options: selectorOptions(cfg)} // what kip run's cells use
			cmd := selectcmd.NewCommand()
			var out, errOut bytes.Buffer
			cmd.SetArgs(append([]string{"-f", "-", "-o", "json", "--cloud", "aws", "--region", "us-east-1"}, tc.args...))
			cmd.SetIn(bytes.NewReader(manifests.Bytes()))
			cmd.SetOut(&out)
			cmd.SetErr(&errOut)
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			_ = cmd.ExecuteContext(context.Background()) // an unplaceable pod makes it fail after printing
			var results []struct {
				Name   string `json:"name"`
				Chosen *struct {
					InstanceType string `json:"instanceType"`
					Spot         bool   `json:"spot"`
				} `json:"chosen"`
				Error string `json:"error"`
			}
			if err := json.Unmarshal(out.Bytes(), &results); err != nil {
				t.Fatalf("kip select output: %v\n%s%s", err, out.String(), errOut.String())
			}
			if len(results) != len(pods) {
				t.Fatalf("kip select answered for %d pods, want %d", len(results), len(pods))
			}
			differ := 0
			for i, p := range pods {
				sel := results[i]
				ch, err := run.Select(p, types)
				var want, got string
				switch {
				case err != nil:
					want = "error"
				default:
					want = fmt.Sprintf("%s spot=%v", ch.Type.Name, ch.Offering.Spot)
				}
				switch {
				case sel.Error != "":
					got = "error"
				case sel.Chosen != nil:
					got = fmt.Sprintf("%s spot=%v", sel.Chosen.InstanceType, sel.Chosen.Spot)
				}
				if got != want {
					differ++
					if differ <= 5 {
						t.Errorf("%s: kip select chose %s, kip run chooses %s", p.Name, got, want)
					}
				}
			}
			if differ > 0 {
				t.Errorf("%d of %d shapes differ", differ, len(pods))
			}
			if strings.Count(manifests.String(), "kind: Pod") != len(pods) {
				t.Fatal("manifests lost a pod")
			}
		})
	}
}
