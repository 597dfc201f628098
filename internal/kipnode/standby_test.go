package kipnode

import (
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/config"
)

// untaggable hides the fake's SetTags, as a backend that cannot tag live instances.
type untaggable struct{ cloud.Cloud }

func TestCheckStandby(t *testing.T) {
	f := fake.New()
	types := fake.Catalog()
	pool := func(typ string, spot bool) []config.StandbyCells {
		return []config.StandbyCells{{InstanceType: typ, Count: 1, Spot: spot}}
	}
	for _, tc := range []struct {
		name    string
		backend cloud.Cloud
		pools   []config.StandbyCells
		want    string // "" for no error
	}{
		{"none", untaggable{f}, nil, ""},
		{"on-demand", f, pool("fake.small", false), ""},
		{"spot", f, pool("fake.medium", true), ""},
		{"unknown type", f, pool("fake.huge", false), `cells.standby[0].instanceType: "fake.huge" is not in the fake backend's catalog`},
		{"backend cannot tag", untaggable{f}, pool("fake.small", false), "cells.standby: the fake backend cannot keep standby cells"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkStandby(tc.backend, tc.pools, types)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("error %v, want none", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	// A market the type does not offer.
	onlyOnDemand := fake.Catalog()[:1]
	onlyOnDemand[0].Offerings = onlyOnDemand[0].Offerings[:1]
	if err := checkStandby(f, pool("fake.small", true), onlyOnDemand); err == nil || !strings.Contains(err.Error(), "cells.standby[0].spot") {
		t.Errorf("spot pool of an on-demand-only type: %v", err)
	}
}
