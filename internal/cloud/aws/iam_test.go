package aws_test

import (
	"bytes"
	"flag"
	"os"
	"reflect"
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
	if err := b.Terminate(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	var made []string
	for a := range e.fake.CallCounts() {
		made = append(made, "ec2:"+a)
	}
	sort.Strings(made)

	policy := kipaws.IAMPolicy()
	var cells []string
	for _, s := range policy.Statement {
		if s.Sid == "KipCells" {
			cells = s.Action
		}
	}
	if !reflect.DeepEqual(made, cells) {
		t.Errorf("the backend called %v; the policy's KipCells statement (EC2API) grants %v", made, cells)
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
