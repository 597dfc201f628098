//go:build tools

// Package tools pins what hack/conformance.sh builds: Kubernetes' own e2e suite (e2e.test), the
// agnhost and nonewprivs test images' binaries, and the ginkgo CLI at the version the suite
// requires.
package tools

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
	_ "k8s.io/kubernetes/test/images/nonewprivs"
)
