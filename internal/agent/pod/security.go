package pod

import (
	corev1 "k8s.io/api/core/v1"
)

// withPodSecurity returns c with the pod-level securityContext merged into its own, as
// kubelet's effective security context: the container's runAsUser, runAsGroup and
// runAsNonRoot win, the pod's fill what the container leaves unset.
func withPodSecurity(pod *corev1.Pod, c *corev1.Container) *corev1.Container {
	psc := pod.Spec.SecurityContext
	if psc == nil {
		return c
	}
	out := c.DeepCopy()
	sc := out.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
		out.SecurityContext = sc
	}
	if sc.RunAsUser == nil {
		sc.RunAsUser = psc.RunAsUser
	}
	if sc.RunAsGroup == nil {
		sc.RunAsGroup = psc.RunAsGroup
	}
	if sc.RunAsNonRoot == nil {
		sc.RunAsNonRoot = psc.RunAsNonRoot
	}
	return out
}

// supplementalGroups are the pod's extra groups for every container's process:
// securityContext.supplementalGroups, then fsGroup, as kubelet adds them.
func supplementalGroups(pod *corev1.Pod) []uint32 {
	psc := pod.Spec.SecurityContext
	if psc == nil {
		return nil
	}
	var out []uint32
	for _, g := range psc.SupplementalGroups {
		out = append(out, uint32(g))
	}
	if psc.FSGroup != nil {
		out = append(out, uint32(*psc.FSGroup))
	}
	return out
}

// seccompRuntimeDefault reports whether c runs under the RuntimeDefault seccomp profile: its
// own seccompProfile, else the pod's, as kubelet resolves it (unset is Unconfined; Localhost
// is refused before launch, in internal/admit).
func seccompRuntimeDefault(pod *corev1.Pod, c *corev1.Container) bool {
	var p *corev1.SeccompProfile
	if sc := c.SecurityContext; sc != nil && sc.SeccompProfile != nil {
		p = sc.SeccompProfile
	} else if psc := pod.Spec.SecurityContext; psc != nil {
		p = psc.SeccompProfile
	}
	return p != nil && p.Type == corev1.SeccompProfileTypeRuntimeDefault
}
