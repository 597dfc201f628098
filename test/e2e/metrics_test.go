//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/metrics"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// kipMetrics reads kip's metrics at /metrics/kip through the API server's node proxy (so
// through the kubelet API's authentication and nodes/metrics authorization) and returns each
// sample by its series ("name{labels}").
func kipMetrics(ctx context.Context, e *framework.Env) (map[string]float64, error) {
	return nodeMetrics(ctx, e, metrics.Path)
}

// nodeMetrics reads the metrics the kubelet API serves at path through the node proxy.
func nodeMetrics(ctx context.Context, e *framework.Env, path string) (map[string]float64, error) {
	raw, err := e.Client.CoreV1().RESTClient().Get().
		AbsPath("/api/v1/nodes", e.NodeName, "proxy", path).DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading %s through the node proxy: %w", path, err)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("reading %s: malformed line %q", path, line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("reading %s: line %q: %w", path, line, err)
		}
		out[line[:i]] = v
	}
	return out, nil
}

// sumSeries adds the samples of every series of name whose labels contain each of labels.
func sumSeries(samples map[string]float64, name string, labels ...string) float64 {
	var sum float64
	for series, v := range samples {
		if !strings.HasPrefix(series, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(series, l)
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// startPhases are the phases a pod started on a fresh cell passes.
var startPhases = []string{metrics.PhaseSchedule, metrics.PhaseLaunch, metrics.PhaseAgentReady, metrics.PhaseImagePull, metrics.PhaseContainerStart, metrics.PhaseTotal}

// phaseCounts is the sample count of each start phase, and the successful launches.
func phaseCounts(samples map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for _, p := range startPhases {
		out[p] = samples[`kip_pod_phase_duration_seconds_count{phase="`+p+`"}`]
	}
	out["launch success"] = sumSeries(samples, "kip_cell_launches_total", `result="success"`)
	return out
}

// waitMetricsGrew waits until every phase count and the successful launches exceed those in
// before (samples read earlier), as one more pod started on a fresh cell makes them (kip reports a phase right after it
// publishes the status that shows it, so the pod may finish a moment earlier).
func waitMetricsGrew(t *testing.T, ctx context.Context, e *framework.Env, before map[string]float64) {
	t.Helper()
	wantMore := phaseCounts(before)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last map[string]float64
	var lastErr error
	for {
		samples, err := kipMetrics(ctx, e)
		if err == nil {
			last, lastErr = phaseCounts(samples), nil
			grew := true
			for k, v := range last {
				grew = grew && v > wantMore[k]
			}
			if grew {
				var took []string
				for _, p := range startPhases {
					name := `kip_pod_phase_duration_seconds_sum{phase="` + p + `"}`
					took = append(took, fmt.Sprintf("%s %.3fs", p, samples[name]-before[name]))
				}
				t.Logf("kip's metrics counted the pod; phase seconds added since: %s", strings.Join(took, ", "))
				return
			}
		} else if ctx.Err() == nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			t.Errorf("kip's metrics did not count the pod: before %v, last read %v (err %v)", wantMore, last, lastErr)
			return
		case <-tick.C:
		}
	}
}
