package main

import (
	"net/http"
	"testing"
)

func TestVerbResource(t *testing.T) {
	for _, tc := range []struct{ method, url, want string }{
		{"GET", "/api/v1/namespaces/ns/pods/p", "get pods"},
		{"GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn", "list pods"},
		{"GET", "/api/v1/pods?watch=true&resourceVersion=1", "watch pods"},
		{"PUT", "/api/v1/namespaces/ns/pods/p/status", "update pods/status"},
		{"POST", "/api/v1/namespaces/ns/events", "create events"},
		{"POST", "/api/v1/namespaces/ns/serviceaccounts/default/token", "create serviceaccounts/token"},
		{"DELETE", "/api/v1/namespaces/ns/pods/p", "delete pods"},
		{"DELETE", "/api/v1/namespaces/ns/pods", "deletecollection pods"},
		{"PATCH", "/api/v1/nodes/n/status", "patch nodes/status"},
		{"GET", "/api/v1/namespaces/ns", "get namespaces"},
		{"PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n", "update leases"},
		{"POST", "/apis/kip.dev/v1alpha1/cells", "create cells"},
		{"GET", "/apis/kip.dev/v1alpha1", "get discovery"},
		{"GET", "/version", "get nonresource"},
	} {
		req, err := http.NewRequest(tc.method, "https://api"+tc.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := verbResource(req); got != tc.want {
			t.Errorf("%s %s = %q, want %q", tc.method, tc.url, got, tc.want)
		}
	}
}
