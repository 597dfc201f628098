package runcmd

import (
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/kipnode"
)

func TestElection(t *testing.T) {
	for _, tc := range []struct {
		name        string
		given, flag bool
		kubeconfig  string
		want        bool
	}{
		{"in-cluster, flag unset", false, false, "", true},
		{"kubeconfig, flag unset (kip run by hand, the e2e suite)", false, false, "/admin.kubeconfig", false},
		{"kubeconfig, --leader-elect", true, true, "/admin.kubeconfig", true},
		{"in-cluster, --leader-elect=false", true, false, "", false},
	} {
		got := election(tc.given, tc.flag, tc.kubeconfig, kipnode.LeaderElection{Namespace: "ops"})
		if (got != nil) != tc.want {
			t.Errorf("%s: leader election %v, want %v", tc.name, got != nil, tc.want)
		}
		if got != nil && got.Namespace != "ops" {
			t.Errorf("%s: namespace %q, want the flag's", tc.name, got.Namespace)
		}
	}
}

func TestLeaderElectFlags(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "kip-system")
	cmd := NewCommand()
	if err := cmd.ParseFlags([]string{"--leader-elect-lease-duration=20s", "--leader-elect-retry-period=3s"}); err != nil {
		t.Fatal(err)
	}
	f := cmd.Flags()
	for flag, want := range map[string]string{
		"leader-elect":                "false",
		"leader-elect-namespace":      "kip-system",
		"leader-elect-lease-duration": "20s",
		"leader-elect-renew-deadline": (7 * time.Second).String(),
		"leader-elect-retry-period":   "3s",
		"health-addr":                 "",
	} {
		if got := f.Lookup(flag); got == nil || got.Value.String() != want {
			t.Errorf("--%s = %v, want %q", flag, got, want)
		}
	}
	if f.Changed("leader-elect") {
		t.Error("--leader-elect counted as given when it was not")
	}
}
