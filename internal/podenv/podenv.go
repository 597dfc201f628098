// Package podenv expands $(VAR) references in container env values, commands and args the
// way kubelet does. The cell agent (internal/agent/runtime) and the pod resolver
// (internal/podrequest) both resolve pod environments and share this one implementation.
package podenv

import "strings"

// Expand replaces every $(NAME) in s with lookup(NAME) when lookup defines NAME, following
// kubelet's rules:
//   - $$ is an escaped $ and becomes a single $ (so $$(A) stays the literal "$(A)");
//   - a reference to a name lookup does not define is kept as written;
//   - a $ followed by anything else, a trailing $, or an unterminated "$(" are kept verbatim.
//
// Expansion is not recursive: values substituted in are not expanded again.
func Expand(s string, lookup func(name string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}
