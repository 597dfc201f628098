package aws

import (
	"encoding/json"
	"reflect"
	"sort"

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
	Sid       string                    `json:"Sid"`
	Effect    string                    `json:"Effect"`
	Action    []string                  `json:"Action"`
	Resource  string                    `json:"Resource"`
	Condition map[string]map[string]any `json:"Condition,omitempty"`
}

// IAMPolicy returns the least-privilege policy kip needs on AWS, generated from the calls the
// code makes: the methods of EC2API (the backend) and of catalogapi.EC2API and catalogapi.PricingAPI
// (the catalog refresh), plus what those calls imply: ec2:CreateTags limited to tagging on
// create (RunInstances and CreateSecurityGroup carry TagSpecifications) and iam:PassRole to
// EC2 for the cells' instance profile.
func IAMPolicy() Policy {
	prefix := func(svc string, names []string) []string {
		out := make([]string, len(names))
		for i, n := range names {
			out[i] = svc + ":" + n
		}
		return out
	}
	catalog := append(prefix("ec2", methods(reflect.TypeFor[catalogapi.EC2API]())), prefix("pricing", methods(reflect.TypeFor[catalogapi.PricingAPI]()))...)
	return Policy{Version: "2012-10-17", Statement: []Statement{
		{Sid: "KipCells", Effect: "Allow", Action: prefix("ec2", ec2Actions()), Resource: "*"},
		{Sid: "KipTagOnCreate", Effect: "Allow", Action: []string{"ec2:CreateTags"}, Resource: "*",
			Condition: map[string]map[string]any{"StringEquals": {"ec2:CreateAction": []string{"CreateSecurityGroup", "RunInstances"}}}},
		{Sid: "KipPassCellRole", Effect: "Allow", Action: []string{"iam:PassRole"}, Resource: "*",
			Condition: map[string]map[string]any{"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
		{Sid: "KipCatalog", Effect: "Allow", Action: catalog, Resource: "*"},
	}}
}

// JSON returns the policy as indented JSON.
func (p Policy) JSON() []byte {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		panic(err) // a Policy always marshals
	}
	return b
}
