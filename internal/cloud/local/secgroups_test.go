package local

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"
)

func TestPlan(t *testing.T) {
	groups := []SecurityGroup{
		{Name: "web", Ingress: []IngressRule{{Protocol: ProtoTCP, FromPort: 80, ToPort: 80, From: []string{"client", "10.0.0.0/8"}}}},
		{Name: "client"},
		{Name: "empty-src", Ingress: []IngressRule{{Protocol: ProtoAll, From: []string{"nobody"}}}},
		{Name: "nobody"},
	}
	ip := netip.MustParseAddr
	p := plan("br0", groups, []fwCell{
		{ID: "w", Veth: "kvw", IP: ip("10.1.0.2"), Groups: []string{"web"}},
		{ID: "c", Veth: "kvc", IP: ip("10.1.0.3"), Groups: []string{"client"}},
		{ID: "o", Veth: "kvo", IP: ip("10.1.0.4")},
		{ID: "e", Veth: "kve", IP: ip("10.1.0.5"), Groups: []string{"empty-src"}},
	})
	if p.Table != "kip-sg-br0" || len(p.Cells) != 4 {
		t.Fatalf("plan %+v", p)
	}
	by := map[string]fwChain{}
	for _, c := range p.Cells {
		by[c.Name] = c
	}
	w := by["cell-w"]
	if w.Open || len(w.Allow) != 1 || !slices.Equal(w.Allow[0].SrcIPs, []netip.Addr{ip("10.1.0.3")}) ||
		!slices.Equal(w.Allow[0].SrcCIDRs, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}) || w.Allow[0].FromPort != 80 {
		t.Errorf("web chain %+v", w)
	}
	if c := by["cell-c"]; c.Open || len(c.Allow) != 0 {
		t.Errorf("client chain %+v, want closed with no allows", c)
	}
	if o := by["cell-o"]; !o.Open {
		t.Errorf("a cell in no group is not open: %+v", o)
	}
	if e := by["cell-e"]; e.Open || len(e.Allow) != 0 {
		t.Errorf("a rule whose only source group is empty allows something: %+v", e)
	}
}

func TestValidateGroups(t *testing.T) {
	ok := []SecurityGroup{{Name: "a", Ingress: []IngressRule{{Protocol: ProtoTCP, FromPort: 1, ToPort: 2, From: []string{"a"}}}}}
	if err := validateGroups(ok, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	for name, gs := range map[string][]SecurityGroup{
		"unknown source": {{Name: "a", Ingress: []IngressRule{{Protocol: ProtoAll, From: []string{"b"}}}}},
		"ports on all":   {{Name: "a", Ingress: []IngressRule{{Protocol: ProtoAll, FromPort: 1, ToPort: 1, From: []string{"a"}}}}},
		"bad protocol":   {{Name: "a", Ingress: []IngressRule{{Protocol: "sctp", From: []string{"a"}}}}},
		"duplicate":      {{Name: "a"}, {Name: "a"}},
	} {
		if err := validateGroups(gs, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := validateGroups(ok, []string{"zz"}); err == nil {
		t.Error("unknown default accepted")
	}
}

// TestApplyPlanFullHost writes the firewall of a host full of cells (maxCells, every one in
// a group whose rule names another group) in one transaction: the kernel's replies to so
// many messages outgrow a netlink socket's default receive buffer, which failed the write
// with ENOBUFS. Needs root; the table is named after a bridge that does not exist and is
// removed at the end.
func TestApplyPlanFullHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to write nftables tables")
	}
	groups := []SecurityGroup{
		{Name: "web", Ingress: []IngressRule{{Protocol: ProtoTCP, FromPort: 80, ToPort: 80, From: []string{"client"}}}},
		{Name: "client"},
	}
	var cells []fwCell
	for i := range maxCells {
		g := "web"
		if i%2 == 1 {
			g = "client"
		}
		id := fmt.Sprintf("lc-%010x", i)
		cells = append(cells, fwCell{ID: id, Veth: "kv" + id[3:], IP: netip.AddrFrom4([4]byte{10, 251, byte(i >> 8), byte(i)}), Groups: []string{g}})
	}
	bridge := fmt.Sprintf("kiptst%d", os.Getpid()%100000)
	t.Cleanup(func() {
		if err := deleteTable(tableName(bridge)); err != nil {
			t.Error(err)
		}
	})
	if err := applyPlan(bridge, plan(bridge, groups, cells)); err != nil {
		t.Fatalf("writing the firewall of %d cells: %v", len(cells), err)
	}
}
