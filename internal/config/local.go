package config

import (
	"fmt"
	"strings"
)

// LocalSetup is what a kip on the local backend with a registry of its own needs in its
// config, as `kip up` and the e2e framework start it; YAML renders it.
type LocalSetup struct {
	// Bridge, Subnet, StateDir and AgentPath are cloud.local's fields.
	Bridge, Subnet, StateDir, AgentPath string
	// NodeName and NodeIP are node.name and node.internalIP.
	NodeName, NodeIP string
	// ClusterName is cells.clusterName; empty leaves the section out (the default applies).
	ClusterName string
	// Registry (host:port) is the default registry, trusted over plain HTTP.
	Registry string
	// ClusterDNS is node.clusterDNS (kube-dns's cluster IP); empty leaves it out.
	ClusterDNS []string
}

// YAML renders s as a ProviderConfig document that sets only these fields; Load fills
// the rest with defaults.
func (s LocalSetup) YAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: %s
kind: %s
cloud:
  provider: %s
  local:
    bridge: %s
    subnet: %s
    stateDir: %s
    agentPath: %s
node:
  name: %s
  internalIP: %s
`, APIVersion, Kind, ProviderLocal, s.Bridge, s.Subnet, s.StateDir, s.AgentPath, s.NodeName, s.NodeIP)
	if len(s.ClusterDNS) > 0 {
		fmt.Fprintf(&b, "  clusterDNS: [%s]\n", strings.Join(s.ClusterDNS, ", "))
	}
	if s.ClusterName != "" {
		fmt.Fprintf(&b, "cells:\n  clusterName: %s\n", s.ClusterName)
	}
	fmt.Fprintf(&b, "registry:\n  defaultRegistry: %s\n  insecure:\n  - %s\n", s.Registry, s.Registry)
	return b.String()
}
