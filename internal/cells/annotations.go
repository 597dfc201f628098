package cells

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Annotation prefixes: Kip's own, and the original Kip's, accepted so existing manifests
// keep working.
const (
	AnnotationPrefix       = "pod.kip.dev/"
	LegacyAnnotationPrefix = "pod.elotl.co/"
)

// Annotations the state machine reads (the selector reads instance-type and launch-type).
const (
	AnnotationSecurityGroups  = "security-groups"
	AnnotationInstanceProfile = "instance-profile"
	AnnotationVolumeSize      = "volume-size"
	AnnotationPrivateIPOnly   = "private-ip-only"
	AnnotationHealthyTimeout  = "healthcheck-healthy-timeout"
)

// podOptions are the launch settings a pod's annotations ask for.
type podOptions struct {
	SecurityGroups  []string
	InstanceProfile string
	VolumeSizeGiB   int
	PrivateIPOnly   bool
	// HealthyTimeout overrides the configured healthy timeout; 0 keeps it.
	HealthyTimeout time.Duration
}

// annotation returns the value of name under Kip's prefix, else the legacy one, with the
// full key for error messages.
func annotation(pod *corev1.Pod, name string) (key, value string, ok bool) {
	for _, p := range []string{AnnotationPrefix, LegacyAnnotationPrefix} {
		if v, found := pod.Annotations[p+name]; found {
			return p + name, v, true
		}
	}
	return "", "", false
}

// parseAnnotations reads the pod's launch annotations. Its error names the bad annotation.
func parseAnnotations(pod *corev1.Pod) (podOptions, error) {
	var o podOptions
	if k, v, ok := annotation(pod, AnnotationSecurityGroups); ok {
		for _, g := range strings.Split(v, ",") {
			g = strings.TrimSpace(g)
			if g == "" || strings.ContainsAny(g, " \t") {
				return o, fmt.Errorf("annotation %s: %q is not a comma-separated list of security group ids", k, v)
			}
			o.SecurityGroups = append(o.SecurityGroups, g)
		}
	}
	if k, v, ok := annotation(pod, AnnotationInstanceProfile); ok {
		if strings.TrimSpace(v) == "" || strings.ContainsAny(v, " \t") {
			return o, fmt.Errorf("annotation %s: %q is not an instance profile name or ARN", k, v)
		}
		o.InstanceProfile = v
	}
	if k, v, ok := annotation(pod, AnnotationVolumeSize); ok {
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() <= 0 {
			return o, fmt.Errorf("annotation %s: %q is not a positive size like \"20Gi\"", k, v)
		}
		const gib = 1 << 30
		o.VolumeSizeGiB = int((q.Value() + gib - 1) / gib)
	}
	if k, v, ok := annotation(pod, AnnotationPrivateIPOnly); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("annotation %s: %q is not true or false", k, v)
		}
		o.PrivateIPOnly = b
	}
	if k, v, ok := annotation(pod, AnnotationHealthyTimeout); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			// The original took whole seconds.
			n, nerr := strconv.Atoi(v)
			if nerr != nil {
				return o, fmt.Errorf("annotation %s: %q is not a duration like \"120s\" or a number of seconds", k, v)
			}
			d = time.Duration(n) * time.Second
		}
		if d <= 0 {
			return o, fmt.Errorf("annotation %s: %q must be positive", k, v)
		}
		o.HealthyTimeout = d
	}
	return o, nil
}
