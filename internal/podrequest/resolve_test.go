package podrequest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	corev1listers "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
)

// resolverEnv is a Resolver over listers filled with objs, a fake clientset for TokenRequest
// and a recorder capturing Events.
type resolverEnv struct {
	r      *Resolver
	events *record.FakeRecorder
	client *fake.Clientset
}

func newResolverEnv(t *testing.T, objs ...runtime.Object) *resolverEnv {
	t.Helper()
	idx := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	secrets, cms, svcs := idx(), idx(), idx()
	for _, o := range objs {
		var err error
		switch o.(type) {
		case *corev1.Secret:
			err = secrets.Add(o)
		case *corev1.ConfigMap:
			err = cms.Add(o)
		case *corev1.Service:
			err = svcs.Add(o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	client := fake.NewClientset()
	client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenRequest)
		aud := strings.Join(tr.Spec.Audiences, ",")
		return true, &authv1.TokenRequest{Status: authv1.TokenRequestStatus{
			Token: "token-for-" + tr.Spec.BoundObjectRef.Name + "-aud-" + aud,
		}}, nil
	})
	events := record.NewFakeRecorder(100)
	r, err := New(Config{
		Secrets:         corev1listers.NewSecretLister(secrets),
		ConfigMaps:      corev1listers.NewConfigMapLister(cms),
		Services:        corev1listers.NewServiceLister(svcs),
		Client:          client,
		Events:          events,
		NodeAllocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("20"), corev1.ResourceMemory: resource.MustParse("100Gi")},
		ClusterDNS:      []string{"10.0.0.10"},
		ClusterDomain:   "k.example",
	})
	if err != nil {
		t.Fatal(err)
	}
	return &resolverEnv{r: r, events: events, client: client}
}

// drain returns the Events recorded so far, as "Type Reason message".
func (e *resolverEnv) drain() []string {
	var out []string
	for {
		select {
		case ev := <-e.events.Events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

func hasReason(events []string, reason string) bool {
	for _, e := range events {
		if strings.HasPrefix(e, "Warning "+reason+" ") {
			return true
		}
	}
	return false
}

func basePod(containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "uid-1",
			Labels: map[string]string{"app": "web", "tier": "front"}, Annotations: map[string]string{"note": `say "hi"`}},
		Spec: corev1.PodSpec{NodeName: "kip", ServiceAccountName: "builder", Containers: containers,
			EnableServiceLinks: ptr.To(false)},
		Status: corev1.PodStatus{PodIP: "10.250.0.7", PodIPs: []corev1.PodIP{{IP: "10.250.0.7"}}, HostIP: "10.250.0.1"},
	}
}

func envOf(t *testing.T, req *cellapi.PodRequest, container string) map[string]string {
	t.Helper()
	for _, c := range append(req.Pod.Spec.InitContainers, req.Pod.Spec.Containers...) {
		if c.Name != container {
			continue
		}
		if len(c.EnvFrom) != 0 {
			t.Errorf("container %s still has envFrom", c.Name)
		}
		out := map[string]string{}
		for _, e := range c.Env {
			if e.ValueFrom != nil {
				t.Errorf("env %s still has valueFrom", e.Name)
			}
			out[e.Name] = e.Value
		}
		return out
	}
	t.Fatalf("no container %s", container)
	return nil
}

func secret(name string, data map[string]string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Data: map[string][]byte{}}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

func configMap(name string, data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Data: data}
}

func TestResolveEnv(t *testing.T) {
	objs := []runtime.Object{
		secret("db", map[string]string{"password": "s3cret"}),
		configMap("settings", map[string]string{"MODE": "fast", "bad-key": "x", "LEVEL": "3"}),
	}
	optional := ptr.To(true)
	tests := []struct {
		name       string
		env        []corev1.EnvVar
		envFrom    []corev1.EnvFromSource
		resources  corev1.ResourceRequirements
		want       map[string]string
		wantEvents []string
	}{
		{
			name: "literal values and $(VAR) expansion",
			env: []corev1.EnvVar{
				{Name: "A", Value: "one"},
				{Name: "B", Value: "$(A)-two"},
				{Name: "C", Value: "$$(A) $(MISSING) $x"},
			},
			want: map[string]string{"A": "one", "B": "one-two", "C": "$(A) $(MISSING) $x"},
		},
		{
			name: "secret and configmap keys",
			env: []corev1.EnvVar{
				{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "db"}, Key: "password"}}},
				{Name: "MODE", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}, Key: "MODE"}}},
			},
			want: map[string]string{"PW": "s3cret", "MODE": "fast"},
		},
		{
			name:    "envFrom with prefix, env overriding it",
			envFrom: []corev1.EnvFromSource{{Prefix: "CFG_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}},
			env:     []corev1.EnvVar{{Name: "CFG_LEVEL", Value: "override"}},
			want:    map[string]string{"CFG_MODE": "fast", "CFG_LEVEL": "override", "CFG_bad-key": "x"},
		},
		{
			// Kubelet keeps every key (relaxed env var names, GA since 1.34), even one that
			// is no C identifier once prefixed.
			name:    "envFrom keys that are not identifiers are kept",
			envFrom: []corev1.EnvFromSource{{Prefix: "1-", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}},
			want:    map[string]string{"1-MODE": "fast", "1-LEVEL": "3", "1-bad-key": "x"},
		},
		{
			name: "optional missing secret and configmap are skipped with events",
			env: []corev1.EnvVar{
				{Name: "X", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k", Optional: optional}}},
				{Name: "Y", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k", Optional: optional}}},
				{Name: "Z", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "db"}, Key: "nokey", Optional: optional}}},
			},
			envFrom: []corev1.EnvFromSource{
				{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Optional: optional}},
				{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Optional: optional}},
			},
			want:       map[string]string{},
			wantEvents: []string{ReasonOptionalSecretNotFound, ReasonOptionalConfigMapNotFound, ReasonOptionalSecretKeyNotFound},
		},
		{
			name: "field references",
			env: []corev1.EnvVar{
				{Name: "NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				{Name: "NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
				{Name: "UID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}},
				{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
				{Name: "NOTE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['note']"}}},
				{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
				{Name: "SA", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
				{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
				{Name: "POD_IPS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIPs"}}},
				{Name: "HOST_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
			},
			want: map[string]string{"NAME": "web", "NS": "ns", "UID": "uid-1", "APP": "web", "NOTE": `say "hi"`, "NODE": "kip",
				"SA": "builder", "POD_IP": "10.250.0.7", "POD_IPS": "10.250.0.7", "HOST_IP": "10.250.0.1"},
		},
		{
			name: "resource field references",
			resources: corev1.ResourceRequirements{
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")},
			},
			env: []corev1.EnvVar{
				{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
				{Name: "CPU_LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
				{Name: "CPU_REQ_M", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.cpu", Divisor: resource.MustParse("1m")}}},
				{Name: "CPU_REQ", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.cpu"}}},
			},
			// No cpu limit: the node's allocatable stands in, as kubelet does; 250m rounds up to 1.
			want: map[string]string{"MEM_MI": "256", "CPU_LIMIT": "20", "CPU_REQ_M": "250", "CPU_REQ": "1"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newResolverEnv(t, objs...)
			pod := basePod(corev1.Container{Name: "app", Env: tc.env, EnvFrom: tc.envFrom, Resources: tc.resources})
			orig := pod.DeepCopy()
			req, err := e.r.Resolve(context.Background(), pod)
			if err != nil {
				t.Fatal(err)
			}
			got := envOf(t, req, "app")
			if len(got) != len(tc.want) {
				t.Errorf("env = %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
			events := e.drain()
			for _, r := range tc.wantEvents {
				if !hasReason(events, r) {
					t.Errorf("no %s event in %v", r, events)
				}
			}
			if len(tc.wantEvents) == 0 && len(events) > 0 {
				t.Errorf("unexpected events %v", events)
			}
			if pod.Spec.Containers[0].Env == nil && orig.Spec.Containers[0].Env != nil {
				t.Errorf("Resolve modified its input")
			}
		})
	}
}

func TestResolveMandatoryMissing(t *testing.T) {
	tests := []struct {
		name    string
		c       corev1.Container
		reason  string
		message string
	}{
		{"secret key ref", corev1.Container{Name: "app", Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{
			SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k"}}}}},
			ReasonMandatorySecretNotFound, `secret "nope" not found`},
		{"configmap key ref", corev1.Container{Name: "app", Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{
			ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k"}}}}},
			ReasonMandatoryConfigMapNotFound, `configmap "nope" not found`},
		{"secret envFrom", corev1.Container{Name: "app", EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}}}}},
			ReasonMandatorySecretNotFound, `secret "nope" not found`},
		{"configmap envFrom", corev1.Container{Name: "app", EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}}}}},
			ReasonMandatoryConfigMapNotFound, `configmap "nope" not found`},
		{"missing key of an existing secret", corev1.Container{Name: "app", Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{
			SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "db"}, Key: "user"}}}}},
			ReasonMandatorySecretKeyNotFound, "couldn't find key user in Secret ns/db"},
		{"init container too", corev1.Container{Name: "init", Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{
			ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k"}}}}},
			ReasonMandatoryConfigMapNotFound, `configmap "nope" not found`},
		{"unsupported field path", corev1.Container{Name: "app", Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.bogus"}}}}},
			"", `unsupported fieldRef.fieldPath "spec.bogus"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newResolverEnv(t, secret("db", map[string]string{"password": "x"}))
			pod := basePod(corev1.Container{Name: "main"})
			if tc.c.Name == "init" {
				pod.Spec.InitContainers = []corev1.Container{tc.c}
			} else {
				pod.Spec.Containers = []corev1.Container{tc.c}
			}
			req, err := e.r.Resolve(context.Background(), pod)
			if err == nil {
				t.Fatalf("resolved %+v; want an error", req)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Reason != ReasonCreateContainerConfigError {
				t.Fatalf("error %v is not a CreateContainerConfigError", err)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q does not say %q", err, tc.message)
			}
			if tc.reason != "" && !hasReason(e.drain(), tc.reason) {
				t.Errorf("no %s event", tc.reason)
			}
		})
	}
}

func TestResolveVolumes(t *testing.T) {
	e := newResolverEnv(t,
		secret("tls", map[string]string{"tls.crt": "CERT", "tls.key": "KEY"}),
		configMap("site", map[string]string{"index.html": "<h1>hi</h1>", "other": "x"}),
		configMap("kube-root-ca.crt", map[string]string{"ca.crt": "ROOTCA"}),
	)
	pod := basePod(corev1.Container{Name: "app", Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}}})
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "certs", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "tls", DefaultMode: ptr.To[int32](0o400)}}},
		{Name: "site", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "site"},
			Items:                []corev1.KeyToPath{{Key: "index.html", Path: "www/index.html", Mode: ptr.To[int32](0o600)}}}}},
		{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
			{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
			{Path: "mem", ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "app", Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}},
		}}}},
		{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To[int64](3607)}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}}},
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "vault-token", Audience: "vault"}},
		}}}},
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "maybe", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "absent", Optional: ptr.To(true)}}},
	}
	req, err := e.r.Resolve(context.Background(), pod)
	if err != nil {
		t.Fatal(err)
	}
	type file struct {
		data string
		mode int32
	}
	want := map[string]map[string]file{
		"certs": {"tls.crt": {"CERT", 0o400}, "tls.key": {"KEY", 0o400}},
		"site":  {"www/index.html": {"<h1>hi</h1>", 0o600}},
		"info":  {"labels": {"app=\"web\"\ntier=\"front\"", 0o644}, "mem": {"64", 0o644}},
		"kube-api-access": {"token": {"token-for-web-aud-", 0o644}, "ca.crt": {"ROOTCA", 0o644},
			"namespace": {"ns", 0o644}, "vault-token": {"token-for-web-aud-vault", 0o644}},
		"maybe": {},
	}
	if _, ok := req.Volumes["scratch"]; ok {
		t.Errorf("emptyDir got content")
	}
	for vol, files := range want {
		got, ok := req.Volumes[vol]
		if !ok {
			t.Errorf("volume %s missing", vol)
			continue
		}
		if len(got.Files) != len(files) {
			t.Errorf("volume %s has files %v, want %v", vol, keys(got.Files), files)
		}
		for path, f := range files {
			g := got.Files[path]
			if string(g.Data) != f.data || g.Mode != f.mode {
				t.Errorf("%s/%s = %q mode %o, want %q mode %o", vol, path, g.Data, g.Mode, f.data, f.mode)
			}
		}
	}
	// The token was bound to the pod, with the requested expiry.
	var sawBound bool
	for _, a := range e.client.Actions() {
		if ca, ok := a.(k8stesting.CreateAction); ok && a.GetSubresource() == "token" {
			tr := ca.GetObject().(*authv1.TokenRequest)
			if a.GetNamespace() == "ns" && tr.Spec.BoundObjectRef != nil && tr.Spec.BoundObjectRef.UID == "uid-1" && tr.Spec.BoundObjectRef.Kind == "Pod" {
				sawBound = true
			}
			if tr.Spec.ExpirationSeconds == nil {
				t.Errorf("token requested without expiry")
			}
		}
	}
	if !sawBound {
		t.Errorf("no TokenRequest bound to the pod: %v", e.client.Actions())
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestResolveVolumeErrors(t *testing.T) {
	tests := []struct {
		name string
		vol  corev1.VolumeSource
		want string
	}{
		{"missing secret", corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "nope"}}, `secret "nope" not found`},
		{"missing configmap", corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}}}, `configmap "nope" not found`},
		{"missing item key", corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "db", Items: []corev1.KeyToPath{{Key: "user", Path: "u"}}}}, `configuration key "user" not found`},
		{"path escaping the volume", corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "db", Items: []corev1.KeyToPath{{Key: "password", Path: "../etc/passwd"}}}}, `must not contain '..'`},
		{"absolute path", corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "db", Items: []corev1.KeyToPath{{Key: "password", Path: "/etc/passwd"}}}}, `must be relative`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newResolverEnv(t, secret("db", map[string]string{"password": "x"}))
			pod := basePod(corev1.Container{Name: "app"})
			pod.Spec.Volumes = []corev1.Volume{{Name: "v", VolumeSource: tc.vol}}
			_, err := e.r.Resolve(context.Background(), pod)
			if !IsConfigError(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `volume "v"`) {
				t.Fatalf("error %v; want a ConfigError naming volume v and saying %q", err, tc.want)
			}
			if !hasReason(e.drain(), ReasonFailedMount) {
				t.Errorf("no FailedMount event")
			}
		})
	}
}

func TestResolvePullSecrets(t *testing.T) {
	cfgJSON, _ := json.Marshal(map[string]any{"auths": map[string]any{
		"registry.example:5000": map[string]string{"username": "u", "password": "p"},
		"ghcr.io":               map[string]string{"auth": "dTpw"},
	}})
	legacy, _ := json.Marshal(map[string]any{"quay.io": map[string]string{"username": "q", "password": "w"}})
	e := newResolverEnv(t,
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "regcred"}, Type: corev1.SecretTypeDockerConfigJson,
			Data: map[string][]byte{corev1.DockerConfigJsonKey: cfgJSON}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "old"}, Type: corev1.SecretTypeDockercfg,
			Data: map[string][]byte{corev1.DockerConfigKey: legacy}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "garbage"}, Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte("{")}},
	)
	pod := basePod(corev1.Container{Name: "app"})
	pod.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}, {Name: "old"}, {Name: "missing"}, {Name: "garbage"}}
	req, err := e.r.Resolve(context.Background(), pod)
	if err != nil {
		t.Fatal(err)
	}
	want := []cellapi.RegistryAuth{
		{Registry: "ghcr.io", Auth: "dTpw"},
		{Registry: "registry.example:5000", Username: "u", Password: "p"},
		{Registry: "quay.io", Username: "q", Password: "w"},
	}
	if len(req.PullSecrets) != len(want) {
		t.Fatalf("pull secrets %+v, want %+v", req.PullSecrets, want)
	}
	for i := range want {
		if req.PullSecrets[i] != want[i] {
			t.Errorf("pull secret %d = %+v, want %+v", i, req.PullSecrets[i], want[i])
		}
	}
	events := e.drain()
	n := 0
	for _, ev := range events {
		if strings.HasPrefix(ev, "Warning "+ReasonFailedToRetrievePullSecret) {
			n++
		}
		if strings.Contains(ev, `"p"`) || strings.Contains(ev, "dTpw") {
			t.Errorf("an event leaks credentials: %s", ev)
		}
	}
	if n != 2 {
		t.Errorf("%d pull-secret warnings, want 2 (missing, garbage): %v", n, events)
	}
}

func TestResolveServiceLinks(t *testing.T) {
	svc := func(ns, name, ip string, ports ...corev1.ServicePort) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: ports}}
	}
	e := newResolverEnv(t,
		svc("ns", "my-db", "10.0.0.9", corev1.ServicePort{Name: "sql", Port: 5432}),
		svc("ns", "headless", corev1.ClusterIPNone, corev1.ServicePort{Port: 80}),
		svc("default", "kubernetes", "10.0.0.1", corev1.ServicePort{Name: "https", Port: 443}),
	)
	for _, tc := range []struct {
		name   string
		links  *bool
		want   map[string]string
		absent []string
	}{
		{"links enabled", nil, map[string]string{
			"MY_DB_SERVICE_HOST": "10.0.0.9", "MY_DB_SERVICE_PORT": "5432", "MY_DB_SERVICE_PORT_SQL": "5432",
			"MY_DB_PORT": "tcp://10.0.0.9:5432", "MY_DB_PORT_5432_TCP_ADDR": "10.0.0.9", "MY_DB_PORT_5432_TCP_PROTO": "tcp",
			"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443",
			"USER_SET": "$(MY_DB_SERVICE_HOST)",
		}, []string{"HEADLESS_SERVICE_HOST"}},
		{"links disabled keeps the API server's", ptr.To(false), map[string]string{"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, []string{"MY_DB_SERVICE_HOST"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := basePod(corev1.Container{Name: "app", Env: []corev1.EnvVar{{Name: "USER_SET", Value: "$$(MY_DB_SERVICE_HOST)"}, {Name: "DB", Value: "$(MY_DB_SERVICE_HOST)"}}})
			pod.Spec.EnableServiceLinks = tc.links
			req, err := e.r.Resolve(context.Background(), pod)
			if err != nil {
				t.Fatal(err)
			}
			got := envOf(t, req, "app")
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
			for _, k := range tc.absent {
				if _, ok := got[k]; ok {
					t.Errorf("%s is set", k)
				}
			}
			wantDB := "$(MY_DB_SERVICE_HOST)"
			if tc.links == nil {
				wantDB = "10.0.0.9"
			}
			if got["DB"] != wantDB {
				t.Errorf("DB = %q, want %q (service variables expand)", got["DB"], wantDB)
			}
		})
	}
}

// TestResolveConfirmsCacheMisses: a Secret or ConfigMap the informer has not seen yet (kip just
// started, or it was created together with the pod) is read from the API server, not reported
// missing.
func TestResolveConfirmsCacheMisses(t *testing.T) {
	e := newResolverEnv(t) // empty caches
	for _, o := range []runtime.Object{secret("late", map[string]string{"k": "from-api"}), configMap("late-cm", map[string]string{"k": "cm-from-api"})} {
		if err := e.client.Tracker().Add(o); err != nil {
			t.Fatal(err)
		}
	}
	optional := ptr.To(true)
	pod := basePod(corev1.Container{Name: "app", Env: []corev1.EnvVar{
		{Name: "S", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "late"}, Key: "k", Optional: optional}}},
		{Name: "C", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "late-cm"}, Key: "k"}}},
	}})
	pod.Spec.Volumes = []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "late"}}}}
	req, err := e.r.Resolve(context.Background(), pod)
	if err != nil {
		t.Fatal(err)
	}
	got := envOf(t, req, "app")
	if got["S"] != "from-api" || got["C"] != "cm-from-api" {
		t.Errorf("env %v", got)
	}
	if string(req.Volumes["v"].Files["k"].Data) != "from-api" {
		t.Errorf("volume %v", req.Volumes["v"])
	}
	if ev := e.drain(); len(ev) != 0 {
		t.Errorf("events for objects that exist: %v", ev)
	}
}

// TestResolveWaitsForSyncedCaches: Resolve reads nothing until the caches have synced, and
// gives up with its context.
func TestResolveWaitsForSyncedCaches(t *testing.T) {
	e := newResolverEnv(t, secret("db", map[string]string{"password": "s3cret"}))
	var synced atomic.Bool
	e.r.cfg.Synced = synced.Load
	pod := basePod(corev1.Container{Name: "app", Env: []corev1.EnvVar{
		{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "db"}, Key: "password"}}},
	}})

	ctx, cancel := context.WithTimeout(context.Background(), 3*syncPoll)
	defer cancel()
	if _, err := e.r.Resolve(ctx, pod); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Resolve before the caches synced: %v, want the context's deadline", err)
	}

	type result struct {
		req *cellapi.PodRequest
		err error
	}
	done := make(chan result, 1)
	go func() {
		req, err := e.r.Resolve(context.Background(), pod)
		done <- result{req, err}
	}()
	synced.Store(true)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if got := envOf(t, res.req, "app")["PW"]; got != "s3cret" {
		t.Errorf("PW=%q once synced, want the secret", got)
	}
}

// TestResolveClusterDNS: every request carries the node's clusterDNS and clusterDomain, for
// the agent's resolv.conf and /etc/hosts.
func TestResolveClusterDNS(t *testing.T) {
	e := newResolverEnv(t)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default", UID: "u1"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox"}}}}
	req, err := e.r.Resolve(context.Background(), pod)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(req.ClusterDNS) != "[10.0.0.10]" || req.ClusterDomain != "k.example" {
		t.Errorf("clusterDNS %v, clusterDomain %q; want [10.0.0.10] and k.example", req.ClusterDNS, req.ClusterDomain)
	}
}

// TestTokenModeAndOwner: a projected service account token is 0600 when the pod has an
// fsUser (every container runs as one user) or an fsGroup, and is owned by that fsUser, as
// kubelet's projected volume writes it; otherwise it has the volume's defaultMode.
func TestTokenModeAndOwner(t *testing.T) {
	tests := []struct {
		name      string
		podSC     *corev1.PodSecurityContext
		ctrUsers  []*int64 // runAsUser of each container
		mode      int32
		wantMode  int32
		wantOwner *int64
	}{
		{name: "nothing set", ctrUsers: []*int64{nil}, wantMode: 0o644},
		{name: "defaultMode kept", ctrUsers: []*int64{nil}, mode: 0o440, wantMode: 0o440},
		{name: "fsGroup", podSC: &corev1.PodSecurityContext{FSGroup: ptr.To[int64](2000)}, ctrUsers: []*int64{nil}, wantMode: 0o600},
		{name: "pod runAsUser", podSC: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000)}, ctrUsers: []*int64{nil, nil}, wantMode: 0o600, wantOwner: ptr.To[int64](1000)},
		{name: "containers agree", ctrUsers: []*int64{ptr.To[int64](1001), ptr.To[int64](1001)}, wantMode: 0o600, wantOwner: ptr.To[int64](1001)},
		{name: "container overrides pod", podSC: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000)}, ctrUsers: []*int64{ptr.To[int64](1002)}, wantMode: 0o600, wantOwner: ptr.To[int64](1002)},
		{name: "containers differ", ctrUsers: []*int64{ptr.To[int64](1001), ptr.To[int64](1002)}, wantMode: 0o644},
		{name: "one container unset", ctrUsers: []*int64{ptr.To[int64](1001), nil}, wantMode: 0o644},
		{name: "containers differ, fsGroup", podSC: &corev1.PodSecurityContext{FSGroup: ptr.To[int64](2000)}, ctrUsers: []*int64{ptr.To[int64](1001), ptr.To[int64](1002)}, wantMode: 0o600},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newResolverEnv(t)
			var ctrs []corev1.Container
			for i, u := range tc.ctrUsers {
				c := corev1.Container{Name: fmt.Sprintf("c%d", i)}
				if u != nil {
					c.SecurityContext = &corev1.SecurityContext{RunAsUser: u}
				}
				ctrs = append(ctrs, c)
			}
			pod := basePod(ctrs...)
			pod.Spec.SecurityContext = tc.podSC
			src := &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}
			if tc.mode != 0 {
				src.DefaultMode = ptr.To(tc.mode)
			}
			pod.Spec.Volumes = []corev1.Volume{{Name: "sa", VolumeSource: corev1.VolumeSource{Projected: src}}}
			req, err := e.r.Resolve(context.Background(), pod)
			if err != nil {
				t.Fatal(err)
			}
			f := req.Volumes["sa"].Files["token"]
			if f.Mode != tc.wantMode {
				t.Errorf("token mode %o, want %o", f.Mode, tc.wantMode)
			}
			if (f.Owner == nil) != (tc.wantOwner == nil) || (f.Owner != nil && *f.Owner != *tc.wantOwner) {
				t.Errorf("token owner %v, want %v", ptr.Deref(f.Owner, -1), ptr.Deref(tc.wantOwner, -1))
			}
		})
	}
}

// TestUsesAddresses: only env vars reading status.podIP(s) or status.hostIP(s), in containers
// or init containers, make a request depend on the pod's addresses.
func TestUsesAddresses(t *testing.T) {
	field := func(path string) corev1.EnvVar {
		return corev1.EnvVar{Name: "V", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	for _, tt := range []struct {
		name string
		init []corev1.EnvVar
		main []corev1.EnvVar
		want bool
	}{
		{"none", nil, []corev1.EnvVar{{Name: "A", Value: "1"}, field("metadata.name"), field("spec.nodeName")}, false},
		{"podIP", nil, []corev1.EnvVar{field("status.podIP")}, true},
		{"podIPs", nil, []corev1.EnvVar{field("status.podIPs")}, true},
		{"hostIPs in an init container", []corev1.EnvVar{field("status.hostIPs")}, nil, true},
		{"hostIP", nil, []corev1.EnvVar{field("status.hostIP")}, true},
	} {
		pod := &corev1.Pod{Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "init", Env: tt.init}},
			Containers:     []corev1.Container{{Name: "main", Env: tt.main}},
		}}
		if got := UsesAddresses(pod); got != tt.want {
			t.Errorf("%s: UsesAddresses = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestTokenCacheSweepsExpired: expired tokens are dropped once the cache reaches its sweep
// size, and the next sweep waits until it doubles.
func TestTokenCacheSweepsExpired(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Now())
	c := newTokenCache(clk)
	issue := func(key string, ttl int64) {
		exp := metav1.NewTime(clk.Now().Add(time.Duration(ttl) * time.Second))
		c.put(key, "uid-"+key, &authv1.TokenRequest{Status: authv1.TokenRequestStatus{Token: "t", ExpirationTimestamp: exp}}, ttl)
	}
	for i := range minTokenSweep {
		issue(strconv.Itoa(i), 60)
	}
	clk.Step(2 * time.Minute) // every token so far expired
	issue("fresh", 3600)
	if len(c.byKey) != 1 {
		t.Fatalf("%d tokens cached after the sweep, want only the fresh one", len(c.byKey))
	}
	if _, ok := c.get("fresh"); !ok {
		t.Error("the fresh token is not served")
	}
	if c.sweepAt != minTokenSweep {
		t.Errorf("next sweep at %d tokens, want %d", c.sweepAt, minTokenSweep)
	}
}
