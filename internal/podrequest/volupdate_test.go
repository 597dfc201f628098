package podrequest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
	testclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
)

// tokenIssuer makes the fake API server issue tok-1, tok-2, ... expiring as asked on clk, and
// fail while failing is set.
type tokenIssuer struct {
	n       int
	failing bool
}

func (ti *tokenIssuer) install(e *resolverEnv, clk *testclock.FakeClock) {
	e.client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		if ti.failing {
			return true, nil, errors.New("apiserver unavailable")
		}
		ti.n++
		tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenRequest).DeepCopy()
		tr.Status = authv1.TokenRequestStatus{Token: fmt.Sprintf("tok-%d", ti.n),
			ExpirationTimestamp: metav1.NewTime(clk.Now().Add(time.Duration(*tr.Spec.ExpirationSeconds) * time.Second))}
		return true, tr, nil
	})
}

func tokenPod(exp *int64) *corev1.Pod {
	pod := basePod(corev1.Container{Name: "app"})
	pod.Spec.Volumes = []corev1.Volume{{Name: "sa", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: exp}}},
	}}}}
	return pod
}

// A projected token is served from the cache until 80% of its TTL has passed (kubelet's token
// manager), then replaced; a failed refresh keeps the old token until it expires.
func TestTokenRefreshTiming(t *testing.T) {
	cases := []struct {
		name      string
		exp       *int64
		refreshAt time.Duration
	}{
		{"default 3600s refreshes at 48m", nil, 48 * time.Minute},
		{"600s refreshes at 8m", ptr.To[int64](600), 8 * time.Minute},
		{"48h refreshes at the 24h cap", ptr.To[int64](48 * 3600), 24 * time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newResolverEnv(t)
			clk := testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			e.r.tokens = newTokenCache(clk)
			ti := &tokenIssuer{}
			ti.install(e, clk)
			pod := tokenPod(tc.exp)
			token := func() string {
				t.Helper()
				vols, err := e.r.VolumeUpdate(t.Context(), pod)
				if err != nil {
					t.Fatal(err)
				}
				return string(vols["sa"].Files["token"].Data)
			}
			if _, err := e.r.Resolve(t.Context(), pod); err != nil {
				t.Fatal(err)
			}
			clk.Step(tc.refreshAt - time.Second)
			if got := token(); got != "tok-1" {
				t.Errorf("just before the refresh point: %s, want tok-1 (the token issued at start)", got)
			}
			clk.Step(time.Second)
			if got := token(); got != "tok-2" {
				t.Errorf("at the refresh point: %s, want tok-2", got)
			}
			if got := token(); got != "tok-2" || ti.n != 2 {
				t.Errorf("again: %s after %d requests, want tok-2 after 2", got, ti.n)
			}
			// The refresh of tok-2 fails: tok-2 is served until it expires, then the volume fails.
			ti.failing = true
			clk.Step(tc.refreshAt)
			if got := token(); got != "tok-2" {
				t.Errorf("refresh failing before expiry: %s, want tok-2 kept", got)
			}
			clk.Step(time.Duration(ptr.Deref(tc.exp, 3600)) * time.Second)
			if _, err := e.r.VolumeUpdate(t.Context(), pod); err == nil {
				t.Error("refresh failing after expiry: no error, want one")
			}
		})
	}
}

// Each volume resolves on its own: a deleted mandatory ConfigMap leaves its volume out (the
// agent keeps its files, as kubelet does) with a FailedMount Event, an optional one that is
// gone empties its volume, the rest update; Secrets and ConfigMaps come from the caches only.
func TestVolumeUpdatePerVolume(t *testing.T) {
	e := newResolverEnv(t, configMap("present", map[string]string{"k": "v2"}))
	pod := basePod(corev1.Container{Name: "app"})
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "ok", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "present"}}}},
		{Name: "mandatory", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "deleted"}}}},
		{Name: "optional", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "deleted", Optional: ptr.To(true)}}},
		{Name: "labels", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
			{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}}}}}},
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	vols, err := e.r.VolumeUpdate(t.Context(), pod)
	if err == nil || !strings.Contains(err.Error(), `volume mandatory: MountVolume.SetUp failed for volume "mandatory" : configmap "deleted" not found`) {
		t.Errorf("err %v, want the mandatory volume's failure", err)
	}
	if _, ok := vols["mandatory"]; ok {
		t.Error("the failed volume has an entry; the agent would replace its files")
	}
	if got := string(vols["ok"].Files["k"].Data); got != "v2" {
		t.Errorf("ok/k = %q, want v2", got)
	}
	if f, ok := vols["optional"]; !ok || len(f.Files) != 0 {
		t.Errorf("optional = %+v (present %v), want an empty volume", f, ok)
	}
	if got := string(vols["labels"].Files["labels"].Data); got != "app=\"web\"\ntier=\"front\"" {
		t.Errorf("labels = %q", got)
	}
	if _, ok := vols["scratch"]; ok {
		t.Error("emptyDir got an entry")
	}
	if !hasReason(e.drain(), ReasonFailedMount) {
		t.Error("no FailedMount Event for the mandatory volume")
	}
	for _, a := range e.client.Actions() {
		if a.GetVerb() == "get" {
			t.Errorf("VolumeUpdate made a GET (%s %s): updates read the caches only", a.GetResource().Resource, a.GetNamespace())
		}
	}
}
