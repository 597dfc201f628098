package kipnode

import (
	"hash/fnv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// eventShards is how many event broadcasters kip writes Events through. One client-go
// broadcaster writes one Event at a time, so it manages one over the API server's latency
// (about ten a second on a loaded machine) while each pod makes about seven: with thousands
// of pods its queue (1,000 Events) overflowed and Events were dropped (docs/design/scale.md).
const eventShards = 16

// eventRecorder returns a recorder that spreads Events over eventShards broadcasters, each
// writing to the API server on its own, and the func that shuts them down. An object's
// Events always go through the same broadcaster, so its correlator still aggregates and
// rate-limits them per object.
func eventRecorder(client kubernetes.Interface, node string) (record.EventRecorder, func()) {
	rec := make(shardedRecorder, eventShards)
	bs := make([]record.EventBroadcaster, eventShards)
	for i := range bs {
		bs[i] = record.NewBroadcaster()
		bs[i].StartRecordingToSink(&corev1client.EventSinkImpl{Interface: client.CoreV1().Events(corev1.NamespaceAll)})
		rec[i] = bs[i].NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kip", Host: node})
	}
	return rec, func() {
		for _, b := range bs {
			b.Shutdown()
		}
	}
}

// shardedRecorder sends each object's Events to one of its recorders, by namespace and name.
type shardedRecorder []record.EventRecorder

var _ record.EventRecorder = shardedRecorder(nil)

func (s shardedRecorder) pick(obj runtime.Object) record.EventRecorder {
	var ns, name string
	if ref, ok := obj.(*corev1.ObjectReference); ok {
		ns, name = ref.Namespace, ref.Name
	} else if m, err := meta.Accessor(obj); err == nil {
		ns, name = m.GetNamespace(), m.GetName()
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(ns + "/" + name))
	return s[h.Sum32()%uint32(len(s))]
}

// Event implements record.EventRecorder.
func (s shardedRecorder) Event(obj runtime.Object, eventtype, reason, message string) {
	s.pick(obj).Event(obj, eventtype, reason, message)
}

// Eventf implements record.EventRecorder.
func (s shardedRecorder) Eventf(obj runtime.Object, eventtype, reason, messageFmt string, args ...any) {
	s.pick(obj).Eventf(obj, eventtype, reason, messageFmt, args...)
}

// AnnotatedEventf implements record.EventRecorder.
func (s shardedRecorder) AnnotatedEventf(obj runtime.Object, annotations map[string]string, eventtype, reason, messageFmt string, args ...any) {
	s.pick(obj).AnnotatedEventf(obj, annotations, eventtype, reason, messageFmt, args...)
}
