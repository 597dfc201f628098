package cellapitest

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// TestAgentLifecycle: before PutPod there is no pod; PutPod runs every container; a watcher
// sees the delete's Succeeded status with exit code 0, in sequence; DeletePod is counted.
func TestAgentLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := &Agent{CellID: "cell-1"}
	if h, err := a.Health(ctx); err != nil || h.CellID != "cell-1" {
		t.Errorf("Health = %+v, %v; want cell-1", h, err)
	}
	if _, err := a.GetPod(ctx); !cellapi.IsNotFound(err) {
		t.Errorf("GetPod before PutPod: %v, want KindNotFound", err)
	}
	req := &cellapi.PodRequest{Pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: "u1"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a", Image: "busybox"}, {Name: "b", Image: "busybox"}}}}}
	st, err := a.PutPod(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != corev1.PodRunning || st.Seq != 1 || len(st.ContainerStatuses) != 2 || st.ContainerStatuses[1].State.Running == nil {
		t.Errorf("PutPod status = %+v, want Running, seq 1, two running containers", st)
	}
	if again, _ := a.PutPod(ctx, req); again != st {
		t.Error("putting the same pod again changed its status")
	}
	if a.Request() != req {
		t.Error("Request is not the request put")
	}
	s, err := a.Stats(ctx)
	if err != nil || len(s.Containers) != 2 {
		t.Errorf("Stats = %+v, %v; want two containers", s, err)
	}

	wctx, wcancel := context.WithCancel(ctx)
	ch, err := a.WatchPod(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if first := <-ch; first != st {
		t.Errorf("the watch did not start with the current status")
	}
	if err := a.DeletePod(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case done := <-ch:
		if done.Phase != corev1.PodSucceeded || done.Seq != 2 {
			t.Errorf("after DeletePod: phase %s seq %d, want Succeeded seq 2", done.Phase, done.Seq)
		}
		for _, cs := range done.ContainerStatuses {
			if term := cs.State.Terminated; term == nil || term.ExitCode != 0 || cs.Ready {
				t.Errorf("container %s after DeletePod: %+v, want terminated with 0, not ready", cs.Name, cs)
			}
		}
	case <-ctx.Done():
		t.Fatal("the watch saw no status after DeletePod")
	}
	if n := a.Deletes(); n != 1 {
		t.Errorf("Deletes = %d, want 1", n)
	}
	wcancel()
	for range ch { // closed once the watch's context ends
	}
}
