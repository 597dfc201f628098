package config

import (
	"sigs.k8s.io/yaml"

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
	// AllowPrivileged is node.allowPrivileged; SeccompProfileRoot is node.seccompProfileRoot
	// (empty leaves it out).
	AllowPrivileged    bool
	SeccompProfileRoot string
	// SecurityGroups and DefaultSecurityGroups are cloud.local's fields of those names.
	SecurityGroups        []LocalSecurityGroup
	DefaultSecurityGroups []string
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
`, APIVersion, Kind, ProviderLocal, s.Bridge, s.Subnet, s.StateDir, s.AgentPath)
	if len(s.SecurityGroups) > 0 || len(s.DefaultSecurityGroups) > 0 {
		groups, err := yaml.Marshal(struct {
			SecurityGroups        []LocalSecurityGroup `json:"securityGroups,omitempty"`
			DefaultSecurityGroups []string             `json:"defaultSecurityGroups,omitempty"`
		}{s.SecurityGroups, s.DefaultSecurityGroups})
		if err != nil {
			panic(fmt.Sprintf("rendering security groups: %v", err)) // plain data always marshals
		}
		for _, l := range strings.Split(strings.TrimRight(string(groups), "\n"), "\n") {
			fmt.Fprintf(&b, "    %s\n", l)
		}
	}
	fmt.Fprintf(&b, "node:\n  name: %s\n  internalIP: %s\n", s.NodeName, s.NodeIP)
	if len(s.ClusterDNS) > 0 {
		fmt.Fprintf(&b, "  clusterDNS: [%s]\n", strings.Join(s.ClusterDNS, ", "))
	}
	if s.AllowPrivileged {
		b.WriteString("  allowPrivileged: true\n")
	}
	if s.SeccompProfileRoot != "" {
		fmt.Fprintf(&b, "  seccompProfileRoot: %s\n", s.SeccompProfileRoot)
	}
	if s.ClusterName != "" {
		fmt.Fprintf(&b, "cells:\n  clusterName: %s\n", s.ClusterName)
	}
	fmt.Fprintf(&b, "registry:\n  defaultRegistry: %s\n  insecure:\n  - %s\n", s.Registry, s.Registry)
	return b.String()
}
