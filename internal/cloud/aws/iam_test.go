package aws_test

import (
	"bytes"
	"flag"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	kipaws "github.com/kip-dev/kip/internal/cloud/aws"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
)

var updateIAMPolicy = flag.Bool("update-iam-policy", false, "rewrite the IAM policy block of docs/aws.md")

const (
	docPath   = "../../../docs/aws.md"
	beginMark = "<!-- iam-policy:begin -->\n```json\n"
	endMark   = "\n```\n<!-- iam-policy:end -->"
)

// TestIAMPolicy checks that the published policy is the generated one, and that the EC2API
// interface it is generated from lists exactly the calls the backend makes.
func TestIAMPolicy(t *testing.T) {
	// The calls a backend's whole life makes: start (creating its security group), launch,
	// describe, list, terminate.
	e := newEnv(t, ec2fake.Options{})
	b := e.backend(t, nil)
	ctx := ctxT(t, 10*time.Second)
	inst, err := b.Launch(ctx, spec("iam"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Describe(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.SetTags(ctx, inst.ID, map[string]string{"kip.dev/pod-uid": "u1"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Terminate(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	var made []string
	for a := range e.fake.CallCounts() {
		made = append(made, "ec2:"+a)
	}
	sort.Strings(made)

	policy, err := kipaws.IAMPolicy(nil)
	if err != nil {
		t.Fatal(err)
	}
	var cells []string
	for _, s := range policy.Statement {
		if s.Sid == "KipCells" || s.Sid == "KipTagCells" {
			cells = append(cells, s.Action...)
		}
	}
	sort.Strings(cells)
	if !reflect.DeepEqual(made, cells) {
		t.Errorf("the backend called %v; the policy's KipCells and KipTagCells statements (EC2API) grant %v", made, cells)
	}

	want := policy.JSON()
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	i, j := bytes.Index(doc, []byte(beginMark)), bytes.Index(doc, []byte(endMark))
	if i < 0 || j < i {
		t.Fatalf("%s has no IAM policy block (%q ... %q)", docPath, beginMark, endMark)
	}
	got := doc[i+len(beginMark) : j]
	if bytes.Equal(got, want) {
		return
	}
	if *updateIAMPolicy {
		out := append(append(append([]byte{}, doc[:i+len(beginMark)]...), want...), doc[j:]...)
		if err := os.WriteFile(docPath, out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("the IAM policy in %s is not the generated one; run hack/iam-policy.sh. Generated:\n%s", docPath, strings.TrimSpace(string(want)))
}

// TestIAMPolicyPassRole: iam:PassRole is granted only for the roles given (those of the
// instance profiles the config lets cells have), and only to EC2; with none, not at all.
func TestIAMPolicyPassRole(t *testing.T) {
	passRole := func(p kipaws.Policy) []kipaws.Statement {
		var out []kipaws.Statement
		for _, s := range p.Statement {
			if slices.Contains(s.Action, "iam:PassRole") || slices.Contains(s.Action, "iam:*") {
				out = append(out, s)
			}
		}
		return out
	}
	p, err := kipaws.IAMPolicy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := passRole(p); len(got) != 0 {
		t.Errorf("with no roles the policy still grants iam:PassRole: %+v", got)
	}
	roles := []string{"arn:aws:iam::123456789012:role/kip-cell-s3", "arn:aws:iam::123456789012:role/kip-cell"}
	p, err = kipaws.IAMPolicy(roles)
	if err != nil {
		t.Fatal(err)
	}
	got := passRole(p)
	if len(got) != 1 {
		t.Fatalf("PassRole statements = %+v, want one", got)
	}
	if res, _ := got[0].Resource.([]string); !reflect.DeepEqual(res, []string{roles[1], roles[0]}) {
		t.Errorf("PassRole resource = %v, want exactly %v", got[0].Resource, roles)
	}
	if svc := got[0].Condition["StringEquals"]["iam:PassedToService"]; svc != "ec2.amazonaws.com" {
		t.Errorf("PassRole condition = %v, want iam:PassedToService ec2.amazonaws.com", got[0].Condition)
	}
	if _, err := kipaws.IAMPolicy([]string{"*"}); err == nil {
		t.Error(`IAMPolicy(["*"]) succeeded; want an error: only role ARNs may be passed`)
	}
}
