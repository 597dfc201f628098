package aws

import (
	"reflect"
	"sort"
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
