package config

import (
	"strings"
	"testing"
)

func TestLocalSecurityGroups(t *testing.T) {
	base := func() *ProviderConfig {
		c := NewDefault()
		c.Cloud.Local.SecurityGroups = []LocalSecurityGroup{
			{Name: "web", Ingress: []LocalIngressRule{{Protocol: "TCP", Ports: "80", From: []string{"client"}}}},
			{Name: "client"},
		}
		c.Cloud.Local.DefaultSecurityGroups = []string{"client"}
		return c
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("valid groups: %v", err)
	}
	tests := []struct {
		name, field string
		change      func(*ProviderConfig)
	}{
		{"unknown source", "cloud.local.securityGroups[0].ingress[0].from[0]", func(c *ProviderConfig) { c.Cloud.Local.SecurityGroups[0].Ingress[0].From = []string{"nope"} }},
		{"bad ports", "cloud.local.securityGroups[0].ingress[0].ports", func(c *ProviderConfig) { c.Cloud.Local.SecurityGroups[0].Ingress[0].Ports = "90-80" }},
		{"ports on icmp", "cloud.local.securityGroups[0].ingress[0].ports", func(c *ProviderConfig) { c.Cloud.Local.SecurityGroups[0].Ingress[0].Protocol = "ICMP" }},
		{"bad protocol", "cloud.local.securityGroups[0].ingress[0].protocol", func(c *ProviderConfig) { c.Cloud.Local.SecurityGroups[0].Ingress[0].Protocol = "SCTP" }},
		{"duplicate name", "cloud.local.securityGroups[1].name", func(c *ProviderConfig) { c.Cloud.Local.SecurityGroups[1].Name = "web" }},
		{"unknown default", "cloud.local.defaultSecurityGroups[0]", func(c *ProviderConfig) { c.Cloud.Local.DefaultSecurityGroups = []string{"db"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.change(c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("Validate() = %v, want an error naming %s", err, tt.field)
			}
		})
	}
}
