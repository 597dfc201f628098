package ec2limits_test

import (
	"testing"

	"github.com/kip-dev/kip/internal/cloud/aws/ec2limits"
)

func TestRequestAndScaled(t *testing.T) {
	l := ec2limits.Published().Scaled(0.5, 10)
	tests := []struct {
		action string
		want   ec2limits.Bucket
	}{
		{"RunInstances", ec2limits.Bucket{Burst: 500, PerSecond: 20}},
		{"TerminateInstances", ec2limits.Bucket{Burst: 50, PerSecond: 200}},
		{"DescribeInstances", ec2limits.Bucket{Burst: 50, PerSecond: 200}},
		{"CreateSecurityGroup", ec2limits.Bucket{Burst: 25, PerSecond: 50}},
		{"CreateTags", ec2limits.Bucket{Burst: 50, PerSecond: 100}},
	}
	for _, tc := range tests {
		if got := l.Request(tc.action); got != tc.want {
			t.Errorf("Request(%s) = %+v, want %+v", tc.action, got, tc.want)
		}
	}
	if got := l.RunInstances; got != (ec2limits.Bucket{Burst: 500, PerSecond: 20}) {
		t.Errorf("RunInstances instances bucket = %+v", got)
	}
	if got := ec2limits.Published().Scaled(0.001, 1).Mutating.Burst; got != 1 {
		t.Errorf("a scaled burst fell to %d, want at least 1", got)
	}
	if ec2limits.Published().Actions["RunInstances"] != (ec2limits.Bucket{Burst: 1000, PerSecond: 2}) {
		t.Errorf("Scaled changed the published limits it was called on")
	}
}
