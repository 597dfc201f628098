package podenv

import "testing"

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "1", "B": "two", "E": "", "R": "$(A)"}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	for _, tc := range []struct {
		name, in, want string
	}{
		{"no dollar", "plain", "plain"},
		{"defined", "$(A)", "1"},
		{"several", "x$(A)y$(B)z", "x1ytwoz"},
		{"defined empty", "<$(E)>", "<>"},
		{"escaped reference", "$$(A)", "$(A)"},
		{"escaped dollar", "$$", "$"},
		{"double escape then reference", "$$$(A)", "$1"},
		{"undefined stays literal", "$(C)", "$(C)"},
		{"undefined beside defined", "$(C)$(A)", "$(C)1"},
		{"unterminated", "$(A", "$(A"},
		{"dollar before other byte", "cost $5", "cost $5"},
		{"trailing dollar", "end$", "end$"},
		{"nested is not a name", "$($(A))", "$($(A))"},
		{"substituted value not re-expanded", "$(R)", "$(A)"},
		{"empty name undefined", "$()", "$()"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Expand(tc.in, lookup); got != tc.want {
				t.Errorf("Expand(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
