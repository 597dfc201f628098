package cellapi_test

import (
	"context"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// ephemeralAgent is fakeAgent plus cellapi.EphemeralRunner.
type ephemeralAgent struct {
	*fakeAgent
	got *cellapi.EphemeralContainers
	err error
}

func (e *ephemeralAgent) PutEphemeralContainers(_ context.Context, in *cellapi.EphemeralContainers) (*cellapi.PodStatus, error) {
	if e.err != nil {
		return nil, e.err
	}
	e.got = in
	return &cellapi.PodStatus{UID: in.UID, EphemeralContainerStatuses: []corev1.ContainerStatus{{Name: "dbg", Image: "busybox"}}}, nil
}

func TestPutEphemeralContainersRoundTrip(t *testing.T) {
	ea := &ephemeralAgent{fakeAgent: &fakeAgent{updates: make(chan *cellapi.PodStatus)}}
	r := newRigFor(t, ea, ea.fakeAgent)
	in := &cellapi.EphemeralContainers{UID: "uid-1", Containers: []corev1.EphemeralContainer{{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "dbg", Image: "busybox", Command: []string{"sh"}, Env: []corev1.EnvVar{{Name: "A", Value: "1"}}},
		TargetContainerName:      "app",
	}}}
	st, err := r.client.PutEphemeralContainers(t.Context(), in)
	if err != nil {
		t.Fatalf("PutEphemeralContainers: %v", err)
	}
	if len(st.EphemeralContainerStatuses) != 1 || st.EphemeralContainerStatuses[0].Name != "dbg" {
		t.Errorf("status %+v, want the ephemeral status of dbg", st)
	}
	if !reflect.DeepEqual(ea.got, in) {
		t.Errorf("the agent got %+v, want %+v", ea.got, in)
	}
	ea.err = cellapi.Errorf(cellapi.KindConflict, "pod is stopping")
	if _, err := r.client.PutEphemeralContainers(t.Context(), in); cellapi.KindOf(err) != cellapi.KindConflict {
		t.Errorf("PutEphemeralContainers with the agent answering Conflict = %v, want Conflict", err)
	}
}

func TestPutEphemeralContainersNotImplemented(t *testing.T) {
	r := newRig(t) // fakeAgent does not implement EphemeralRunner
	_, err := r.client.PutEphemeralContainers(t.Context(), &cellapi.EphemeralContainers{UID: "uid-1"})
	if cellapi.KindOf(err) != cellapi.KindBadVersion {
		t.Errorf("PutEphemeralContainers to an agent without it = %v, want KindBadVersion (501)", err)
	}
}
