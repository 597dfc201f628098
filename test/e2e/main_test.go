//go:build e2e

// Package e2e holds Kip's end-to-end tests: a real control plane, kip as a subprocess with the
// local backend, real cells (network namespaces, runc) and a registry on the bridge. Run them
// as root with `make test`, or:
//
//	KIP_CP_BIN=$(hack/build-control-plane.sh | tail -1) KIP_BIN=$PWD/bin \
//	  go test -tags e2e -v ./test/e2e/...
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/testenv"
	"github.com/kip-dev/kip/test/e2e/framework"
)

var (
	env *framework.Env
	// missing says why this machine cannot run the tier (tests skip, or fail under
	// KIP_REQUIRE_NETNS=1); setupErr says why a machine that could run it failed to start it.
	missing, setupErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := run(m)
	os.Exit(code)
}

func run(m *testing.M) int {
	if missing = framework.Missing(); missing != nil {
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	started := time.Now()
	env, setupErr = framework.Setup(ctx, framework.Options{
		// The apiserver's pod proxy carries no credentials; virtual-kubelet's stats tests reach
		// these paths through it. RBAC still decides (TestVirtualKubeletSuite grants them).
		KipArgs: []string{"--anonymous-auth-paths=/stats/summary,/metrics/resource"},
		// As kip up: pods get kube-dns as their nameserver (TestClusterDNS deploys CoreDNS).
		ClusterDNS: true,
		// TestSecurityContext runs a privileged container (node.allowPrivileged; its refusal
		// without it is unit-tested in internal/admit and internal/cells).
		AllowPrivileged: true,
		// TestSecurityGroups puts cells in these; pods naming none stay open to all cells.
		SecurityGroups: []config.LocalSecurityGroup{
			{Name: "e2e-web", Ingress: []config.LocalIngressRule{{Protocol: "TCP", Ports: "8080", From: []string{"e2e-client"}}}},
			{Name: "e2e-client"},
		},
	})
	if setupErr != nil {
		fmt.Fprintf(os.Stderr, "e2e setup failed: %v\n", setupErr)
		return m.Run()
	}
	fmt.Fprintf(os.Stderr, "e2e environment ready in %v\n", time.Since(started).Round(time.Millisecond))
	code := m.Run()
	if err := env.Teardown(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "e2e teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// need skips (or fails, under KIP_REQUIRE_NETNS=1) t when the tier cannot run here, and
// fails it when setup broke.
func need(t testing.TB) *framework.Env {
	t.Helper()
	if missing != nil {
		if os.Getenv(testenv.RequireEnv) == "1" {
			t.Fatalf("%s=1 but the e2e tier cannot run: %v", testenv.RequireEnv, missing)
		}
		t.Skipf("skipping e2e: %v", missing)
	}
	if setupErr != nil {
		t.Fatalf("e2e environment did not start: %v", setupErr)
	}
	if err := env.Kip.Exited(); err != nil {
		t.Fatalf("%v; log %s:\n%s", err, env.Kip.LogPath(), env.Kip.LogTail(40))
	}
	return env
}
