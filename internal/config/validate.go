package config

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Validate checks the whole configuration and returns every problem at once, each naming
// its field path (for example "cells.healthyTimeout"). Call Default first.
func (c *ProviderConfig) Validate() error {
	var errs field.ErrorList
	if c.APIVersion != APIVersion {
		errs = append(errs, field.Invalid(field.NewPath("apiVersion"), c.APIVersion, "must be "+APIVersion))
	}
	if c.Kind != Kind {
		errs = append(errs, field.Invalid(field.NewPath("kind"), c.Kind, "must be "+Kind))
	}
	errs = append(errs, c.Cloud.validate(field.NewPath("cloud"))...)
	errs = append(errs, c.Node.validate(field.NewPath("node"), c.Cloud.Provider)...)
	errs = append(errs, c.Cells.validate(field.NewPath("cells"))...)
	for i, n := range c.Cells.FormerNodeNames {
		if n == c.Node.Name {
			errs = append(errs, field.Invalid(field.NewPath("cells", "formerNodeNames").Index(i), n, "is node.name: the node's own cells would be terminated"))
		}
	}
	errs = append(errs, c.Registry.validate(field.NewPath("registry"))...)
	return errs.ToAggregate()
}

func (c *Cloud) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch c.Provider {
	case ProviderLocal:
		lp := p.Child("local")
		l := c.Local
		if l.Bridge == "" || len(l.Bridge) > 15 || strings.ContainsAny(l.Bridge, "/ \t") {
			errs = append(errs, field.Invalid(lp.Child("bridge"), l.Bridge, "must be a Linux interface name of 1 to 15 characters"))
		}
		if pfx, err := netip.ParsePrefix(l.Subnet); err != nil || !pfx.Addr().Is4() || pfx.Bits() > 30 {
			errs = append(errs, field.Invalid(lp.Child("subnet"), l.Subnet, "must be an IPv4 CIDR of /30 or larger, like 10.250.0.0/24"))
		}
		if !filepath.IsAbs(l.StateDir) {
			errs = append(errs, field.Invalid(lp.Child("stateDir"), l.StateDir, "must be an absolute path"))
		}
		if l.AgentPath != "" && !filepath.IsAbs(l.AgentPath) {
			errs = append(errs, field.Invalid(lp.Child("agentPath"), l.AgentPath, "must be an absolute path"))
		}
		if d := l.ImageStore.Dir; !filepath.IsAbs(d) || strings.ContainsAny(d, ",:") {
			errs = append(errs, field.Invalid(lp.Child("imageStore", "dir"), d, "must be an absolute path without ',' or ':' (overlayfs options)"))
		}
		errs = append(errs, l.ImageStore.MaxSize.validate(lp.Child("imageStore", "maxSize"), false)...)
		errs = append(errs, l.validateGroups(lp)...)
	case ProviderAWS:
		errs = append(errs, c.AWS.validate(p.Child("aws"))...)
	default:
		errs = append(errs, field.NotSupported(p.Child("provider"), c.Provider, []string{ProviderLocal, ProviderAWS}))
	}
	if f := c.Faults; f != nil {
		fp := p.Child("faults")
		sum := 0.0
		for _, r := range []struct {
			name string
			v    float64
		}{{"throttleRate", f.ThrottleRate}, {"serverErrorRate", f.ServerErrorRate}, {"capacityErrorRate", f.CapacityErrorRate}, {"lostResponseRate", f.LostResponseRate}} {
			if !(r.v >= 0 && r.v <= 1) {
				errs = append(errs, field.Invalid(fp.Child(r.name), r.v, "must be a fraction between 0 and 1"))
			}
			sum += r.v
		}
		if sum > 1 {
			errs = append(errs, field.Invalid(fp, sum, "the rates must add up to at most 1"))
		}
	}
	return errs
}

// Shapes of AWS names and ids, as EC2 and IAM spell them.
var (
	awsRegionRe  = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	awsOwnerRe   = regexp.MustCompile(`^([0-9]{12}|[a-z][a-z-]*)$`)
	awsProfileRe = regexp.MustCompile(`^(arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/[\w+=,.@/-]+|[\w+=,.@-]{1,128})$`)
)

// awsID returns a pattern for an EC2 resource id with prefix: 8 or 17 hex digits.
func awsID(prefix string) *regexp.Regexp {
	return regexp.MustCompile(`^` + prefix + `-[0-9a-f]{8}([0-9a-f]{9})?$`)
}

var (
	vpcIDRe    = awsID("vpc")
	subnetIDRe = awsID("subnet")
	groupIDRe  = awsID("sg")
	imageIDRe  = awsID("ami")
)

func (a *AWSCloud) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if a.Region != "" && !awsRegionRe.MatchString(a.Region) {
		errs = append(errs, field.Invalid(p.Child("region"), a.Region, "must be an AWS region like us-east-1, or empty to use kip's own"))
	}
	if a.VPCID != "" && !vpcIDRe.MatchString(a.VPCID) {
		errs = append(errs, field.Invalid(p.Child("vpcID"), a.VPCID, "must be a VPC id like vpc-0123456789abcdef0, or empty"))
	}
	if a.SubnetID != "" && !subnetIDRe.MatchString(a.SubnetID) {
		errs = append(errs, field.Invalid(p.Child("subnetID"), a.SubnetID, "must be a subnet id like subnet-0123456789abcdef0, or empty to use kip's own"))
	}
	seen := map[string]bool{a.SubnetID: a.SubnetID != ""}
	for i, sn := range a.SubnetIDs {
		switch {
		case !subnetIDRe.MatchString(sn):
			errs = append(errs, field.Invalid(p.Child("subnetIDs").Index(i), sn, "must be a subnet id like subnet-0123456789abcdef0"))
		case seen[sn]:
			errs = append(errs, field.Duplicate(p.Child("subnetIDs").Index(i), sn))
		}
		seen[sn] = true
	}
	if len(a.SecurityGroups) > MaxAWSSecurityGroups {
		errs = append(errs, field.TooMany(p.Child("securityGroups"), len(a.SecurityGroups), MaxAWSSecurityGroups))
	}
	for i, g := range a.SecurityGroups {
		if !groupIDRe.MatchString(g) {
			errs = append(errs, field.Invalid(p.Child("securityGroups").Index(i), g, "must be a security group id like sg-0123456789abcdef0"))
		}
	}
	if a.ImageID != "" {
		if !imageIDRe.MatchString(a.ImageID) {
			errs = append(errs, field.Invalid(p.Child("imageID"), a.ImageID, "must be an image id like ami-0123456789abcdef0"))
		}
		if len(a.ImageOwners) > 0 || len(a.ImageFilters) > 0 {
			errs = append(errs, field.Invalid(p.Child("imageID"), a.ImageID, "give imageID, or imageOwners and imageFilters, not both"))
		}
	} else if len(a.ImageOwners) == 0 && len(a.ImageFilters) == 0 {
		errs = append(errs, field.Required(p.Child("imageID"), "set imageID, or imageOwners and imageFilters"))
	}
	for i, o := range a.ImageOwners {
		if !awsOwnerRe.MatchString(o) {
			errs = append(errs, field.Invalid(p.Child("imageOwners").Index(i), o, "must be an account id, self, amazon or another owner alias"))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(a.ImageFilters)) {
		fp := p.Child("imageFilters").Key(name)
		if strings.TrimSpace(name) == "" {
			errs = append(errs, field.Invalid(fp, name, "must be a DescribeImages filter name like name or tag:version"))
		}
		if len(a.ImageFilters[name]) == 0 {
			errs = append(errs, field.Required(fp, "a filter needs at least one value"))
		}
		for i, v := range a.ImageFilters[name] {
			if v == "" {
				errs = append(errs, field.Invalid(fp.Index(i), v, "must not be empty"))
			}
		}
	}
	if a.InstanceProfile != "" && !awsProfileRe.MatchString(a.InstanceProfile) {
		errs = append(errs, field.Invalid(p.Child("instanceProfile"), a.InstanceProfile, "must be an instance profile name or ARN"))
	}
	for i, g := range a.PodSecurityGroups {
		if !groupIDRe.MatchString(g) {
			errs = append(errs, field.Invalid(p.Child("podSecurityGroups").Index(i), g, "must be a security group id like sg-0123456789abcdef0"))
		}
	}
	for i, pr := range a.PodInstanceProfiles {
		if !awsProfileRe.MatchString(pr) {
			errs = append(errs, field.Invalid(p.Child("podInstanceProfiles").Index(i), pr, "must be an instance profile name or ARN"))
		}
	}
	errs = append(errs, a.PollInterval.validate(p.Child("pollInterval"))...)
	for _, e := range []struct{ name, url string }{{"endpoint", a.Endpoint}, {"pricingEndpoint", a.PricingEndpoint}} {
		if e.url == "" {
			continue
		}
		if u, err := url.Parse(e.url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, field.Invalid(p.Child(e.name), e.url, "must be an http:// or https:// URL"))
		}
	}
	cp := p.Child("catalog")
	if ri := a.Catalog.RefreshInterval; ri.err != nil {
		errs = append(errs, field.Invalid(cp.Child("refreshInterval"), "", ri.err.Error()))
	} else if ri.Duration < 0 {
		errs = append(errs, field.Invalid(cp.Child("refreshInterval"), ri.Duration.String(), "must not be negative (0s disables refreshing)"))
	}
	errs = append(errs, a.Catalog.FirstRefreshTimeout.validate(cp.Child("firstRefreshTimeout"))...)
	if a.Catalog.CacheFile != "" && !filepath.IsAbs(a.Catalog.CacheFile) {
		errs = append(errs, field.Invalid(cp.Child("cacheFile"), a.Catalog.CacheFile, "must be an absolute path"))
	}
	return append(errs, a.Bootstrap.validate(p.Child("bootstrap"))...)
}

// bootstrapArchs are the architectures cells may run.
var bootstrapArchs = []string{"amd64", "arm64"}

func (b *AWSBootstrap) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if _, port, err := net.SplitHostPort(b.ListenAddr); err != nil {
		errs = append(errs, field.Invalid(p.Child("listenAddr"), b.ListenAddr, "must be host:port, like :6422 or 10.0.0.5:6422"))
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		errs = append(errs, field.Invalid(p.Child("listenAddr"), b.ListenAddr, "port must be 0..65535"))
	}
	if b.AdvertiseURL != "" {
		if u, err := url.Parse(b.AdvertiseURL); err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			errs = append(errs, field.Invalid(p.Child("advertiseURL"), b.AdvertiseURL, "must be an https://host:port URL without a path"))
		}
	}
	if b.ArtifactURL != "" {
		if u, err := url.Parse(b.ArtifactURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			strings.ContainsAny(b.ArtifactURL, "'\\ \t\n\r") {
			errs = append(errs, field.Invalid(p.Child("artifactURL"), b.ArtifactURL, "must be an http:// or https:// URL prefix without quotes or spaces"))
		}
	}
	errs = append(errs, b.TokenTTL.validate(p.Child("tokenTTL"))...)
	for _, m := range []struct {
		name  string
		paths map[string]string
	}{{"agentPaths", b.AgentPaths}, {"runcPaths", b.RuncPaths}} {
		for _, arch := range slices.Sorted(maps.Keys(m.paths)) {
			fp := p.Child(m.name).Key(arch)
			if !slices.Contains(bootstrapArchs, arch) {
				errs = append(errs, field.NotSupported(fp, arch, bootstrapArchs))
			}
			if !filepath.IsAbs(m.paths[arch]) {
				errs = append(errs, field.Invalid(fp, m.paths[arch], "must be an absolute path"))
			}
		}
	}
	return errs
}

func (n *Node) validate(p *field.Path, provider string) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Subdomain(n.Name) {
		errs = append(errs, field.Invalid(p.Child("name"), n.Name, msg))
	}
	for k, v := range n.Labels {
		for _, msg := range validation.IsQualifiedName(k) {
			errs = append(errs, field.Invalid(p.Child("labels").Key(k), k, msg))
		}
		for _, msg := range validation.IsValidLabelValue(v) {
			errs = append(errs, field.Invalid(p.Child("labels").Key(k), v, msg))
		}
	}
	for i, t := range n.Taints {
		tp := p.Child("taints").Index(i)
		for _, msg := range validation.IsQualifiedName(t.Key) {
			errs = append(errs, field.Invalid(tp.Child("key"), t.Key, msg))
		}
		if t.Value != "" {
			for _, msg := range validation.IsValidLabelValue(t.Value) {
				errs = append(errs, field.Invalid(tp.Child("value"), t.Value, msg))
			}
		}
		switch t.Effect {
		case corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
		default:
			errs = append(errs, field.NotSupported(tp.Child("effect"), t.Effect,
				[]corev1.TaintEffect{corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute}))
		}
	}
	cp := p.Child("capacity")
	errs = append(errs, n.Capacity.CPU.validate(cp.Child("cpu"), true)...)
	errs = append(errs, n.Capacity.Memory.validate(cp.Child("memory"), true)...)
	errs = append(errs, n.Capacity.Pods.validate(cp.Child("pods"), true)...)
	errs = append(errs, n.Capacity.GPU.validate(cp.Child("nvidia.com/gpu"), false)...)
	errs = append(errs, n.Capacity.AMDGPU.validate(cp.Child("amd.com/gpu"), false)...)
	if n.InternalIP == "" {
		if provider == ProviderLocal {
			errs = append(errs, field.Required(p.Child("internalIP"), "cannot derive it from cloud.local.subnet"))
		}
	} else if ip := net.ParseIP(n.InternalIP); ip == nil {
		errs = append(errs, field.Invalid(p.Child("internalIP"), n.InternalIP, "must be an IP address"))
	} else if ip.IsLoopback() {
		errs = append(errs, field.Invalid(p.Child("internalIP"), n.InternalIP, "must not be a loopback address: the apiserver and cells cannot reach it"))
	}
	for i, s := range n.ClusterDNS {
		if net.ParseIP(s) == nil {
			errs = append(errs, field.Invalid(p.Child("clusterDNS").Index(i), s, "must be an IP address"))
		}
	}
	for _, msg := range validation.IsDNS1123Subdomain(n.ClusterDomain) {
		errs = append(errs, field.Invalid(p.Child("clusterDomain"), n.ClusterDomain, msg))
	}
	if !filepath.IsAbs(n.SeccompProfileRoot) {
		errs = append(errs, field.Invalid(p.Child("seccompProfileRoot"), n.SeccompProfileRoot, "must be an absolute path"))
	}
	if n.KubeletPort < 1 || n.KubeletPort > 65535 {
		errs = append(errs, field.Invalid(p.Child("kubeletPort"), n.KubeletPort, "must be a port between 1 and 65535"))
	}
	if (n.TLS.CertFile == "") != (n.TLS.KeyFile == "") {
		errs = append(errs, field.Invalid(p.Child("tls"), n.TLS, "certFile and keyFile must be given together"))
	}
	return errs
}

func (c *Cells) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if c.DefaultInstanceType != "" && strings.ContainsAny(c.DefaultInstanceType, " \t/") {
		errs = append(errs, field.Invalid(p.Child("defaultInstanceType"), c.DefaultInstanceType, "must be an instance type name"))
	}
	errs = append(errs, c.Reserve.CPU.validate(p.Child("reserve", "cpu"), false)...)
	errs = append(errs, c.Reserve.Memory.validate(p.Child("reserve", "memory"), false)...)
	errs = append(errs, c.HealthyTimeout.validate(p.Child("healthyTimeout"))...)
	errs = append(errs, c.LostTimeout.validate(p.Child("lostTimeout"))...)
	errs = append(errs, c.StatusInterval.validate(p.Child("statusInterval"))...)
	errs = append(errs, c.CapacityErrorMemory.validate(p.Child("capacityErrorMemory"))...)
	errs = append(errs, c.CertLifetime.validate(p.Child("certLifetime"))...)
	if c.LaunchConcurrency < 1 || c.LaunchConcurrency > 1000 {
		errs = append(errs, field.Invalid(p.Child("launchConcurrency"), c.LaunchConcurrency, "must be between 1 and 1000"))
	}
	if msgs := validation.IsDNS1123Label(c.ClusterName); len(msgs) > 0 {
		errs = append(errs, field.Invalid(p.Child("clusterName"), c.ClusterName, strings.Join(msgs, "; ")))
	}
	seen := map[string]bool{}
	for i, n := range c.FormerNodeNames {
		switch msgs := validation.IsDNS1123Subdomain(n); {
		case len(msgs) > 0:
			errs = append(errs, field.Invalid(p.Child("formerNodeNames").Index(i), n, strings.Join(msgs, "; ")))
		case seen[n]:
			errs = append(errs, field.Duplicate(p.Child("formerNodeNames").Index(i), n))
		}
		seen[n] = true
	}
	if n := c.PodPidsLimit; n != nil && *n != -1 && *n < 1 {
		errs = append(errs, field.Invalid(p.Child("podPidsLimit"), *n, "must be -1 (no limit) or at least 1"))
	}
	pools := map[StandbyCells]bool{}
	for i, s := range c.Standby {
		ip := p.Child("standby").Index(i)
		switch {
		case s.InstanceType == "":
			errs = append(errs, field.Required(ip.Child("instanceType"), "the pool's instance type"))
		case strings.ContainsAny(s.InstanceType, " \t/"):
			errs = append(errs, field.Invalid(ip.Child("instanceType"), s.InstanceType, "must be an instance type name"))
		}
		if s.Count < 0 || s.Count > maxStandbyCount {
			errs = append(errs, field.Invalid(ip.Child("count"), s.Count, fmt.Sprintf("must be between 0 and %d", maxStandbyCount)))
		}
		if s.Max != 0 && (s.Max < s.Count || s.Max > maxStandbyCount) {
			errs = append(errs, field.Invalid(ip.Child("max"), s.Max, fmt.Sprintf("must be 0 (the pool keeps count) or between count (%d) and %d", s.Count, maxStandbyCount)))
		}
		k := StandbyCells{InstanceType: s.InstanceType, Spot: s.Spot}
		if pools[k] {
			errs = append(errs, field.Duplicate(ip, fmt.Sprintf("instanceType %s, spot %t", s.InstanceType, s.Spot)))
		}
		pools[k] = true
	}
	return errs
}

// maxStandbyCount bounds one standby pool (cells.standby[i].count).
const maxStandbyCount = 1000

func (r *Registry) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if r.DefaultRegistry != "" {
		host, _, _ := strings.Cut(r.DefaultRegistry, "/")
		if msg := checkHostPort(host); msg != "" || strings.Contains(r.DefaultRegistry, "://") {
			if msg == "" {
				msg = "must not have a scheme"
			}
			errs = append(errs, field.Invalid(p.Child("defaultRegistry"), r.DefaultRegistry, msg))
		}
	}
	for i, h := range r.Insecure {
		if msg := checkHostPort(h); msg != "" {
			errs = append(errs, field.Invalid(p.Child("insecure").Index(i), h, msg))
		}
	}
	errs = append(errs, r.MaxUnpackedImageSize.validate(p.Child("maxUnpackedImageSize"), true)...)
	return errs
}

// checkHostPort accepts "host" or "host:port".
func checkHostPort(s string) string {
	const want = "must be host or host:port, like 10.250.0.1:5000"
	if s == "" || strings.ContainsAny(s, "/ \t") {
		return want
	}
	host, port := s, ""
	if strings.Contains(s, ":") {
		var err error
		if host, port, err = net.SplitHostPort(s); err != nil {
			return want
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return want
		}
	}
	if net.ParseIP(host) == nil && len(validation.IsDNS1123Subdomain(host)) > 0 {
		return want
	}
	return ""
}

func (d Duration) validate(p *field.Path) field.ErrorList {
	if d.err != nil {
		return field.ErrorList{field.Invalid(p, "", d.err.Error())}
	}
	if d.Duration <= 0 {
		return field.ErrorList{field.Invalid(p, d.Duration.String(), "must be positive")}
	}
	return nil
}

func (q Quantity) validate(p *field.Path, positive bool) field.ErrorList {
	if q.err != nil {
		return field.ErrorList{field.Invalid(p, "", q.err.Error())}
	}
	if q.Sign() < 0 || (positive && q.Sign() == 0) {
		msg := "must not be negative"
		if positive {
			msg = "must be positive"
		}
		return field.ErrorList{field.Invalid(p, q.String(), msg)}
	}
	return nil
}

// validateGroups checks cloud.local.securityGroups and defaultSecurityGroups.
func (l *LocalCloud) validateGroups(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	names := map[string]bool{}
	for i, g := range l.SecurityGroups {
		np := p.Child("securityGroups").Index(i).Child("name")
		switch {
		case g.Name == "" || strings.ContainsAny(g.Name, ", \t\n\""):
			errs = append(errs, field.Invalid(np, g.Name, "must be non-empty, without commas, quotes or spaces (the annotation lists groups with commas)"))
		case names[g.Name]:
			errs = append(errs, field.Duplicate(np, g.Name))
		}
		names[g.Name] = true
	}
	for i, g := range l.SecurityGroups {
		for j, r := range g.Ingress {
			rp := p.Child("securityGroups").Index(i).Child("ingress").Index(j)
			proto := strings.ToLower(r.Protocol)
			switch proto {
			case "tcp", "udp":
				if _, _, err := r.PortRange(); err != nil {
					errs = append(errs, field.Invalid(rp.Child("ports"), r.Ports, err.Error()))
				}
			case "icmp", "all":
				if r.Ports != "" {
					errs = append(errs, field.Invalid(rp.Child("ports"), r.Ports, "only TCP and UDP rules take ports"))
				}
			default:
				errs = append(errs, field.NotSupported(rp.Child("protocol"), r.Protocol, []string{"TCP", "UDP", "ICMP", "all"}))
			}
			if len(r.From) == 0 {
				errs = append(errs, field.Required(rp.Child("from"), "list CIDRs or group names"))
			}
			for k, f := range r.From {
				if names[f] {
					continue
				}
				if pfx, err := netip.ParsePrefix(f); err != nil || !pfx.Addr().Is4() {
					errs = append(errs, field.Invalid(rp.Child("from").Index(k), f, "must be an IPv4 CIDR or the name of a group in cloud.local.securityGroups"))
				}
			}
		}
	}
	for i, d := range l.DefaultSecurityGroups {
		if !names[d] {
			errs = append(errs, field.NotFound(p.Child("defaultSecurityGroups").Index(i), d))
		}
	}
	return errs
}
