// Package poddns computes a pod's DNS settings as kubelet does: the resolv.conf for its
// dnsPolicy and dnsConfig (ClusterFirst, ClusterFirstWithHostNet, Default, None), and its
// hostname, domain and FQDN for /etc/hosts and the kernel hostname (setHostnameAsFQDN).
//
// It is pure (k8s.io/api only) so both the agent, which writes the files inside a cell, and
// kip's host side can use it. What kubelet reports as Events (MissingClusterDNS,
// DNSConfigForming) is returned as Warnings for the caller to record.
package poddns

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Kubelet's limits (k8s.io/kubernetes/pkg/apis/core/validation).
const (
	MaxNameservers    = 3
	MaxSearchPaths    = 32
	MaxSearchLineLen  = 2048
	maxSearchLen      = 253 // a DNS-1123 subdomain; longer search paths abort some resolvers
	maxHostnameLen    = 63
	maxFQDNLen        = 64
	DefaultDomain     = "cluster.local"
	reasonMissingDNS  = "MissingClusterDNS"
	reasonConfigForm  = "DNSConfigForming"
	defaultNdotsValue = "ndots:5"
)

// Cluster is the node's DNS settings, kubelet's clusterDNS and clusterDomain.
type Cluster struct {
	DNS    []string
	Domain string
}

// ResolvConf is the content of a resolv.conf.
type ResolvConf struct {
	Nameservers []string
	Searches    []string
	// Options are "name" or "name:value", each name once.
	Options []string
}

// Warning is what kubelet records as a Warning event on the pod.
type Warning struct {
	Reason, Message string
}

// ParseResolvConf reads a resolv.conf as kubelet does: nameserver lines accumulate, the last
// search line wins (a trailing dot dropped, "." ignored), options accumulate with a later
// option of the same name replacing the earlier one. Comments and other lines are ignored.
func ParseResolvConf(s string) (ResolvConf, error) {
	var r ResolvConf
	for i, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) < 2 {
				return ResolvConf{}, fmt.Errorf("resolv.conf line %d: nameserver without an address", i+1)
			}
			r.Nameservers = append(r.Nameservers, f[1])
		case "search":
			r.Searches = nil
			for _, d := range f[1:] {
				if d != "." {
					r.Searches = append(r.Searches, strings.TrimSuffix(d, "."))
				}
			}
		case "options":
			r.Options = mergeOptions(r.Options, f[1:])
		}
	}
	return r, nil
}

// String renders r as the container runtime writes it for kubelet: search, nameserver and
// options lines, each only when it has entries.
func (r ResolvConf) String() string {
	var b strings.Builder
	if len(r.Searches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(r.Searches, " "))
	}
	for _, ns := range r.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if len(r.Options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(r.Options, " "))
	}
	return b.String()
}

// Resolv returns the pod's resolv.conf for its dnsPolicy and dnsConfig, given the node's
// cluster settings and the host's own resolv.conf:
//   - ClusterFirst (not hostNetwork) and ClusterFirstWithHostNet: the cluster DNS servers, the
//     search path <ns>.svc.<domain> svc.<domain> <domain> followed by the host's, ndots:5. With
//     no cluster DNS servers it falls back to Default with a MissingClusterDNS warning.
//   - Default, and ClusterFirst on hostNetwork: the host's resolv.conf.
//   - None: only what dnsConfig says.
//
// dnsConfig's nameservers and searches are then appended (duplicates dropped) and its options
// merged over the base; the result is cut to kubelet's limits (3 nameservers, 32 search paths
// of at most 253 characters, a search line of at most 2048), each cut reported as a
// DNSConfigForming warning. An unknown policy is treated as ClusterFirst, as kubelet does.
func Resolv(pod *corev1.Pod, cluster Cluster, host ResolvConf) (ResolvConf, []Warning) {
	var warns []Warning
	r := ResolvConf{
		Nameservers: slices.Clone(host.Nameservers),
		Searches:    slices.Clone(host.Searches),
		Options:     slices.Clone(host.Options),
	}
	switch policyOf(pod) {
	case corev1.DNSNone:
		r = ResolvConf{}
	case corev1.DNSClusterFirst:
		if len(cluster.DNS) > 0 {
			r.Nameservers = slices.Clone(cluster.DNS)
			r.Searches = clusterSearches(pod.Namespace, cluster.Domain, host.Searches)
			r.Options = []string{defaultNdotsValue}
			break
		}
		warns = append(warns, Warning{Reason: reasonMissingDNS, Message: fmt.Sprintf(
			"pod: %q. kip does not have ClusterDNS IP configured and cannot create Pod using %q policy. Falling back to %q policy.",
			pod.Name+"_"+pod.Namespace+"("+string(pod.UID)+")", corev1.DNSClusterFirst, corev1.DNSDefault)})
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		r.Nameservers = dedupe(append(r.Nameservers, dc.Nameservers...))
		r.Searches = dedupe(append(r.Searches, dc.Searches...))
		opts := make([]string, 0, len(dc.Options))
		for _, o := range dc.Options {
			if o.Value != nil && *o.Value != "" {
				opts = append(opts, o.Name+":"+*o.Value)
			} else {
				opts = append(opts, o.Name)
			}
		}
		r.Options = mergeOptions(r.Options, opts)
	}
	if len(r.Nameservers) > MaxNameservers {
		r.Nameservers = r.Nameservers[:MaxNameservers]
		warns = append(warns, Warning{Reason: reasonConfigForm, Message: "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: " + strings.Join(r.Nameservers, " ")})
	}
	if s, cut := fitSearches(r.Searches); cut {
		r.Searches = s
		warns = append(warns, Warning{Reason: reasonConfigForm, Message: "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: " + strings.Join(s, " ")})
	}
	return r, warns
}

// policyOf is the policy kubelet applies: ClusterFirst on hostNetwork means Default, and
// ClusterFirstWithHostNet means ClusterFirst.
func policyOf(pod *corev1.Pod) corev1.DNSPolicy {
	switch p := pod.Spec.DNSPolicy; p {
	case corev1.DNSNone, corev1.DNSDefault:
		return p
	case corev1.DNSClusterFirstWithHostNet:
		return corev1.DNSClusterFirst
	case corev1.DNSClusterFirst, "":
		if pod.Spec.HostNetwork {
			return corev1.DNSDefault
		}
	}
	return corev1.DNSClusterFirst
}

func clusterSearches(ns, domain string, host []string) []string {
	if domain == "" {
		return slices.Clone(host)
	}
	return dedupe(append([]string{ns + ".svc." + domain, "svc." + domain, domain}, host...))
}

// fitSearches applies kubelet's search limits; cut says whether anything was dropped.
func fitSearches(s []string) ([]string, bool) {
	cut := false
	if len(s) > MaxSearchPaths {
		s, cut = s[:MaxSearchPaths], true
	}
	kept := s[:0:0]
	for _, d := range s {
		if len(d) > maxSearchLen {
			cut = true
			continue
		}
		kept = append(kept, d)
	}
	for len(kept) > 0 && len(strings.Join(kept, " ")) > MaxSearchLineLen {
		kept, cut = kept[:len(kept)-1], true
	}
	return kept, cut
}

func dedupe(s []string) []string {
	seen := make(map[string]bool, len(s))
	out := s[:0:0]
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// mergeOptions adds opts to base; an option replaces an earlier one of the same name in
// place. (Kubelet's order is a map's; this one is stable.)
func mergeOptions(base, opts []string) []string {
	out := slices.Clone(base)
	for _, o := range opts {
		name, _, _ := strings.Cut(o, ":")
		i := slices.IndexFunc(out, func(e string) bool { n, _, _ := strings.Cut(e, ":"); return n == name })
		if i >= 0 {
			out[i] = o
		} else {
			out = append(out, o)
		}
	}
	return out
}
