package pod

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

func ephemeral(name, target string) corev1.EphemeralContainer {
	return corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: name, Image: "busybox"},
		TargetContainerName:      target,
	}
}

func ephemeralState(s *cellapi.PodStatus, name string) *corev1.ContainerStatus {
	for i := range s.EphemeralContainerStatuses {
		if s.EphemeralContainerStatuses[i].Name == name {
			return &s.EphemeralContainerStatuses[i]
		}
	}
	return nil
}

// TestEphemeralRunsOnceAndJoinsTarget: an ephemeral container starts once, in its target's
// PID namespace, is not restarted after it exits (though the pod's policy is Always), and a
// second put of the same list starts nothing.
func TestEphemeralRunsOnceAndJoinsTarget(t *testing.T) {
	r := start(t, testPod(corev1.RestartPolicyAlways, "app"), &fakeImages{})
	app := r.nextStart(t)
	r.until(t, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Running != nil })

	list := []corev1.EphemeralContainer{ephemeral("dbg", "app")}
	if err := r.pod.AddEphemeral(list); err != nil {
		t.Fatalf("AddEphemeral: %v", err)
	}
	dbg := r.nextStart(t)
	r.until(t, func(s *cellapi.PodStatus) bool {
		cs := ephemeralState(s, "dbg")
		return cs != nil && cs.State.Running != nil && !cs.Ready
	})
	var spec specs.Spec
	r.rt.mu.Lock()
	err := json.Unmarshal(r.rt.configs[dbg], &spec)
	r.rt.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if spec.Linux.Namespaces[0].Type != specs.PIDNamespace || spec.Linux.Namespaces[0].Path != "/proc/1/ns/pid" {
		t.Errorf("namespaces %+v, want the PID namespace of app (/proc/1/ns/pid)", spec.Linux.Namespaces)
	}

	r.rt.exit(dbg, 3)
	st := r.until(t, func(s *cellapi.PodStatus) bool {
		cs := ephemeralState(s, "dbg")
		return cs != nil && cs.State.Terminated != nil
	})
	if cs := ephemeralState(st, "dbg"); cs.State.Terminated.ExitCode != 3 || cs.RestartCount != 0 {
		t.Errorf("dbg status %+v, want terminated with exit 3 and no restart", cs)
	}
	if err := r.pod.AddEphemeral(list); err != nil {
		t.Fatalf("AddEphemeral again: %v", err)
	}
	select {
	case id := <-r.rt.started:
		if id != app {
			t.Errorf("container %s started after dbg exited; an ephemeral container runs once", id)
		}
	default:
	}
	if n := len(r.pod.Status().EphemeralContainerStatuses); n != 1 {
		t.Errorf("%d ephemeral statuses, want 1", n)
	}
}

func TestEphemeralRefusals(t *testing.T) {
	r := start(t, testPod(corev1.RestartPolicyAlways, "app"), &fakeImages{})
	r.nextStart(t)
	for _, tc := range []struct {
		name string
		list []corev1.EphemeralContainer
		want string
	}{
		{"name of a container", []corev1.EphemeralContainer{ephemeral("app", "")}, "spec.ephemeralContainers[0].name"},
		{"unknown target", []corev1.EphemeralContainer{ephemeral("ok", ""), ephemeral("dbg", "nope")}, "spec.ephemeralContainers[1].targetContainerName"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := r.pod.AddEphemeral(tc.list)
			if !cellapi.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("AddEphemeral = %v, want Invalid naming %s", err, tc.want)
			}
		})
	}
}

// TestEphemeralTargetNotRunning: the target's PID namespace cannot be joined when it is not
// running; the status says so, naming the field.
func TestEphemeralTargetNotRunning(t *testing.T) {
	r := start(t, testPod(corev1.RestartPolicyNever, "app"), &fakeImages{})
	app := r.nextStart(t)
	r.rt.exit(app, 0)
	r.until(t, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Terminated != nil })
	if err := r.pod.AddEphemeral([]corev1.EphemeralContainer{ephemeral("dbg", "app")}); err != nil {
		t.Fatalf("AddEphemeral: %v", err)
	}
	st := r.until(t, func(s *cellapi.PodStatus) bool {
		cs := ephemeralState(s, "dbg")
		return cs != nil && cs.State.Waiting != nil && cs.State.Waiting.Reason == ReasonCreateContainerConfigError
	})
	if msg := ephemeralState(st, "dbg").State.Waiting.Message; !strings.Contains(msg, "spec.ephemeralContainers[0].targetContainerName") {
		t.Errorf("message %q does not name spec.ephemeralContainers[0].targetContainerName", msg)
	}
}

// TestEphemeralRetriedUntilCreated: as kubelet, an ephemeral container that could not be
// created (its target is not running: backing off after a crash) is tried again after the
// back-off, and starts once its target runs again; it is never restarted after that.
func TestEphemeralRetriedUntilCreated(t *testing.T) {
	r := start(t, testPod(corev1.RestartPolicyAlways, "app"), &fakeImages{})
	r.rt.exit(r.nextStart(t), 1) // restarted at once
	r.rt.exit(r.nextStart(t), 1) // backing off
	r.until(t, func(s *cellapi.PodStatus) bool {
		w := s.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == ReasonCrashLoopBackOff
	})
	if err := r.pod.AddEphemeral([]corev1.EphemeralContainer{ephemeral("dbg", "app")}); err != nil {
		t.Fatalf("AddEphemeral: %v", err)
	}
	r.until(t, func(s *cellapi.PodStatus) bool {
		cs := ephemeralState(s, "dbg")
		return cs != nil && cs.State.Waiting != nil && cs.State.Waiting.Reason == ReasonCreateContainerConfigError
	})
	// Move the clock past the back-offs until dbg starts; app restarts on the way.
	var dbg string
	for i := 0; dbg == "" && i < 10; i++ {
		r.waitTimer(t)
		r.clk.Step(5 * time.Minute)
		for wait := time.After(2 * time.Second); dbg == ""; {
			select {
			case id := <-r.rt.started:
				if strings.Contains(id, "-dbg-") {
					dbg = id
				}
				continue
			case <-wait:
			}
			break
		}
	}
	if dbg == "" {
		t.Fatalf("dbg never started; status %+v", ephemeralState(r.pod.Status(), "dbg"))
	}
	r.rt.exit(dbg, 0)
	r.until(t, func(s *cellapi.PodStatus) bool {
		cs := ephemeralState(s, "dbg")
		return cs != nil && cs.State.Terminated != nil
	})
	r.clk.Step(time.Hour)
	select {
	case id := <-r.rt.started:
		if strings.Contains(id, "-dbg-") {
			t.Errorf("dbg started again (%s) after it ran", id)
		}
	case <-time.After(200 * time.Millisecond):
	}
}
