package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestDocsAWSExample parses and validates the example ProviderConfig in docs/aws.md, and
// checks that the page's field table names every field of cloud.aws, so the docs cannot drift
// from the code.
func TestDocsAWSExample(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "aws.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	const begin, end = "<!-- provider-config:begin -->", "<!-- provider-config:end -->"
	i, j := strings.Index(text, begin), strings.Index(text, end)
	if i < 0 || j < i {
		t.Fatalf("docs/aws.md has no %s … %s block", begin, end)
	}
	block := strings.TrimSpace(text[i+len(begin) : j])
	if !strings.HasPrefix(block, "```yaml\n") || !strings.HasSuffix(block, "\n```") {
		t.Fatalf("the example block is not one ```yaml fence:\n%s", block)
	}
	example := strings.TrimSuffix(strings.TrimPrefix(block, "```yaml\n"), "```")
	c, err := Parse([]byte(example))
	if err != nil {
		t.Fatalf("the example in docs/aws.md does not parse and validate: %v", err)
	}
	a := c.Cloud.AWS
	eq(t, "cloud.provider", c.Cloud.Provider, ProviderAWS)
	eq(t, "cloud.aws.subnetID", a.SubnetID != "", true)
	eq(t, "cloud.aws.imageFilters", len(a.ImageFilters) > 0, true)
	eq(t, "cloud.aws.catalog.cacheFile", a.Catalog.CacheFile != "", true)

	// Every field of cloud.aws (and its catalog) has a row in the table.
	var fields []string
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[Duration]() {
				walk(prefix+name+".", f.Type)
				continue
			}
			fields = append(fields, prefix+name)
		}
	}
	walk("cloud.aws.", reflect.TypeFor[AWSCloud]())
	for _, f := range fields {
		if !strings.Contains(text, "| `"+f+"` |") {
			t.Errorf("docs/aws.md has no table row for `%s`", f)
		}
	}
	if len(fields) < 13 {
		t.Errorf("found only %d fields of AWSCloud: %v", len(fields), fields)
	}
}

// TestDocsAWSWalkthrough: the walkthrough's kip.yaml in docs/aws.md parses and validates, and
// is what the walkthrough says: several subnets, a stock image by owner and name, the
// artifacts named for an in-cluster kip.
func TestDocsAWSWalkthrough(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "aws.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	const begin, end = "<!-- walkthrough-config:begin -->", "<!-- walkthrough-config:end -->"
	i, j := strings.Index(text, begin), strings.Index(text, end)
	if i < 0 || j < i {
		t.Fatalf("docs/aws.md has no %s … %s block", begin, end)
	}
	block := strings.TrimSpace(text[i+len(begin) : j])
	example := strings.TrimSuffix(strings.TrimPrefix(block, "```yaml\n"), "```")
	c, err := Parse([]byte(example))
	if err != nil {
		t.Fatalf("the walkthrough's config in docs/aws.md does not parse and validate: %v", err)
	}
	a := c.Cloud.AWS
	eq(t, "cloud.aws.region", a.Region, "us-east-1")
	eq(t, "len(cloud.aws.subnetIDs)", len(a.SubnetIDs), 2)
	eq(t, "cloud.aws.imageOwners", strings.Join(a.ImageOwners, ","), "amazon")
	eq(t, "cloud.aws.bootstrap.agentPaths[amd64]", a.Bootstrap.AgentPaths["amd64"] != "", true)
	eq(t, "cloud.aws.bootstrap.runcPaths[amd64]", a.Bootstrap.RuncPaths["amd64"] != "", true)
}
