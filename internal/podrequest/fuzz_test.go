package podrequest

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// FuzzResolve turns any pod (as JSON) into a request, with a Secret, a ConfigMap and a
// Service in the pod's namespace to refer to. Properties: no panic and no hang; the pod is not
// modified; an error says what went wrong (a *ConfigError also gives the waiting reason); a
// request carries the same pod identity and containers, with every env var a literal value
// and no envFrom left.
func FuzzResolve(f *testing.F) {
	for _, s := range []string{
		`{"metadata":{"namespace":"ns","name":"p","uid":"u"},"spec":{"containers":[{"name":"c","image":"busybox","env":[{"name":"A","value":"$(B)-x"},{"name":"B","valueFrom":{"secretKeyRef":{"name":"s","key":"a"}}},{"name":"C","valueFrom":{"fieldRef":{"fieldPath":"metadata.name"}}},{"name":"D","valueFrom":{"resourceFieldRef":{"resource":"limits.memory","divisor":"1Mi"}}}],"envFrom":[{"configMapRef":{"name":"cm"},"prefix":"CM_"}]}]}}`,
		`{"metadata":{"namespace":"ns","name":"p"},"spec":{"containers":[{"name":"c","env":[{"name":"X","valueFrom":{"configMapKeyRef":{"name":"missing","key":"k"}}}]}]}}`,
		`{"metadata":{"namespace":"ns","name":"p"},"spec":{"containers":[{"name":"c","env":[{"name":"X","valueFrom":{"configMapKeyRef":{"name":"missing","key":"k","optional":true}}}]}]}}`,
		`{"metadata":{"namespace":"ns","name":"p","labels":{"a":"b"}},"spec":{"containers":[{"name":"c"}],"volumes":[{"name":"s","secret":{"secretName":"s","items":[{"key":"a","path":"dir/a","mode":256}]}},{"name":"cm","configMap":{"name":"cm"}},{"name":"d","downwardAPI":{"items":[{"path":"labels","fieldRef":{"fieldPath":"metadata.labels"}}]}},{"name":"t","projected":{"sources":[{"serviceAccountToken":{"path":"token","audience":"x","expirationSeconds":3600}},{"secret":{"name":"s"}}]}}]}}`,
		`{"metadata":{"namespace":"ns","name":"p"},"spec":{"imagePullSecrets":[{"name":"s"},{"name":"nope"}],"containers":[{"name":"c"}],"initContainers":[{"name":"i","env":[{"name":"1BAD","value":"x"}]}]}}`,
		`{"metadata":{"namespace":"ns","name":"p"},"spec":{"enableServiceLinks":true,"containers":[{"name":"c","env":[{"name":"E","value":"$(SVC_SERVICE_HOST):$$(NOPE)"}]}]}}`,
	} {
		f.Add([]byte(s))
	}
	objs := seedObjects()
	f.Fuzz(func(t *testing.T, raw []byte) {
		var pod corev1.Pod
		if json.Unmarshal(raw, &pod) != nil {
			return
		}
		before := pod.DeepCopy()
		env := newResolverEnv(t, objs()...)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a hang guard
		defer cancel()
		req, err := env.r.Resolve(ctx, &pod)
		env.drain()
		if ctx.Err() != nil {
			t.Fatalf("Resolve did not return within its hang guard: %v", err)
		}
		if !reflect.DeepEqual(before, &pod) {
			t.Fatal("Resolve modified the pod")
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			var ce *ConfigError
			if errors.As(err, &ce) && ce.Reason == "" {
				t.Fatalf("config error %q gives no waiting reason", err)
			}
			return
		}
		if req.Pod == nil || req.Pod.Name != pod.Name || req.Pod.Namespace != pod.Namespace || req.Pod.UID != pod.UID {
			t.Fatalf("the request's pod is not the pod")
		}
		if len(req.Pod.Spec.Containers) != len(pod.Spec.Containers) || len(req.Pod.Spec.InitContainers) != len(pod.Spec.InitContainers) {
			t.Fatalf("the request has %d+%d containers, the pod %d+%d", len(req.Pod.Spec.InitContainers), len(req.Pod.Spec.Containers), len(pod.Spec.InitContainers), len(pod.Spec.Containers))
		}
		for _, cs := range [][]corev1.Container{req.Pod.Spec.InitContainers, req.Pod.Spec.Containers} {
			for _, c := range cs {
				if len(c.EnvFrom) != 0 {
					t.Fatalf("container %q keeps envFrom", c.Name)
				}
				for _, e := range c.Env {
					if e.ValueFrom != nil {
						t.Fatalf("container %q: env %q is not resolved to a value", c.Name, e.Name)
					}
				}
			}
		}
	})
}

// seedObjects returns a function giving fresh copies of what the seeds refer to.
func seedObjects() func() []runtime.Object {
	return func() []runtime.Object {
		return []runtime.Object{
			&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s"}, Data: map[string][]byte{"a": []byte("secret"), ".dockerconfigjson": []byte(`{"auths":{"r:5000":{"auth":"dTpw"}}}`)}, Type: corev1.SecretTypeDockerConfigJson},
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "cm"}, Data: map[string]string{"k": "v", "bad key": "x"}},
			&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "svc"}, Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.5", Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}},
		}
	}
}
