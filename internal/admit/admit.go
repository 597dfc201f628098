// Package admit decides, before any cell launches, whether kip can run a pod as its spec asks:
// a field kip cannot honour is refused here with an error naming it, so a pod (or a Deployment
// of it) never launches cells only to fail on them. It is pure: no I/O.
package admit

import (
	"fmt"
	"reflect"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Error is a refusal: the field path kip cannot honour and why.
type Error struct {
	Field  string
	Reason string
}

func (e *Error) Error() string { return e.Field + ": " + e.Reason }

// supportedVolumes are the volume sources a cell can provide: emptyDir on the cell, and the
// API objects kip resolves into files (configMap, secret, downwardAPI, projected).
var supportedVolumes = map[string]bool{"emptyDir": true, "configMap": true, "secret": true, "downwardAPI": true, "projected": true}

// Pod returns an *Error for the first field of pod kip cannot honour, nil when it can run it.
func Pod(pod *corev1.Pod) error {
	for i, v := range pod.Spec.Volumes {
		src := sourceName(v.VolumeSource)
		if src == "" {
			return &Error{Field: fmt.Sprintf("spec.volumes[%d]", i), Reason: fmt.Sprintf("volume %q has no source", v.Name)}
		}
		if !supportedVolumes[src] {
			return &Error{Field: fmt.Sprintf("spec.volumes[%d].%s", i, src),
				Reason: fmt.Sprintf("volume %q: %s volumes are not supported on kip's cells (only emptyDir, configMap, secret, downwardAPI and projected)", v.Name, src)}
		}
	}
	for _, list := range []struct {
		field string
		ctrs  []corev1.Container
	}{{"initContainers", pod.Spec.InitContainers}, {"containers", pod.Spec.Containers}} {
		for i, c := range list.ctrs {
			if err := container(fmt.Sprintf("spec.%s[%d]", list.field, i), c.SecurityContext); err != nil {
				return err
			}
		}
	}
	return nil
}

// container refuses the security settings a cell cannot give a container.
func container(field string, sc *corev1.SecurityContext) error {
	if sc == nil {
		return nil
	}
	if sc.Privileged != nil && *sc.Privileged {
		return &Error{Field: field + ".securityContext.privileged", Reason: "privileged containers are not supported on kip's cells"}
	}
	if sc.Capabilities != nil {
		for j, c := range sc.Capabilities.Add {
			if strings.EqualFold(string(c), "ALL") {
				return &Error{Field: fmt.Sprintf("%s.securityContext.capabilities.add[%d]", field, j), Reason: "ALL is not supported; name the capabilities to add"}
			}
		}
	}
	return nil
}

// sourceName is the JSON name of the volume source that is set ("persistentVolumeClaim"), or
// "" when none is.
func sourceName(s corev1.VolumeSource) string {
	v := reflect.ValueOf(s)
	t := v.Type()
	for i := range t.NumField() {
		if f := v.Field(i); f.Kind() == reflect.Pointer && !f.IsNil() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			return name
		}
	}
	return ""
}
