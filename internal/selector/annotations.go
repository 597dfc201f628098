package selector

import (
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Pod annotations the selector reads. The pod.elotl.co names are the original Kip's and are
// still accepted; when both spellings are set they must agree.
const (
	// AnnotationInstanceType names an instance type, or a glob of them (path.Match syntax,
	// e.g. "c5*"), to choose from instead of the whole catalog.
	AnnotationInstanceType = "pod.kip.dev/instance-type"
	// AnnotationLaunchType is "spot" or "on-demand".
	AnnotationLaunchType = "pod.kip.dev/launch-type"

	LegacyAnnotationInstanceType = "pod.elotl.co/instance-type"
	LegacyAnnotationLaunchType   = "pod.elotl.co/launch-type"
)

// Launch types.
const (
	LaunchTypeSpot     = "spot"
	LaunchTypeOnDemand = "on-demand"
)

// podAnnotations is what the annotations ask for.
type podAnnotations struct {
	// typePattern is an exact name or a glob; "" means the whole catalog. typeAnnotation is
	// the annotation it came from.
	typePattern, typeAnnotation string
	glob                        bool
	// spot is nil when the pod does not say.
	spot *bool
}

// annotation returns the value of the kip annotation or its legacy spelling (trimmed; empty
// counts as unset), and the name it came from.
func annotation(pod *corev1.Pod, name, legacy string) (value, from string, err error) {
	v := strings.TrimSpace(pod.Annotations[name])
	lv := strings.TrimSpace(pod.Annotations[legacy])
	switch {
	case v != "" && lv != "" && v != lv:
		return "", "", &AnnotationError{Annotation: name, Value: v, Reason: "conflicts with " + legacy + "=" + `"` + lv + `"`}
	case v != "":
		return v, name, nil
	case lv != "":
		return lv, legacy, nil
	}
	return "", "", nil
}

func parseAnnotations(pod *corev1.Pod) (podAnnotations, error) {
	var a podAnnotations
	pattern, from, err := annotation(pod, AnnotationInstanceType, LegacyAnnotationInstanceType)
	if err != nil {
		return a, err
	}
	if pattern != "" {
		if _, err := path.Match(pattern, ""); err != nil {
			return a, &AnnotationError{Annotation: from, Value: pattern, Reason: "bad glob: " + err.Error()}
		}
		a.typePattern, a.typeAnnotation = pattern, from
		a.glob = strings.ContainsAny(pattern, `*?[\`)
	}
	lt, from, err := annotation(pod, AnnotationLaunchType, LegacyAnnotationLaunchType)
	if err != nil {
		return a, err
	}
	switch strings.ToLower(lt) {
	case "":
	case LaunchTypeSpot:
		a.spot = ptr(true)
	case LaunchTypeOnDemand, "ondemand", "on_demand":
		a.spot = ptr(false)
	case "dedicated":
		return a, &AnnotationError{Annotation: from, Value: lt, Reason: "dedicated hosts are not supported; use spot or on-demand"}
	default:
		return a, &AnnotationError{Annotation: from, Value: lt, Reason: "must be spot or on-demand"}
	}
	return a, nil
}

func ptr[T any](v T) *T { return &v }
