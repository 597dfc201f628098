package aws

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/aws/catalogapi"
)

// ec2Actions returns the names of EC2API's methods: the EC2 actions the backend calls.
func ec2Actions() []string {
	return methods(reflect.TypeFor[EC2API]())
}

func methods(t reflect.Type) []string {
	out := make([]string, 0, t.NumMethod())
	for i := range t.NumMethod() {
		out = append(out, t.Method(i).Name)
	}
	sort.Strings(out)
	return out
}

// Policy is an IAM policy document.
type Policy struct {
	Version   string      `json:"Version"`
	Statement []Statement `json:"Statement"`
}

// Statement is one statement of a Policy.
type Statement struct {
	Sid    string   `json:"Sid"`
	Effect string   `json:"Effect"`
	Action []string `json:"Action"`
	// Resource is "*" or a list of ARNs.
	Resource  any                       `json:"Resource"`
	Condition map[string]map[string]any `json:"Condition,omitempty"`
}

// roleARNRe matches an IAM role ARN.
var roleARNRe = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+$`)

// IAMPolicy returns the least-privilege policy kip needs on AWS, generated from the calls the
// code makes: the methods of EC2API (the backend) and of catalogapi.EC2API and catalogapi.PricingAPI
// (the catalog refresh), plus what those calls imply: ec2:CreateTags limited to tagging on
// create (RunInstances and CreateSecurityGroup carry TagSpecifications) and, for the backend's
// own CreateTags (binding a standby cell to its pod), to instances that already carry the
// cluster tag, Kip's cells; and, when passRoles
// names any, iam:PassRole to EC2 for exactly those roles: the roles of cloud.aws.instanceProfile
// and of the profiles in cloud.aws.podInstanceProfiles. With none, kip may pass no role, and a
// cell can get no instance profile. It returns an error for a string that is not a role ARN.
func IAMPolicy(passRoles []string) (Policy, error) {
	var bad []string
	for _, r := range passRoles {
		if !roleARNRe.MatchString(r) {
			bad = append(bad, r)
		}
	}
	if len(bad) > 0 {
		return Policy{}, fmt.Errorf("not IAM role ARNs (arn:aws:iam::ACCOUNT:role/NAME): %s", strings.Join(bad, ", "))
	}
	prefix := func(svc string, names []string) []string {
		out := make([]string, len(names))
		for i, n := range names {
			out[i] = svc + ":" + n
		}
		return out
	}
	catalog := append(prefix("ec2", methods(reflect.TypeFor[catalogapi.EC2API]())), prefix("pricing", methods(reflect.TypeFor[catalogapi.PricingAPI]()))...)
	p := Policy{Version: "2012-10-17", Statement: []Statement{
		{Sid: "KipCells", Effect: "Allow", Action: prefix("ec2", slices.DeleteFunc(ec2Actions(), func(a string) bool { return a == "CreateTags" })), Resource: "*"},
		{Sid: "KipTagCells", Effect: "Allow", Action: []string{"ec2:CreateTags"}, Resource: "arn:aws:ec2:*:*:instance/*",
			Condition: map[string]map[string]any{"Null": {"aws:ResourceTag/" + cloud.TagCluster: "false"}}},
		{Sid: "KipTagOnCreate", Effect: "Allow", Action: []string{"ec2:CreateTags"}, Resource: "*",
			Condition: map[string]map[string]any{"StringEquals": {"ec2:CreateAction": []string{"CreateSecurityGroup", "RunInstances"}}}},
	}}
	if len(passRoles) > 0 {
		roles := slices.Sorted(slices.Values(passRoles))
		p.Statement = append(p.Statement, Statement{Sid: "KipPassCellRoles", Effect: "Allow", Action: []string{"iam:PassRole"},
			Resource:  slices.Compact(roles),
			Condition: map[string]map[string]any{"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}})
	}
	p.Statement = append(p.Statement, Statement{Sid: "KipCatalog", Effect: "Allow", Action: catalog, Resource: "*"})
	return p, nil
}

// JSON returns the policy as indented JSON.
func (p Policy) JSON() []byte {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		panic(err) // a Policy always marshals
	}
	return b
}
