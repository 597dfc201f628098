package upcmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/clusterdns"
	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/controlplane"
)

func TestValidateNamesTheFlag(t *testing.T) {
	cell := filepath.Join(t.TempDir(), "kip-cell")
	if err := os.WriteFile(cell, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cpBin := t.TempDir() // stand-ins: validate only checks they exist and are executable
	for _, b := range controlplane.Binaries {
		if err := os.WriteFile(filepath.Join(cpBin, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	good := func() options {
		return options{home: t.TempDir(), cpBin: cpBin, cellBin: cell, bridge: "kip0", subnet: "10.250.0.0/24",
			node: "kip", registryPort: 5000, readyTimeout: 1}
	}
	tests := []struct {
		name   string
		mutate func(*options)
		want   []string
	}{
		{"long bridge", func(o *options) { o.bridge = "a-very-long-bridge" }, []string{"--bridge"}},
		{"bad subnet", func(o *options) { o.subnet = "10.250.0.0" }, []string{"--subnet"}},
		{"tiny subnet", func(o *options) { o.subnet = "10.250.0.0/30" }, []string{"--subnet", "too small"}},
		{"ipv6 subnet", func(o *options) { o.subnet = "fd00::/64" }, []string{"--subnet"}},
		{"port", func(o *options) { o.registryPort = 70000 }, []string{"--registry-port"}},
		{"node", func(o *options) { o.node = "" }, []string{"--node-name"}},
		{"timeout", func(o *options) { o.readyTimeout = 0 }, []string{"--ready-timeout"}},
		{"several at once", func(o *options) { o.bridge = ""; o.registryPort = -1 }, []string{"--bridge", "--registry-port"}},
		{"cp binaries missing", func(o *options) { o.cpBin = t.TempDir() }, []string{"--cp-bin", "kube-apiserver"}},
		{"cell binary missing", func(o *options) { o.cellBin = filepath.Join(t.TempDir(), "nope") }, []string{"--cell-bin"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good()
			tt.mutate(&o)
			err := o.validate()
			if err == nil {
				t.Fatal("validate succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestProviderConfigIsValid checks the config kip up writes against the real config loader.
func TestProviderConfigIsValid(t *testing.T) {
	st := layout("/root/.kip", "kip0", "10.250.0.0/24", "/usr/local/bin/kip-cell")
	c, err := config.Parse([]byte(providerConfig(st, "kip", "10.250.0.1", "10.250.0.1:5000", []string{clusterdns.ServiceIP})))
	if err != nil {
		t.Fatalf("kip up's provider config does not load: %v", err)
	}
	if c.Node.InternalIP != "10.250.0.1" || c.Cloud.Local.Bridge != "kip0" || c.Cloud.Local.StateDir != "/root/.kip/cells" ||
		c.Registry.DefaultRegistry != "10.250.0.1:5000" || len(c.Registry.Insecure) != 1 ||
		len(c.Node.ClusterDNS) != 1 || c.Node.ClusterDNS[0] != "10.0.0.10" || c.Node.ClusterDomain != clusterdns.Domain {
		t.Errorf("loaded config does not match: %+v", c)
	}
}

func TestStateRoundTrip(t *testing.T) {
	home := t.TempDir()
	if s, err := readState(home); err != nil || s != nil {
		t.Fatalf("readState of an empty home = %v, %v", s, err)
	}
	st := layout(home, "kipx", "10.250.9.0/24", "/bin/kip-cell")
	if err := writeState(home, st); err != nil {
		t.Fatal(err)
	}
	got, err := readState(home)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *st {
		t.Errorf("read %+v, wrote %+v", got, st)
	}
	// Our own PID is never "another kip up still running".
	if got.alive() {
		t.Error("state written by this process reports alive")
	}
	if err := removeFiles(home, st, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(home); !os.IsNotExist(err) {
		t.Errorf("empty home not removed: %v", err)
	}
}
