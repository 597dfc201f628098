// Package nodeauthtest serves what the kubelet API's authorizer asks the API server, for tests
// of code behind nodeauth.KubeletAuth.
package nodeauthtest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// SARServer is an API server that only answers SubjectAccessReviews: allowed when
// allow(user, subresource) says so for node "kip". The webhook authorizer talks REST
// directly, so a fake clientset cannot stand in. It stops with the test.
func SARServer(t testing.TB, allow func(user, subresource string) bool) kubernetes.Interface {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authorization.k8s.io/v1/subjectaccessreviews" {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		var sar authzv1.SubjectAccessReview
		if err := json.NewDecoder(r.Body).Decode(&sar); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ra := sar.Spec.ResourceAttributes
		sar.Status.Allowed = ra != nil && ra.Resource == "nodes" && ra.Name == "kip" && allow(sar.Spec.User, ra.Subresource)
		sar.APIVersion, sar.Kind = "authorization.k8s.io/v1", "SubjectAccessReview"
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(&sar)
	}))
	t.Cleanup(srv.Close)
	c, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
