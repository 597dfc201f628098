package podstatus

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

func TestBuildStatus(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0.Add(time.Minute)
	always := corev1.ContainerRestartPolicyAlways
	withInit := func(p *corev1.Pod) {
		p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox"}}
	}
	cond := func(tp corev1.PodConditionType, st corev1.ConditionStatus, reason string) corev1.PodCondition {
		return corev1.PodCondition{Type: tp, Status: st, Reason: reason}
	}
	type want struct {
		phase      corev1.PodPhase
		reason     string
		ctrState   string // "waiting:<reason>", "running", "terminated:<reason>:<code>"
		initState  string
		init2State string
		initReady  bool                  // the first init container's ready
		conds      []corev1.PodCondition // type, status, reason checked
		podIP      string
		transition map[corev1.PodConditionType]time.Time
	}
	tests := []struct {
		name string
		pod  *corev1.Pod
		in   Input
		want want
	}{
		{
			name: "launching",
			pod:  testPod("p"),
			in:   Input{Reason: "CellLaunching", Message: "launching"},
			want: want{phase: corev1.PodPending, reason: "CellLaunching", ctrState: "waiting:" + reasonContainerCreating, conds: []corev1.PodCondition{
				cond(corev1.PodReadyToStartContainers, corev1.ConditionFalse, ""),
				cond(corev1.PodInitialized, corev1.ConditionTrue, ""),
				cond(corev1.PodReady, corev1.ConditionFalse, "ContainersNotReady"),
				cond(corev1.ContainersReady, corev1.ConditionFalse, "ContainersNotReady"),
				cond(corev1.PodScheduled, corev1.ConditionTrue, ""),
			}},
		},
		{
			name: "a reference that cannot be resolved: the container's reason, not the pod's",
			pod:  testPod("p"),
			in:   Input{ContainerReason: "CreateContainerConfigError", Message: `secret "db" not found`},
			want: want{phase: corev1.PodPending, ctrState: "waiting:CreateContainerConfigError"},
		},
		{
			name: "a reference that cannot be resolved, with init containers: on the first one",
			pod:  testPod("p", withInit),
			in:   Input{ContainerReason: "CreateContainerConfigError", Message: `secret "db" not found`},
			want: want{phase: corev1.PodPending, ctrState: "waiting:PodInitializing", initState: "waiting:CreateContainerConfigError"},
		},
		{
			name: "running and ready",
			pod:  testPod("p"),
			in: Input{PodIP: "10.0.0.5", CellReady: true, Agent: &cellapi.PodStatus{Phase: corev1.PodRunning,
				ContainerStatuses: []corev1.ContainerStatus{running("main", true)}}},
			want: want{phase: corev1.PodRunning, ctrState: "running", podIP: "10.0.0.5", conds: []corev1.PodCondition{
				cond(corev1.PodReadyToStartContainers, corev1.ConditionTrue, ""),
				cond(corev1.PodInitialized, corev1.ConditionTrue, ""),
				cond(corev1.PodReady, corev1.ConditionTrue, ""),
				cond(corev1.ContainersReady, corev1.ConditionTrue, ""),
			}},
		},
		{
			name: "running, cell unreachable: kept running but not ready",
			pod:  testPod("p"),
			in: Input{PodIP: "10.0.0.5", CellReady: true, Unreachable: "cell c-1 agent silent", Agent: &cellapi.PodStatus{Phase: corev1.PodRunning,
				ContainerStatuses: []corev1.ContainerStatus{running("main", true)}}},
			want: want{phase: corev1.PodRunning, ctrState: "running", podIP: "10.0.0.5", conds: []corev1.PodCondition{
				cond(corev1.PodReadyToStartContainers, corev1.ConditionFalse, ""),
				cond(corev1.PodInitialized, corev1.ConditionTrue, ""),
				cond(corev1.PodReady, corev1.ConditionFalse, ReasonCellUnreachable),
				cond(corev1.ContainersReady, corev1.ConditionFalse, ReasonCellUnreachable),
			}},
		},
		{
			name: "init container running",
			pod:  testPod("p", withInit),
			in: Input{CellReady: true, Agent: &cellapi.PodStatus{Phase: corev1.PodPending,
				InitContainerStatuses: []corev1.ContainerStatus{running("init", false)}}},
			want: want{phase: corev1.PodPending, ctrState: "waiting:PodInitializing", initState: "running", conds: []corev1.PodCondition{
				cond(corev1.PodInitialized, corev1.ConditionFalse, "ContainersNotInitialized"),
			}},
		},
		{
			name: "launching with init containers: every container waits PodInitializing",
			pod:  testPod("p", withInit),
			in:   Input{Reason: "CellBooting", Message: "booting"},
			want: want{phase: corev1.PodPending, reason: "CellBooting", ctrState: "waiting:" + reasonPodInitializing, initState: "waiting:" + reasonPodInitializing},
		},
		{
			name: "init done, main creating",
			pod:  testPod("p", withInit),
			in: Input{CellReady: true, Agent: &cellapi.PodStatus{Phase: corev1.PodPending,
				InitContainerStatuses: []corev1.ContainerStatus{exited("init", 0)}}},
			want: want{phase: corev1.PodPending, ctrState: "waiting:PodInitializing", initState: "terminated:Completed:0", initReady: true, conds: []corev1.PodCondition{
				cond(corev1.PodInitialized, corev1.ConditionTrue, ""),
			}},
		},
		{
			name: "init failed on a RestartNever pod: the app container never ran",
			pod: testPod("p", func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox"}, {Name: "init2", Image: "busybox"}}
			}),
			in: Input{Stopped: true, Agent: &cellapi.PodStatus{Phase: corev1.PodFailed,
				InitContainerStatuses: []corev1.ContainerStatus{exited("init", 0), exited("init2", 1)}}},
			want: want{phase: corev1.PodFailed, ctrState: "waiting:PodInitializing", initState: "terminated:Completed:0", initReady: true, conds: []corev1.PodCondition{
				cond(corev1.PodInitialized, corev1.ConditionFalse, "ContainersNotInitialized"),
			}},
		},
		{
			name: "deleted while the first of two init containers runs",
			pod: testPod("p", func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox"}, {Name: "init2", Image: "busybox"}}
			}),
			in: Input{Stopped: true, Agent: &cellapi.PodStatus{Phase: corev1.PodPending,
				InitContainerStatuses: []corev1.ContainerStatus{running("init", false)}}},
			want: want{phase: corev1.PodFailed, ctrState: "waiting:PodInitializing", initState: "terminated:" + reasonStatusUnknown + ":137", init2State: "waiting:PodInitializing"},
		},
		{
			name: "deleted after init completed: the app containers are terminated",
			pod:  testPod("p", withInit),
			in: Input{Stopped: true, Agent: &cellapi.PodStatus{Phase: corev1.PodPending,
				InitContainerStatuses: []corev1.ContainerStatus{exited("init", 0)}}},
			want: want{phase: corev1.PodFailed, ctrState: "terminated:" + reasonStatusUnknown + ":128", initState: "terminated:Completed:0", initReady: true},
		},
		{
			name: "sidecar started counts as initialized",
			pod: testPod("p", func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox", RestartPolicy: &always}}
			}),
			in: Input{CellReady: true, Agent: &cellapi.PodStatus{Phase: corev1.PodRunning,
				InitContainerStatuses: []corev1.ContainerStatus{running("init", false)},
				ContainerStatuses:     []corev1.ContainerStatus{running("main", true)}}},
			want: want{phase: corev1.PodRunning, ctrState: "running", initState: "running", conds: []corev1.PodCondition{
				cond(corev1.PodInitialized, corev1.ConditionTrue, ""),
				cond(corev1.ContainersReady, corev1.ConditionFalse, "ContainersNotReady"),
			}},
		},
		{
			name: "succeeded",
			pod:  testPod("p"),
			in: Input{Stopped: true, Agent: &cellapi.PodStatus{Phase: corev1.PodSucceeded,
				ContainerStatuses: []corev1.ContainerStatus{exited("main", 0)}}},
			want: want{phase: corev1.PodSucceeded, ctrState: "terminated:Completed:0", conds: []corev1.PodCondition{
				cond(corev1.PodReadyToStartContainers, corev1.ConditionFalse, ""),
				cond(corev1.PodInitialized, corev1.ConditionTrue, "PodCompleted"),
				cond(corev1.PodReady, corev1.ConditionFalse, "PodCompleted"),
				cond(corev1.ContainersReady, corev1.ConditionFalse, "PodCompleted"),
			}},
		},
		{
			name: "failed exit 3",
			pod:  testPod("p"),
			in: Input{Stopped: true, Agent: &cellapi.PodStatus{Phase: corev1.PodFailed,
				ContainerStatuses: []corev1.ContainerStatus{exited("main", 3)}}},
			want: want{phase: corev1.PodFailed, ctrState: "terminated:Error:3"},
		},
		{
			name: "cell lost while running",
			pod:  testPod("p"),
			in: Input{Failure: &Failure{Reason: "CellLost", Message: "gone"}, Agent: &cellapi.PodStatus{Phase: corev1.PodRunning,
				ContainerStatuses: []corev1.ContainerStatus{running("main", true)}}},
			want: want{phase: corev1.PodFailed, reason: "CellLost", ctrState: "terminated:" + "CellLost" + ":137", conds: []corev1.PodCondition{
				cond(corev1.PodReady, corev1.ConditionFalse, "ContainersNotReady"),
			}},
		},
		{
			name: "never started",
			pod:  testPod("p"),
			in:   Input{Failure: &Failure{Reason: "NoInstanceType", Message: "too big"}, Reason: "CellLaunching"},
			want: want{phase: corev1.PodFailed, reason: "NoInstanceType", ctrState: "terminated:" + "NoInstanceType" + ":128"},
		},
		{
			name: "deleted while running: unknown container state",
			pod:  testPod("p", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways }),
			in: Input{Stopped: true, Agent: &cellapi.PodStatus{Phase: corev1.PodRunning,
				ContainerStatuses: []corev1.ContainerStatus{running("main", true)}}},
			want: want{phase: corev1.PodFailed, ctrState: "terminated:" + reasonStatusUnknown + ":137"},
		},
		{
			name: "deleted after a clean exit",
			pod:  testPod("p", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways }),
			in: Input{Stopped: true, Agent: &cellapi.PodStatus{Phase: corev1.PodRunning,
				ContainerStatuses: []corev1.ContainerStatus{exited("main", 0)}}},
			want: want{phase: corev1.PodSucceeded, ctrState: "terminated:Completed:0"},
		},
		{
			name: "image pull error shows on the container",
			pod:  testPod("p"),
			in: Input{CellReady: true, Agent: &cellapi.PodStatus{Phase: corev1.PodPending,
				ContainerStatuses: []corev1.ContainerStatus{{Name: "main", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: "not found"}}}}}},
			want: want{phase: corev1.PodPending, ctrState: "waiting:ErrImagePull"},
		},
		{
			name: "readiness gate unmet",
			pod: testPod("p", func(p *corev1.Pod) {
				p.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: "example.com/lb"}}
			}),
			in: Input{CellReady: true, Agent: &cellapi.PodStatus{Phase: corev1.PodRunning,
				ContainerStatuses: []corev1.ContainerStatus{running("main", true)}}},
			want: want{phase: corev1.PodRunning, ctrState: "running", conds: []corev1.PodCondition{
				cond(corev1.ContainersReady, corev1.ConditionTrue, ""),
				cond(corev1.PodReady, corev1.ConditionFalse, "ReadinessGatesNotReady"),
			}},
		},
		{
			name: "transition times kept when unchanged, foreign conditions kept",
			pod: testPod("p", func(p *corev1.Pod) {
				p.Status.Conditions = []corev1.PodCondition{
					{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(t0)},
					{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, LastTransitionTime: metav1.NewTime(t0)},
					{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(t0)},
					{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: "EvictionByEvictionAPI", LastTransitionTime: metav1.NewTime(t0)},
				}
			}),
			in: Input{CellReady: true, Agent: &cellapi.PodStatus{Phase: corev1.PodRunning,
				ContainerStatuses: []corev1.ContainerStatus{running("main", true)}}},
			want: want{phase: corev1.PodRunning, ctrState: "running", conds: []corev1.PodCondition{
				cond(corev1.DisruptionTarget, corev1.ConditionTrue, "EvictionByEvictionAPI"),
			}, transition: map[corev1.PodConditionType]time.Time{
				corev1.PodReady: t0, corev1.ContainersReady: now, corev1.PodScheduled: t0, corev1.DisruptionTarget: t0,
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			in.Pod, in.Now, in.HostIP = tt.pod, now, "10.250.0.1"
			s := Build(in)
			if s.Phase != tt.want.phase || s.Reason != tt.want.reason {
				t.Errorf("phase %q reason %q, want %q %q", s.Phase, s.Reason, tt.want.phase, tt.want.reason)
			}
			if s.HostIP != "10.250.0.1" || len(s.HostIPs) != 1 || s.PodIP != tt.want.podIP || s.StartTime == nil || s.QOSClass != corev1.PodQOSBestEffort {
				t.Errorf("hostIP %q podIP %q startTime %v qos %q", s.HostIP, s.PodIP, s.StartTime, s.QOSClass)
			}
			if len(s.ContainerStatuses) != len(tt.pod.Spec.Containers) {
				t.Fatalf("%d container statuses", len(s.ContainerStatuses))
			}
			if got := stateString(s.ContainerStatuses[0]); got != tt.want.ctrState {
				t.Errorf("container state %s, want %s", got, tt.want.ctrState)
			}
			if tt.want.initState != "" {
				if got := stateString(s.InitContainerStatuses[0]); got != tt.want.initState {
					t.Errorf("init container state %s, want %s", got, tt.want.initState)
				}
				if s.InitContainerStatuses[0].Ready != tt.want.initReady {
					t.Errorf("init container ready %v, want %v", s.InitContainerStatuses[0].Ready, tt.want.initReady)
				}
			}
			if tt.want.init2State != "" {
				if got := stateString(s.InitContainerStatuses[1]); got != tt.want.init2State {
					t.Errorf("second init container state %s, want %s", got, tt.want.init2State)
				}
			}
			for _, w := range tt.want.conds {
				c := findCondition(s.Conditions, w.Type)
				if c == nil || c.Status != w.Status || c.Reason != w.Reason {
					t.Errorf("condition %s = %+v, want %s %q", w.Type, c, w.Status, w.Reason)
				}
			}
			for tp, at := range tt.want.transition {
				if c := findCondition(s.Conditions, tp); c == nil || !c.LastTransitionTime.Time.Equal(at) {
					t.Errorf("condition %s transition %v, want %v", tp, c, at)
				}
			}
			// A terminal pod has no container running or ready, but for its completed init
			// containers; kubelet leaves waiting those that never ran.
			if isTerminal(s.Phase) {
				for i, cs := range append(s.InitContainerStatuses, s.ContainerStatuses...) {
					completedInit := i < len(s.InitContainerStatuses) && cs.State.Terminated != nil && cs.State.Terminated.ExitCode == 0
					if cs.State.Running != nil || (cs.Ready && !completedInit) {
						t.Errorf("terminal pod with container %s running or ready: %+v", cs.Name, cs)
					}
				}
			}
		})
	}
}

func stateString(cs corev1.ContainerStatus) string {
	switch {
	case cs.State.Waiting != nil:
		return "waiting:" + cs.State.Waiting.Reason
	case cs.State.Running != nil:
		return "running"
	case cs.State.Terminated != nil:
		return "terminated:" + cs.State.Terminated.Reason + ":" + itoa(int(cs.State.Terminated.ExitCode))
	}
	return "none"
}

func itoa(n int) string {
	return resource.NewQuantity(int64(n), resource.DecimalSI).String()
}

func TestQOSClass(t *testing.T) {
	rl := func(cpu, mem string) corev1.ResourceList {
		l := corev1.ResourceList{}
		if cpu != "" {
			l[corev1.ResourceCPU] = resource.MustParse(cpu)
		}
		if mem != "" {
			l[corev1.ResourceMemory] = resource.MustParse(mem)
		}
		return l
	}
	tests := []struct {
		name     string
		req, lim corev1.ResourceList
		want     corev1.PodQOSClass
	}{
		{"nothing", nil, nil, corev1.PodQOSBestEffort},
		{"requests only", rl("100m", ""), nil, corev1.PodQOSBurstable},
		{"limits equal requests", rl("1", "1Gi"), rl("1", "1Gi"), corev1.PodQOSGuaranteed},
		{"limits only", nil, rl("1", "1Gi"), corev1.PodQOSGuaranteed},
		{"cpu limit only", nil, rl("1", ""), corev1.PodQOSBurstable},
		{"requests below limits", rl("500m", "1Gi"), rl("1", "1Gi"), corev1.PodQOSBurstable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPod("q", func(p *corev1.Pod) {
				p.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: tt.req, Limits: tt.lim}
			})
			if got := qosClass(p); got != tt.want {
				t.Errorf("qosClass = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestEventsFromContainerTransitions(t *testing.T) {
	pod := testPod("e")
	var es Events
	steps := []struct {
		cs   corev1.ContainerStatus
		want []string
	}{
		{corev1.ContainerStatus{Name: "main", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}}, []string{"Pulling"}},
		{corev1.ContainerStatus{Name: "main", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: "manifest unknown"}}}, []string{"Failed"}},
		{corev1.ContainerStatus{Name: "main", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff"}}}, []string{"BackOff"}},
		{corev1.ContainerStatus{Name: "main", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff"}}}, nil},
		{running("main", true), []string{"Pulled", "Started"}},
		{running("main", true), nil},
		{corev1.ContainerStatus{Name: "main", ImageID: "sha256:abc", RestartCount: 1, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}}, []string{"BackOff"}},
	}
	for i, s := range steps {
		evs := es.Diff(pod, nil, &cellapi.PodStatus{ContainerStatuses: []corev1.ContainerStatus{s.cs}})
		var got []string
		for _, e := range evs {
			got = append(got, e.Reason)
		}
		if len(got) != len(s.want) {
			t.Errorf("step %d: events %v, want %v", i, got, s.want)
			continue
		}
		for j := range got {
			if got[j] != s.want[j] {
				t.Errorf("step %d: events %v, want %v", i, got, s.want)
			}
		}
	}
}

// TestAnyStartedOrStuck: a pod is past its first container's start once a container runs or
// ended, or waits for anything but its creation, or the pod ended; not while every container
// is still being created or initialized.
func TestAnyStartedOrStuck(t *testing.T) {
	waitingFor := func(reason string) corev1.ContainerStatus {
		return corev1.ContainerStatus{Name: "main", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}}
	}
	for _, tt := range []struct {
		name string
		st   cellapi.PodStatus
		want bool
	}{
		{"creating", cellapi.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{waitingFor(reasonContainerCreating)}}, false},
		{"initializing", cellapi.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{waitingFor(reasonPodInitializing)}}, false},
		{"no statuses yet", cellapi.PodStatus{Phase: corev1.PodPending}, false},
		{"image pull back-off", cellapi.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{waitingFor("ImagePullBackOff")}}, true},
		{"init container running", cellapi.PodStatus{Phase: corev1.PodPending, InitContainerStatuses: []corev1.ContainerStatus{
			{Name: "init", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}}, true},
		{"exited", cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{
			{Name: "main", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1}}}}}, true},
		{"pod failed", cellapi.PodStatus{Phase: corev1.PodFailed}, true},
	} {
		if got := AnyStartedOrStuck(&tt.st); got != tt.want {
			t.Errorf("%s: AnyStartedOrStuck = %v, want %v", tt.name, got, tt.want)
		}
	}
}
