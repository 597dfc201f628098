package ec2fake

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// query reads EC2 query-protocol parameters: scalars ("ImageId"), lists ("InstanceId.1",
// "InstanceId.2", ...) and lists of structures ("Filter.1.Name", "Filter.1.Value.1").
type query url.Values

func (q query) str(key string) string { return url.Values(q).Get(key) }

func (q query) has(key string) bool {
	_, ok := q[key]
	return ok
}

// list returns the values of prefix.1, prefix.2, ... up to the first gap.
func (q query) list(prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := q[fmt.Sprintf("%s.%d", prefix, i)]
		if !ok || len(v) == 0 {
			return out
		}
		out = append(out, v[0])
	}
}

// members returns the sub-queries of a list of structures: for "Filter" the keys under
// "Filter.1.", "Filter.2.", ... with that prefix removed, up to the first gap.
func (q query) members(prefix string) []query {
	var out []query
	for i := 1; ; i++ {
		p := fmt.Sprintf("%s.%d.", prefix, i)
		sub := query{}
		for k, v := range q {
			if rest, ok := strings.CutPrefix(k, p); ok {
				sub[rest] = v
			}
		}
		if len(sub) == 0 {
			return out
		}
		out = append(out, sub)
	}
}

// sub returns the keys under prefix+"." with the prefix removed (a nested structure).
func (q query) sub(prefix string) query {
	out := query{}
	for k, v := range q {
		if rest, ok := strings.CutPrefix(k, prefix+"."); ok {
			out[rest] = v
		}
	}
	return out
}

// int returns an integer parameter, def when absent, or an InvalidParameterValue error.
func (q query) int(key string, def int) (int, *apiError) {
	if !q.has(key) {
		return def, nil
	}
	n, err := strconv.Atoi(q.str(key))
	if err != nil {
		return 0, errorf("InvalidParameterValue", "Value (%s) for parameter %s is invalid. Expected an integer.", q.str(key), key)
	}
	return n, nil
}

func (q query) bool(key string) bool { return q.str(key) == "true" }

// filter is one Filter.N of a Describe request.
type filter struct {
	name   string
	values []string
}

func (q query) filters() []filter {
	var out []filter
	for _, m := range q.members("Filter") {
		out = append(out, filter{name: m.str("Name"), values: m.list("Value")})
	}
	return out
}

// tags reads a list of Tag structures (Tag.N.Key / Tag.N.Value) under prefix.
func (q query) tags(prefix string) (map[string]string, *apiError) {
	out := map[string]string{}
	for _, m := range q.members(prefix) {
		k := m.str("Key")
		if k == "" {
			return nil, errorf("InvalidParameterValue", "Tag key must not be empty")
		}
		if strings.HasPrefix(strings.ToLower(k), "aws:") {
			return nil, errorf("InvalidParameterValue", "Tag keys starting with 'aws:' are reserved for internal use")
		}
		if len(k) > 128 || len(m.str("Value")) > 256 {
			return nil, errorf("InvalidParameterValue", "Tag key %q or its value is too long", k)
		}
		out[k] = m.str("Value")
	}
	if len(out) > 50 {
		return nil, errorf("TagLimitExceeded", "The maximum number of Tags for a resource has been reached.")
	}
	return out, nil
}

// tagSpecs reads TagSpecification.N into a map from resource type to tags.
func (q query) tagSpecs() (map[string]map[string]string, *apiError) {
	out := map[string]map[string]string{}
	for _, m := range q.members("TagSpecification") {
		tags, err := m.tags("Tag")
		if err != nil {
			return nil, err
		}
		rt := m.str("ResourceType")
		if rt == "" {
			return nil, errorf("InvalidParameterValue", "TagSpecification ResourceType must be set")
		}
		out[rt] = tags
	}
	return out, nil
}

// matchValue reports whether v matches one of patterns, which may use EC2's * and ? wildcards.
func matchValue(v string, patterns []string) bool {
	for _, p := range patterns {
		if wildcard(p, v) {
			return true
		}
	}
	return false
}

// wildcard matches s against p where * is any run and ? any one character.
func wildcard(p, s string) bool {
	for len(p) > 0 {
		switch p[0] {
		case '*':
			for i := len(s); i >= 0; i-- {
				if wildcard(p[1:], s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if len(s) == 0 {
				return false
			}
			p, s = p[1:], s[1:]
		default:
			if len(s) == 0 || s[0] != p[0] {
				return false
			}
			p, s = p[1:], s[1:]
		}
	}
	return len(s) == 0
}

// matchTags applies the tag filters every taggable resource supports: tag:K, tag-key.
// It returns handled=false for other filter names.
func matchTags(f filter, tags map[string]string) (match, handled bool) {
	if k, ok := strings.CutPrefix(f.name, "tag:"); ok {
		v, present := tags[k]
		return present && matchValue(v, f.values), true
	}
	if f.name == "tag-key" {
		for k := range tags {
			if matchValue(k, f.values) {
				return true, true
			}
		}
		return false, true
	}
	return false, false
}

// page cuts items to one page: MaxResults (bounded by min..max) and NextToken (an offset).
func page[T any](q query, items []T, min, max int) ([]T, string, *apiError) {
	start := 0
	if tok := q.str("NextToken"); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 || n > len(items) {
			return nil, "", errorf("InvalidParameterValue", "Invalid NextToken %q", tok)
		}
		start = n
	}
	if !q.has("MaxResults") {
		return items[start:], "", nil
	}
	size, err := q.int("MaxResults", 0)
	if err != nil {
		return nil, "", err
	}
	if size < min || size > max {
		return nil, "", errorf("InvalidParameterValue", "Value ( %d ) for parameter maxResults is invalid. Expecting a value between %d and %d.", size, min, max)
	}
	end := start + size
	if end >= len(items) {
		return items[start:], "", nil
	}
	return items[start:end], strconv.Itoa(end), nil
}
