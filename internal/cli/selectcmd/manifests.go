package selectcmd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// workload is one pod template found in a manifest.
type workload struct {
	Source    string // file and document number
	Kind      string
	Namespace string
	Name      string
	// Replicas is how many pods the workload asks for; nil when it depends on the cluster
	// (DaemonSet) or is not given.
	Replicas *int32
	Pod      *corev1.Pod
}

var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(corev1.AddToScheme(s))
	utilruntime.Must(appsv1.AddToScheme(s))
	utilruntime.Must(batchv1.AddToScheme(s))
	return s
}()

// strict decodes YAML or JSON into typed objects and rejects unknown or duplicate fields.
var strict = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
	json.SerializerOptions{Yaml: true, Strict: true})

// readManifests reads every document in r (multi-document YAML, or JSON) and returns the pod
// templates of the workloads in it. Documents of other kinds (Services, ConfigMaps, ...) are
// counted in skipped and otherwise ignored.
func readManifests(r io.Reader, source string) (ws []workload, skipped []string, err error) {
	reader := yaml.NewYAMLReader(bufio.NewReader(r))
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return ws, skipped, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading %s document %d: %w", source, doc, err)
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue
		}
		src := fmt.Sprintf("%s#%d", source, doc)
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(raw, &meta); err != nil {
			return nil, nil, fmt.Errorf("decoding %s: %w", src, err)
		}
		if meta.Kind == "" || meta.APIVersion == "" {
			return nil, nil, fmt.Errorf("decoding %s: apiVersion and kind must be set", src)
		}
		if !scheme.Recognizes(meta.GroupVersionKind()) {
			skipped = append(skipped, fmt.Sprintf("%s (%s %s)", src, meta.APIVersion, meta.Kind))
			continue
		}
		obj, _, err := strict.Decode(raw, nil, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("decoding %s: %w", src, err)
		}
		w, ok := podTemplate(obj)
		if !ok {
			skipped = append(skipped, fmt.Sprintf("%s (%s %s)", src, meta.APIVersion, meta.Kind))
			continue
		}
		w.Source, w.Kind = src, meta.Kind
		if w.Namespace == "" {
			w.Namespace = metav1.NamespaceDefault
		}
		if w.Pod.Namespace == "" {
			w.Pod.Namespace = w.Namespace
		}
		ws = append(ws, w)
	}
}

// podTemplate returns the pod a workload object makes, with the template's labels and
// annotations.
func podTemplate(obj runtime.Object) (workload, bool) {
	fromTemplate := func(meta metav1.ObjectMeta, replicas *int32, t corev1.PodTemplateSpec) workload {
		p := &corev1.Pod{ObjectMeta: *t.ObjectMeta.DeepCopy(), Spec: t.Spec}
		if p.Name == "" {
			p.Name = meta.Name
		}
		return workload{Namespace: meta.Namespace, Name: meta.Name, Replicas: replicas, Pod: p}
	}
	switch o := obj.(type) {
	case *corev1.Pod:
		return workload{Namespace: o.Namespace, Name: o.Name, Replicas: ptr(int32(1)), Pod: o}, true
	case *corev1.ReplicationController:
		if o.Spec.Template == nil {
			return workload{}, false
		}
		return fromTemplate(o.ObjectMeta, orOne(o.Spec.Replicas), *o.Spec.Template), true
	case *appsv1.Deployment:
		return fromTemplate(o.ObjectMeta, orOne(o.Spec.Replicas), o.Spec.Template), true
	case *appsv1.StatefulSet:
		return fromTemplate(o.ObjectMeta, orOne(o.Spec.Replicas), o.Spec.Template), true
	case *appsv1.ReplicaSet:
		return fromTemplate(o.ObjectMeta, orOne(o.Spec.Replicas), o.Spec.Template), true
	case *appsv1.DaemonSet:
		return fromTemplate(o.ObjectMeta, nil, o.Spec.Template), true
	case *batchv1.Job:
		return fromTemplate(o.ObjectMeta, orOne(o.Spec.Parallelism), o.Spec.Template), true
	case *batchv1.CronJob:
		return fromTemplate(o.ObjectMeta, orOne(o.Spec.JobTemplate.Spec.Parallelism), o.Spec.JobTemplate.Spec.Template), true
	}
	return workload{}, false
}

// orOne is the Kubernetes default of 1 for an unset replica count.
func orOne(n *int32) *int32 {
	if n == nil {
		return ptr(int32(1))
	}
	return n
}

func ptr[T any](v T) *T { return &v }

// stripComments drops YAML comment lines, so a document of only comments counts as empty.
func stripComments(raw []byte) []byte {
	var out []byte
	for _, line := range strings.Split(string(raw), "\n") {
		if t := strings.TrimSpace(line); t == "---" || strings.HasPrefix(t, "#") {
			continue
		}
		out = append(out, line...)
		out = append(out, '\n')
	}
	return out
}
