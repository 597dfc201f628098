// Package deploytest validates Kip's install manifests (deploy/): the kustomize base and its
// overlays rendered with kustomize's Go API, the Helm chart linted and rendered with Helm's Go
// library, both compared with each other and applied to a real kube-apiserver (server-side dry
// run, then for real).
//
// It is its own module (deploy/test/go.mod) so that kustomize and Helm, and what they bring,
// stay out of Kip's own build. hack/test.sh runs it; by hand: cd deploy/test && go test ./...
package deploytest
