package instancetype

import (
	"math"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	ok := InstanceType{Name: "a.large", Arch: ArchAMD64, VCPU: 2, MemoryMiB: 4096, Offerings: []Offering{{Price: 0.1, Available: true}}}
	with := func(f func(*InstanceType)) []InstanceType {
		it := ok
		it.Offerings = append([]Offering(nil), ok.Offerings...)
		f(&it)
		return []InstanceType{it}
	}
	tests := []struct {
		name  string
		types []InstanceType
		want  []string // substrings of the error; none means valid
	}{
		{"valid", []InstanceType{ok}, nil},
		{"empty catalog", nil, []string{"catalog is empty"}},
		{"no name", with(func(it *InstanceType) { it.Name = "" }), []string{".name: must not be empty"}},
		{"duplicate", []InstanceType{ok, ok}, []string{"types[1] (a.large).name: duplicates types[0]"}},
		{"arch", with(func(it *InstanceType) { it.Arch = "x86_64" }), []string{`.arch: "x86_64"`}},
		{"vcpu", with(func(it *InstanceType) { it.VCPU = 0 }), []string{".vcpu"}},
		{"vcpu NaN", with(func(it *InstanceType) { it.VCPU = math.NaN() }), []string{".vcpu"}},
		{"memory", with(func(it *InstanceType) { it.MemoryMiB = -1 }), []string{".memoryMiB"}},
		{"gpu", with(func(it *InstanceType) { it.GPU = -1 }), []string{".gpu"}},
		{"baseline", with(func(it *InstanceType) { it.Burstable, it.BaselineVCPU = true, 3 }), []string{".baselineVCPU"}},
		{"no offerings", with(func(it *InstanceType) { it.Offerings = nil }), []string{".offerings: must not be empty"}},
		{"price", with(func(it *InstanceType) { it.Offerings[0].Price = math.Inf(1) }), []string{".offerings[0].price"}},
		{"every problem at once", with(func(it *InstanceType) { it.Arch, it.VCPU, it.MemoryMiB = "", -1, 0 }),
			[]string{".arch", ".vcpu", ".memoryMiB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.types)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate = nil, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestOfferings(t *testing.T) {
	os := Offerings{
		{Zone: "a", Price: 0.3, Available: true},
		{Zone: "b", Price: 0.2, Available: false},
		{Zone: "", Spot: true, Price: 0.1, Available: true},
		{Zone: "a", Spot: true, Price: 0, Available: true},
	}
	tests := []struct {
		name      string
		got       Offerings
		wantN     int
		cheapest  float64
		cheapestO bool
	}{
		{"all", os, 4, 0.1, true},
		{"available", os.Available(), 3, 0.1, true},
		{"on-demand any zone", os.Compatible(false, nil), 2, 0.2, true},
		{"on-demand zone a", os.Compatible(false, []string{"a"}), 1, 0.3, true},
		{"spot zone b (region-wide offering serves it)", os.Compatible(true, []string{"b"}), 1, 0.1, true},
		{"on-demand zone c", os.Compatible(false, []string{"c"}), 0, 0, false},
		{"only zero price", Offerings{{Price: 0}}, 1, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.got) != tt.wantN {
				t.Errorf("len = %d, want %d", len(tt.got), tt.wantN)
			}
			c, ok := tt.got.Cheapest()
			if ok != tt.cheapestO || c.Price != tt.cheapest {
				t.Errorf("Cheapest = %v %v, want %v %v", c.Price, ok, tt.cheapest, tt.cheapestO)
			}
		})
	}
	s := append(Offerings(nil), os...)
	s.SortByPrice()
	for i := 1; i < len(s); i++ {
		if s[i-1].Price > s[i].Price {
			t.Fatalf("SortByPrice: %v", s)
		}
	}
}
