package kipnode

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"
)

// TestShardedRecorder: each object's Events go through one recorder, the same for the object
// and a reference to it, and many objects spread over all of them.
func TestShardedRecorder(t *testing.T) {
	fakes := make([]*record.FakeRecorder, 4)
	s := make(shardedRecorder, len(fakes))
	for i := range fakes {
		fakes[i] = record.NewFakeRecorder(1000)
		s[i] = fakes[i]
	}
	pending := func() []int {
		n := make([]int, len(fakes))
		for i, f := range fakes {
			n[i] = len(f.Events)
		}
		return n
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"}}
	s.Event(pod, corev1.EventTypeNormal, "A", "a")
	s.Eventf(pod, corev1.EventTypeNormal, "B", "b %d", 1)
	s.AnnotatedEventf(&corev1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "web"}, nil, corev1.EventTypeNormal, "C", "c")
	got := pending()
	used := 0
	for _, n := range got {
		if n > 0 {
			used++
			if n != 3 {
				t.Errorf("one recorder got %d of the pod's 3 Events", n)
			}
		}
	}
	if used != 1 {
		t.Errorf("the pod's Events went through %d recorders (%v), want 1", used, got)
	}
	for i := range 100 {
		s.Event(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("p%d", i)}}, corev1.EventTypeNormal, "A", "a")
	}
	for i, n := range pending() {
		if n == got[i] {
			t.Errorf("recorder %d got none of 100 pods' Events", i)
		}
	}
}
