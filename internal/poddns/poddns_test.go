package poddns

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const hostConf = `# written by the host
nameserver 192.168.1.1
nameserver 192.168.1.2
search corp.example. lab.example .
options timeout:2 ndots:1
options timeout:3
`

func pod(mut func(*corev1.PodSpec)) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "shop", UID: "u1"}}
	p.Spec.DNSPolicy = corev1.DNSClusterFirst
	if mut != nil {
		mut(&p.Spec)
	}
	return p
}

func TestParseResolvConf(t *testing.T) {
	r, err := ParseResolvConf(hostConf)
	if err != nil {
		t.Fatal(err)
	}
	want := ResolvConf{
		Nameservers: []string{"192.168.1.1", "192.168.1.2"},
		Searches:    []string{"corp.example", "lab.example"},
		Options:     []string{"timeout:3", "ndots:1"},
	}
	if fmt.Sprint(r) != fmt.Sprint(want) {
		t.Errorf("got %+v, want %+v", r, want)
	}
	if _, err := ParseResolvConf("nameserver\n"); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bare nameserver: err %v, want one naming line 1", err)
	}
}

func TestResolv(t *testing.T) {
	host, _ := ParseResolvConf(hostConf)
	cluster := Cluster{DNS: []string{"10.0.0.10"}, Domain: "cluster.local"}
	str := func(s string) *string { return &s }
	tests := []struct {
		name      string
		pod       *corev1.Pod
		cluster   Cluster
		want      string
		warnings  []string // reasons
		inMessage string
	}{{
		name: "ClusterFirst",
		pod:  pod(nil),
		want: "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\nnameserver 10.0.0.10\noptions ndots:5\n",
	}, {
		name: "empty policy is ClusterFirst",
		pod:  pod(func(s *corev1.PodSpec) { s.DNSPolicy = "" }),
		want: "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\nnameserver 10.0.0.10\noptions ndots:5\n",
	}, {
		name:    "ClusterFirst with another domain",
		pod:     pod(nil),
		cluster: Cluster{DNS: []string{"10.0.0.10", "10.0.0.11"}, Domain: "k.example"},
		want:    "search shop.svc.k.example svc.k.example k.example corp.example lab.example\nnameserver 10.0.0.10\nnameserver 10.0.0.11\noptions ndots:5\n",
	}, {
		name:      "ClusterFirst without cluster DNS falls back to Default",
		pod:       pod(nil),
		cluster:   Cluster{Domain: "cluster.local"},
		want:      "search corp.example lab.example\nnameserver 192.168.1.1\nnameserver 192.168.1.2\noptions timeout:3 ndots:1\n",
		warnings:  []string{"MissingClusterDNS"},
		inMessage: `Falling back to "Default" policy`,
	}, {
		name: "ClusterFirst on hostNetwork is Default",
		pod:  pod(func(s *corev1.PodSpec) { s.HostNetwork = true }),
		want: "search corp.example lab.example\nnameserver 192.168.1.1\nnameserver 192.168.1.2\noptions timeout:3 ndots:1\n",
	}, {
		name: "ClusterFirstWithHostNet",
		pod:  pod(func(s *corev1.PodSpec) { s.HostNetwork = true; s.DNSPolicy = corev1.DNSClusterFirstWithHostNet }),
		want: "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\nnameserver 10.0.0.10\noptions ndots:5\n",
	}, {
		name: "Default",
		pod:  pod(func(s *corev1.PodSpec) { s.DNSPolicy = corev1.DNSDefault }),
		want: "search corp.example lab.example\nnameserver 192.168.1.1\nnameserver 192.168.1.2\noptions timeout:3 ndots:1\n",
	}, {
		name: "None with dnsConfig",
		pod: pod(func(s *corev1.PodSpec) {
			s.DNSPolicy = corev1.DNSNone
			s.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"1.1.1.1"}, Searches: []string{"a.example"},
				Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: str("2")}, {Name: "edns0"}}}
		}),
		want: "search a.example\nnameserver 1.1.1.1\noptions ndots:2 edns0\n",
	}, {
		name: "None without dnsConfig is empty",
		pod:  pod(func(s *corev1.PodSpec) { s.DNSPolicy = corev1.DNSNone }),
		want: "",
	}, {
		name: "ClusterFirst merges dnsConfig, dropping duplicates and overriding options",
		pod: pod(func(s *corev1.PodSpec) {
			s.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"10.0.0.10", "1.1.1.1"}, Searches: []string{"cluster.local", "x.example"},
				Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: str("2")}, {Name: "single-request-reopen"}}}
		}),
		want: "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example x.example\nnameserver 10.0.0.10\nnameserver 1.1.1.1\noptions ndots:2 single-request-reopen\n",
	}, {
		name: "too many nameservers are cut to 3",
		pod: pod(func(s *corev1.PodSpec) {
			s.DNSPolicy = corev1.DNSDefault
			s.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"1.1.1.1", "8.8.8.8"}}
		}),
		want:      "search corp.example lab.example\nnameserver 192.168.1.1\nnameserver 192.168.1.2\nnameserver 1.1.1.1\noptions timeout:3 ndots:1\n",
		warnings:  []string{"DNSConfigForming"},
		inMessage: "the applied nameserver line is: 192.168.1.1 192.168.1.2 1.1.1.1",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cluster
			if tt.cluster.Domain != "" {
				c = tt.cluster
			}
			r, warns := Resolv(tt.pod, c, host)
			if got := r.String(); got != tt.want {
				t.Errorf("resolv.conf:\n%s\nwant:\n%s", got, tt.want)
			}
			var reasons []string
			for _, w := range warns {
				reasons = append(reasons, w.Reason)
				if tt.inMessage != "" && !strings.Contains(w.Message, tt.inMessage) {
					t.Errorf("warning %q does not say %q", w.Message, tt.inMessage)
				}
			}
			if !slices.Equal(reasons, tt.warnings) {
				t.Errorf("warnings %v, want %v", warns, tt.warnings)
			}
		})
	}
}

// TestResolvSearchLimits: kubelet keeps at most 32 search paths, drops any over 253
// characters, and cuts from the end until the line fits 2048 characters.
func TestResolvSearchLimits(t *testing.T) {
	cluster := Cluster{DNS: []string{"10.0.0.10"}, Domain: "cluster.local"}
	var many []string
	for i := range 40 {
		many = append(many, fmt.Sprintf("d%d.example", i))
	}
	long := strings.Repeat("a", 254)
	label := strings.Repeat("b", 60)
	long200 := strings.Join([]string{label, label, label}, ".") // 182 characters
	var wide []string
	for i := range 15 {
		wide = append(wide, fmt.Sprintf("%s.%02d", long200, i)) // 185 characters each
	}
	tests := []struct {
		name     string
		searches []string
		check    func(t *testing.T, s []string)
	}{{
		name: "count", searches: many,
		check: func(t *testing.T, s []string) {
			if len(s) != MaxSearchPaths || s[0] != "shop.svc.cluster.local" || s[31] != "d28.example" {
				t.Errorf("got %d paths %v", len(s), s)
			}
		},
	}, {
		name: "a path over 253 characters", searches: []string{"ok.example", long, "also.example"},
		check: func(t *testing.T, s []string) {
			if slices.Contains(s, long) || !slices.Contains(s, "also.example") {
				t.Errorf("got %v", s)
			}
		},
	}, {
		name: "line length", searches: wide,
		check: func(t *testing.T, s []string) {
			line := strings.Join(s, " ")
			if len(line) > MaxSearchLineLen {
				t.Errorf("search line is %d characters", len(line))
			}
			// 3 cluster paths (56 characters with spaces) + n*186: n = 10 fits, 11 does not.
			if len(s) != 3+10 || s[len(s)-1] != wide[9] {
				t.Errorf("kept %d paths, last %q", len(s), s[len(s)-1])
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pod(func(s *corev1.PodSpec) { s.DNSConfig = &corev1.PodDNSConfig{Searches: tt.searches} })
			r, warns := Resolv(p, cluster, ResolvConf{})
			tt.check(t, r.Searches)
			if len(warns) != 1 || warns[0].Reason != "DNSConfigForming" || !strings.Contains(warns[0].Message, "Search Line limits were exceeded") {
				t.Errorf("warnings %v, want one DNSConfigForming", warns)
			}
		})
	}
	// Within the limits, no warning.
	if _, warns := Resolv(pod(nil), cluster, ResolvConf{Searches: many[:29]}); len(warns) != 0 {
		t.Errorf("32 paths: warnings %v", warns)
	}
}

// TestResolvDoesNotAliasHost: the host's slices are never modified.
func TestResolvDoesNotAliasHost(t *testing.T) {
	host := ResolvConf{Nameservers: []string{"1.1.1.1"}, Searches: []string{"a"}, Options: []string{"ndots:1"}}
	p := pod(func(s *corev1.PodSpec) {
		s.DNSPolicy = corev1.DNSDefault
		s.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"2.2.2.2"}, Options: []corev1.PodDNSConfigOption{{Name: "ndots"}}}
	})
	Resolv(p, Cluster{}, host)
	if fmt.Sprint(host.Nameservers, host.Searches, host.Options) != "[1.1.1.1] [a] [ndots:1]" {
		t.Errorf("host changed: %v", host)
	}
}

func TestPodNames(t *testing.T) {
	yes := true
	str := func(s string) *string { return &s }
	long := strings.Repeat("x", 62) + "-abc"
	tests := []struct {
		name                       string
		pod                        *corev1.Pod
		domain                     string
		host, fqdn, kernel, errHas string
	}{
		{name: "pod name", pod: pod(nil), host: "web-0", fqdn: "web-0", kernel: "web-0"},
		{name: "spec.hostname", pod: pod(func(s *corev1.PodSpec) { s.Hostname = "h" }), host: "h", fqdn: "h", kernel: "h"},
		{name: "truncated to 63 without a trailing dash", pod: pod(func(s *corev1.PodSpec) { s.Hostname = long }),
			host: strings.Repeat("x", 62), fqdn: strings.Repeat("x", 62), kernel: strings.Repeat("x", 62)},
		{name: "subdomain in the default domain", pod: pod(func(s *corev1.PodSpec) { s.Subdomain = "db" }),
			host: "web-0", fqdn: "web-0.db.shop.svc.cluster.local", kernel: "web-0"},
		{name: "subdomain in the cluster domain", domain: "k.example", pod: pod(func(s *corev1.PodSpec) { s.Subdomain = "db" }),
			host: "web-0", fqdn: "web-0.db.shop.svc.k.example", kernel: "web-0"},
		{name: "setHostnameAsFQDN", pod: pod(func(s *corev1.PodSpec) { s.Subdomain = "db"; s.SetHostnameAsFQDN = &yes }),
			host: "web-0", fqdn: "web-0.db.shop.svc.cluster.local", kernel: "web-0.db.shop.svc.cluster.local"},
		{name: "setHostnameAsFQDN without subdomain", pod: pod(func(s *corev1.PodSpec) { s.SetHostnameAsFQDN = &yes }),
			host: "web-0", fqdn: "web-0", kernel: "web-0"},
		{name: "setHostnameAsFQDN over 64 characters", pod: pod(func(s *corev1.PodSpec) {
			s.Hostname = strings.Repeat("h", 39)
			s.Subdomain = "db"
			s.SetHostnameAsFQDN = &yes
		}), errHas: "setHostnameAsFQDN: FQDN " + strings.Repeat("h", 39) + ".db.shop.svc.cluster.local is too long (64 characters is the max, 65 characters requested)"},
		{name: "hostnameOverride has no domain", pod: pod(func(s *corev1.PodSpec) { s.HostnameOverride = str("custom.name"); s.Subdomain = "db" }),
			host: "custom.name", fqdn: "custom.name", kernel: "custom.name"},
	}
	// 64 is allowed: 38 + ".db.shop.svc.cluster.local" (26) = 64.
	tests = append(tests, struct {
		name                       string
		pod                        *corev1.Pod
		domain                     string
		host, fqdn, kernel, errHas string
	}{name: "setHostnameAsFQDN at 64 characters", pod: pod(func(s *corev1.PodSpec) {
		s.Hostname = strings.Repeat("h", 38)
		s.Subdomain = "db"
		s.SetHostnameAsFQDN = &yes
	}), host: strings.Repeat("h", 38), fqdn: strings.Repeat("h", 38) + ".db.shop.svc.cluster.local", kernel: strings.Repeat("h", 38) + ".db.shop.svc.cluster.local"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := PodNames(tt.pod, tt.domain)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err %v, want one containing %q", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n.Hostname != tt.host || n.FQDN() != tt.fqdn || n.Kernel != tt.kernel {
				t.Errorf("got %q %q %q, want %q %q %q", n.Hostname, n.FQDN(), n.Kernel, tt.host, tt.fqdn, tt.kernel)
			}
		})
	}
}
