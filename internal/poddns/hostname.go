package poddns

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Names are a pod's names as kubelet computes them.
type Names struct {
	// Hostname is spec.hostnameOverride, else spec.hostname, else the pod name, cut to 63
	// characters without a trailing '-' or '.'.
	Hostname string
	// Domain is <subdomain>.<namespace>.svc.<clusterDomain> when spec.subdomain is set (and
	// there is no hostnameOverride), else empty.
	Domain string
	// Kernel is the container's hostname (UTS name, /etc/hostname, $HOSTNAME): Hostname, or
	// with setHostnameAsFQDN and a Domain, the FQDN.
	Kernel string
}

// FQDN is Hostname.Domain, or Hostname with no Domain.
func (n Names) FQDN() string {
	if n.Domain == "" {
		return n.Hostname
	}
	return n.Hostname + "." + n.Domain
}

// PodNames returns the pod's names in the cluster domain (DefaultDomain when empty). As
// kubelet does, it fails when setHostnameAsFQDN makes a kernel hostname over 64 characters.
func PodNames(pod *corev1.Pod, clusterDomain string) (Names, error) {
	if clusterDomain == "" {
		clusterDomain = DefaultDomain
	}
	var n Names
	switch {
	case pod.Spec.HostnameOverride != nil && *pod.Spec.HostnameOverride != "":
		n.Hostname = *pod.Spec.HostnameOverride
	case pod.Spec.Hostname != "":
		n.Hostname = pod.Spec.Hostname
	case pod.Name != "":
		n.Hostname = pod.Name
	default:
		n.Hostname = "pod" // the API server names every pod; a bare request still gets a name
	}
	if len(n.Hostname) > maxHostnameLen {
		n.Hostname = strings.TrimRight(n.Hostname[:maxHostnameLen], "-.")
	}
	if n.Hostname == "" {
		return Names{}, fmt.Errorf("hostname: pod %q has no usable hostname", pod.Name)
	}
	if pod.Spec.Subdomain != "" && pod.Spec.HostnameOverride == nil {
		n.Domain = fmt.Sprintf("%s.%s.svc.%s", pod.Spec.Subdomain, pod.Namespace, clusterDomain)
	}
	n.Kernel = n.Hostname
	if n.Domain != "" && pod.Spec.SetHostnameAsFQDN != nil && *pod.Spec.SetHostnameAsFQDN {
		fqdn := n.FQDN()
		if len(fqdn) > maxFQDNLen {
			return Names{}, fmt.Errorf("setHostnameAsFQDN: FQDN %s is too long (%d characters is the max, %d characters requested)", fqdn, maxFQDNLen, len(fqdn))
		}
		n.Kernel = fqdn
	}
	return n, nil
}
