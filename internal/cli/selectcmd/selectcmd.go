// Package selectcmd implements `kip select`: it reads workload manifests and shows, for each
// pod template, the instance type Kip would run it on in a given cloud region, its hourly
// price, what the pod was found to need, the cheaper types that were rejected and why, and the
// fallbacks for capacity errors — as text, or as JSON with -o json.
package selectcmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/selector"
)

// defaultRegions is the region used per cloud when --region is not given.
var defaultRegions = map[string]string{"aws": "us-east-1", "azure": "eastus", "local": "local"}

// options are the command's flags.
type options struct {
	files            []string
	config           string
	cloud, region    string
	output           string
	defaultType      string
	spot             bool
	unlimitedCredits bool
	reserveCPU       string
	reserveMemory    string
	fallbacks        int
}

// NewCommand returns `kip select`.
func NewCommand() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "select -f FILE... [--cloud aws|azure|local] [--region R] [-o json]",
		Short: "Show the instance type, and its price, each pod in the manifests would get",
		Long: `kip select reads Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,
Job and CronJob manifests (multi-document YAML or JSON; other kinds are skipped) and prints, for each
pod template, the cheapest instance type that fits it in the given cloud region, its hourly price,
the needs computed (requests, or limits where requests are absent, of containers, init containers
and sidecars, plus pod overhead and the cell reserve), the cheaper candidates rejected and why, and
the fallbacks tried on capacity errors. Prices come from the catalog embedded in kip.`,
		Example: `  kip select -f examples/select/*.yaml --cloud aws --region us-east-1
  kip select -f deploy.yaml -o json
  kubectl get deploy web -o yaml | kip select -f -`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.files = append(o.files, args...)
			return run(cmd.Context(), o, cmd.Flags().Changed, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.files, "filename", "f", nil, "manifest file, directory (its *.yaml, *.yml, *.json) or - for stdin; repeatable (further arguments are files too)")
	f.StringVar(&o.cloud, "cloud", "aws", "cloud whose catalog to use: "+strings.Join(instancetype.Clouds(), ", "))
	f.StringVar(&o.region, "region", "", "region (default: us-east-1 on aws, eastus on azure, local on local)")
	f.StringVarP(&o.output, "output", "o", "text", "output format: text or json")
	f.StringVar(&o.config, "config", "", "kip run's config file: select with its cells.reserve, cells.defaultInstanceType and cells.spotFallbackToOnDemand, as kip run does (flags given explicitly override it)")
	f.StringVar(&o.defaultType, "default-type", "", "instance type for pods that ask for no resources (default: the cheapest fit)")
	f.BoolVar(&o.spot, "spot", false, "use spot prices for pods without a launch-type annotation")
	f.BoolVar(&o.unlimitedCredits, "unlimited-credits", false, "let burstable types run above their baseline, paying for surplus credits")
	f.StringVar(&o.reserveCPU, "reserve-cpu", resource.NewMilliQuantity(selector.DefaultReserve.CPUMilli, resource.DecimalSI).String(), "CPU reserved on each cell for the agent and OS")
	f.StringVar(&o.reserveMemory, "reserve-memory", resource.NewQuantity(selector.DefaultReserve.MemoryBytes, resource.BinarySI).String(), "memory reserved on each cell for the agent and OS")
	f.IntVar(&o.fallbacks, "fallbacks", selector.DefaultMaxFallbacks, "how many fallbacks to show")
	return cmd
}

// result is what the command reports for one pod template; it is also the JSON output.
type result struct {
	Source    string `json:"source"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Replicas  *int32 `json:"replicas,omitempty"`
	Needs     *needs `json:"needs,omitempty"`
	// Chosen is nil when Error is set.
	Chosen    *offering   `json:"chosen,omitempty"`
	Reason    string      `json:"reason,omitempty"`
	Fallbacks []offering  `json:"fallbacks,omitempty"`
	Rejected  []rejection `json:"rejected,omitempty"`
	Error     string      `json:"error,omitempty"`
}

type needs struct {
	// CPU is in vCPUs ("2.05"), Memory a Kubernetes quantity ("3712Mi").
	CPU          string `json:"cpu"`
	Memory       string `json:"memory"`
	GPU          int    `json:"gpu"`
	Arch         string `json:"arch,omitempty"`
	Zone         string `json:"zone,omitempty"`
	InstanceType string `json:"instanceType,omitempty"`
}

type offering struct {
	InstanceType     string  `json:"instanceType"`
	VCPU             float64 `json:"vcpu"`
	MemoryMiB        int64   `json:"memoryMiB"`
	GPU              int     `json:"gpu,omitempty"`
	GPUModel         string  `json:"gpuModel,omitempty"`
	Arch             string  `json:"arch"`
	Spot             bool    `json:"spot"`
	Zone             string  `json:"zone,omitempty"`
	PricePerHour     float64 `json:"pricePerHour"`
	UnlimitedCredits bool    `json:"unlimitedCredits,omitempty"`
}

type rejection struct {
	InstanceType string   `json:"instanceType"`
	PricePerHour float64  `json:"pricePerHour"`
	Reasons      []string `json:"reasons"`
}

// run selects for every pod template in o.files and prints the results. It returns an error
// when an input cannot be read or a pod template cannot be placed, after printing the rest.
func run(ctx context.Context, o *options, changed func(flag string) bool, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(o.files) == 0 {
		return errors.New("no manifests: give -f FILE (or - for stdin)")
	}
	if o.output != "text" && o.output != "json" {
		return fmt.Errorf("--output: %q is not text or json", o.output)
	}
	if o.region == "" {
		o.region = defaultRegions[o.cloud]
	}
	opts, err := o.selectorOptions(changed)
	if err != nil {
		return err
	}
	types, err := instancetype.Load(o.cloud, o.region)
	if err != nil {
		return fmt.Errorf("--cloud %s --region %s: %w", o.cloud, o.region, err)
	}
	ix := selector.NewIndex(types)

	var results []result
	failed := 0
	for _, name := range o.files {
		ws, skipped, err := readInput(name, stdin)
		if err != nil {
			return err
		}
		for _, s := range skipped {
			fmt.Fprintf(stderr, "kip select: skipping %s: not a workload\n", s)
		}
		for _, w := range ws {
			if err := ctx.Err(); err != nil {
				return err
			}
			r := choose(ix, w, opts)
			if r.Error != "" {
				failed++
			}
			results = append(results, r)
		}
	}
	if o.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if results == nil {
			results = []result{}
		}
		if err := enc.Encode(results); err != nil {
			return fmt.Errorf("writing JSON: %w", err)
		}
	} else {
		fmt.Fprintf(stdout, "Catalog: %s %s (%d instance types)\n", o.cloud, o.region, len(types))
		for _, r := range results {
			printText(stdout, r)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d pod templates cannot be placed", failed, len(results))
	}
	return nil
}

// selectorOptions starts from the options kip run would use (the --config file's, else the
// default config's: config.ProviderConfig.SelectorOptions is the one mapping both commands
// use) and applies the flags given explicitly.
func (o *options) selectorOptions(changed func(flag string) bool) (selector.Options, error) {
	cfg := config.NewDefault()
	if o.config != "" {
		c, err := config.Load(o.config)
		if err != nil {
			return selector.Options{}, fmt.Errorf("--config: %w", err)
		}
		cfg = c
	}
	opts := cfg.SelectorOptions()
	reserve := *opts.Reserve
	if changed("reserve-cpu") {
		cpu, err := resource.ParseQuantity(o.reserveCPU)
		if err != nil || cpu.Sign() < 0 {
			return selector.Options{}, fmt.Errorf("--reserve-cpu: %q is not a non-negative quantity", o.reserveCPU)
		}
		reserve.CPUMilli = cpu.MilliValue()
	}
	if changed("reserve-memory") {
		mem, err := resource.ParseQuantity(o.reserveMemory)
		if err != nil || mem.Sign() < 0 {
			return selector.Options{}, fmt.Errorf("--reserve-memory: %q is not a non-negative quantity", o.reserveMemory)
		}
		reserve.MemoryBytes = mem.Value()
	}
	opts.Reserve = &reserve
	if o.fallbacks < 0 {
		return selector.Options{}, fmt.Errorf("--fallbacks: %d must not be negative", o.fallbacks)
	}
	opts.MaxFallbacks = o.fallbacks
	if o.fallbacks == 0 {
		opts.MaxFallbacks = -1 // none
	}
	if changed("default-type") {
		opts.DefaultType = o.defaultType
	}
	opts.Spot = o.spot
	opts.UnlimitedCredits = o.unlimitedCredits
	return opts, nil
}

// readInput reads a file, every manifest in a directory, or stdin for "-".
func readInput(name string, stdin io.Reader) ([]workload, []string, error) {
	if name == "-" {
		return readManifests(stdin, "stdin")
	}
	st, err := os.Stat(name)
	if err != nil {
		return nil, nil, fmt.Errorf("reading manifests: %w", err)
	}
	files := []string{name}
	if st.IsDir() {
		files = nil
		entries, err := os.ReadDir(name)
		if err != nil {
			return nil, nil, fmt.Errorf("reading manifests: %w", err)
		}
		for _, e := range entries {
			if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".yaml" || ext == ".yml" || ext == ".json") {
				files = append(files, filepath.Join(name, e.Name()))
			}
		}
		sort.Strings(files)
	}
	var ws []workload
	var skipped []string
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, nil, fmt.Errorf("reading manifests: %w", err)
		}
		w, s, err := readManifests(fh, f)
		fh.Close()
		if err != nil {
			return nil, nil, err
		}
		ws, skipped = append(ws, w...), append(skipped, s...)
	}
	return ws, skipped, nil
}

// choose runs the selector for one workload and shapes the answer for output.
func choose(ix *selector.Index, w workload, opts selector.Options) result {
	r := result{Source: w.Source, Kind: w.Kind, Namespace: w.Namespace, Name: w.Name, Replicas: w.Replicas}
	if n, err := selector.Needs(w.Pod, opts); err == nil {
		r.Needs = toNeeds(n)
	}
	ch, err := ix.Select(w.Pod, opts)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.Needs = toNeeds(ch.Needs)
	r.Chosen = toOffering(ch.Candidate)
	r.Reason = ch.Reason
	for _, f := range ch.Fallbacks {
		r.Fallbacks = append(r.Fallbacks, *toOffering(f))
	}
	for _, rj := range ch.Rejected {
		r.Rejected = append(r.Rejected, rejection{InstanceType: rj.Type, PricePerHour: rj.Price, Reasons: rj.Reasons()})
	}
	return r
}

func toNeeds(n selector.Resources) *needs {
	out := &needs{
		CPU:    strconv.FormatFloat(float64(n.CPUMilli)/1000, 'f', -1, 64),
		Memory: resource.NewQuantity(n.MemoryBytes, resource.BinarySI).String(),
		GPU:    n.GPU,
	}
	if len(n.Arch) > 0 {
		out.Arch = n.Arch.String()
	}
	if len(n.Zone) > 0 {
		out.Zone = n.Zone.String()
	}
	if len(n.InstanceType) > 0 {
		out.InstanceType = n.InstanceType.String()
	}
	return out
}

func toOffering(c selector.Candidate) *offering {
	return &offering{
		InstanceType: c.Type.Name, VCPU: c.Type.VCPU, MemoryMiB: c.Type.MemoryMiB, GPU: c.Type.GPU,
		GPUModel: c.Type.GPUModel, Arch: c.Type.Arch, Spot: c.Offering.Spot, Zone: c.Zone,
		PricePerHour: c.Price, UnlimitedCredits: c.UnlimitedCredits,
	}
}

// hoursPerMonth is the 730 hours AWS and Azure price months with.
const hoursPerMonth = 730

func printText(w io.Writer, r result) {
	fmt.Fprintf(w, "\n%s %s/%s  (%s)\n", r.Kind, r.Namespace, r.Name, r.Source)
	if r.Needs != nil {
		fmt.Fprintf(w, "  needs:     cpu %s, memory %s", r.Needs.CPU, r.Needs.Memory)
		if r.Needs.GPU > 0 {
			fmt.Fprintf(w, ", gpu %d", r.Needs.GPU)
		}
		for _, c := range [][2]string{{"arch", r.Needs.Arch}, {"zone", r.Needs.Zone}, {"instance-type", r.Needs.InstanceType}} {
			if c[1] != "" {
				fmt.Fprintf(w, ", %s %s", c[0], c[1])
			}
		}
		fmt.Fprintln(w)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "  error:     %s\n", r.Error)
		return
	}
	c := r.Chosen
	fmt.Fprintf(w, "  chosen:    %s  $%.4f/h ($%.2f/month)", describe(*c), c.PricePerHour, c.PricePerHour*hoursPerMonth)
	if r.Replicas != nil && *r.Replicas > 1 {
		fmt.Fprintf(w, "  x %d replicas = $%.4f/h", *r.Replicas, c.PricePerHour*float64(*r.Replicas))
	}
	fmt.Fprintf(w, "\n  why:       %s\n", r.Reason)
	for i, rj := range r.Rejected {
		label := ""
		if i == 0 {
			label = "rejected:"
		}
		fmt.Fprintf(w, "  %-10s %s $%.4f/h: %s\n", label, rj.InstanceType, rj.PricePerHour, strings.Join(rj.Reasons, ", "))
	}
	for i, f := range r.Fallbacks {
		label := ""
		if i == 0 {
			label = "fallbacks:"
		}
		fmt.Fprintf(w, "  %-10s %s  $%.4f/h\n", label, describe(f), f.PricePerHour)
	}
}

// describe renders "c5.large (2 vCPU, 4096 MiB, on-demand)".
func describe(o offering) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%g vCPU, %d MiB", o.InstanceType, o.VCPU, o.MemoryMiB)
	if o.GPU > 0 {
		fmt.Fprintf(&b, ", %d GPU", o.GPU)
		if o.GPUModel != "" {
			fmt.Fprintf(&b, " %s", o.GPUModel)
		}
	}
	if o.Arch != instancetype.ArchAMD64 {
		fmt.Fprintf(&b, ", %s", o.Arch)
	}
	if o.Spot {
		b.WriteString(", spot")
	} else {
		b.WriteString(", on-demand")
	}
	if o.Zone != "" {
		fmt.Fprintf(&b, ", %s", o.Zone)
	}
	if o.UnlimitedCredits {
		b.WriteString(", unlimited credits")
	}
	b.WriteString(")")
	return b.String()
}
