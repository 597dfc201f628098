package podrequest

import (
	"context"
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kip-dev/kip/internal/podenv"
)

// envList keeps environment variables in first-definition order; a later definition of the
// same name replaces the value in place, as kubelet's map does.
type envList struct {
	order []string
	vals  map[string]string
}

func newEnvList() *envList { return &envList{vals: map[string]string{}} }

func (l *envList) set(k, v string) {
	if _, ok := l.vals[k]; !ok {
		l.order = append(l.order, k)
	}
	l.vals[k] = v
}

func (l *envList) vars() []corev1.EnvVar {
	out := make([]corev1.EnvVar, 0, len(l.order))
	for _, k := range l.order {
		out = append(out, corev1.EnvVar{Name: k, Value: l.vals[k]})
	}
	return out
}

// containerEnv resolves one container's envFrom and env into literal values, the way kubelet
// builds a container's environment: envFrom sources in order, then env entries (with $(VAR)
// expansion over what is defined so far and the service variables), then the service
// variables not defined otherwise.
func (r *Resolver) containerEnv(ctx context.Context, pod *corev1.Pod, c *corev1.Container, svc *envList) ([]corev1.EnvVar, error) {
	env := newEnvList()
	for _, ef := range c.EnvFrom {
		if err := r.envFrom(ctx, pod, c, ef, env); err != nil {
			return nil, err
		}
	}
	lookup := func(name string) (string, bool) {
		if v, ok := env.vals[name]; ok {
			return v, true
		}
		v, ok := svc.vals[name]
		return v, ok
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env.set(e.Name, podenv.Expand(e.Value, lookup))
			continue
		}
		v, ok, err := r.envValueFrom(ctx, pod, c, e)
		if err != nil {
			return nil, err
		}
		if ok {
			env.set(e.Name, v)
		}
	}
	for _, k := range svc.order {
		if _, ok := env.vals[k]; !ok {
			env.set(k, svc.vals[k])
		}
	}
	return env.vars(), nil
}

func (r *Resolver) envFrom(ctx context.Context, pod *corev1.Pod, c *corev1.Container, ef corev1.EnvFromSource, env *envList) error {
	var (
		data     map[string]string
		name     string
		optional bool
	)
	switch {
	case ef.ConfigMapRef != nil:
		name = ef.ConfigMapRef.Name
		optional = ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional
		cm, err := r.configMap(ctx, pod.Namespace, name)
		switch {
		case apierrors.IsNotFound(err) && optional:
			r.warn(pod, ReasonOptionalConfigMapNotFound, "configmap %q not found (optional, container %s)", name, c.Name)
			return nil
		case apierrors.IsNotFound(err):
			return r.configErr(pod, ReasonMandatoryConfigMapNotFound, "configmap %q not found", name)
		case err != nil:
			return fmt.Errorf("reading configmap %s/%s: %w", pod.Namespace, name, err)
		}
		data = cm.Data
	case ef.SecretRef != nil:
		name = ef.SecretRef.Name
		optional = ef.SecretRef.Optional != nil && *ef.SecretRef.Optional
		s, err := r.secret(ctx, pod.Namespace, name)
		switch {
		case apierrors.IsNotFound(err) && optional:
			r.warn(pod, ReasonOptionalSecretNotFound, "secret %q not found (optional, container %s)", name, c.Name)
			return nil
		case apierrors.IsNotFound(err):
			return r.configErr(pod, ReasonMandatorySecretNotFound, "secret %q not found", name)
		case err != nil:
			return fmt.Errorf("reading secret %s/%s: %w", pod.Namespace, name, err)
		}
		data = make(map[string]string, len(s.Data))
		for k, v := range s.Data {
			data[k] = string(v)
		}
	default:
		return nil
	}
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	// As kubelet (RelaxedEnvironmentVariableValidation, GA and locked since 1.34), every key
	// becomes a variable, prefixed: names like 1-data-1 or data.1 are kept, not skipped.
	for _, k := range keys {
		env.set(ef.Prefix+k, data[k])
	}
	return nil
}

// envValueFrom resolves one valueFrom; ok is false when an optional source is missing (the
// variable is then left out).
func (r *Resolver) envValueFrom(ctx context.Context, pod *corev1.Pod, c *corev1.Container, e corev1.EnvVar) (string, bool, error) {
	vf := e.ValueFrom
	switch {
	case vf.ConfigMapKeyRef != nil:
		ref := vf.ConfigMapKeyRef
		optional := ref.Optional != nil && *ref.Optional
		cm, err := r.configMap(ctx, pod.Namespace, ref.Name)
		switch {
		case apierrors.IsNotFound(err) && optional:
			r.warn(pod, ReasonOptionalConfigMapNotFound, "skipping optional envvar %q: configmap %q not found", e.Name, ref.Name)
			return "", false, nil
		case apierrors.IsNotFound(err):
			return "", false, r.configErr(pod, ReasonMandatoryConfigMapNotFound, "configmap %q not found", ref.Name)
		case err != nil:
			return "", false, fmt.Errorf("reading configmap %s/%s: %w", pod.Namespace, ref.Name, err)
		}
		if v, ok := cm.Data[ref.Key]; ok {
			return v, true, nil
		}
		if v, ok := cm.BinaryData[ref.Key]; ok {
			return string(v), true, nil
		}
		if optional {
			r.warn(pod, ReasonOptionalConfigMapKeyNotFound, "skipping optional envvar %q: key %q does not exist in configmap %q", e.Name, ref.Key, ref.Name)
			return "", false, nil
		}
		return "", false, r.configErr(pod, ReasonMandatoryConfigMapKeyNotFound, "couldn't find key %s in ConfigMap %s/%s", ref.Key, pod.Namespace, ref.Name)
	case vf.SecretKeyRef != nil:
		ref := vf.SecretKeyRef
		optional := ref.Optional != nil && *ref.Optional
		s, err := r.secret(ctx, pod.Namespace, ref.Name)
		switch {
		case apierrors.IsNotFound(err) && optional:
			r.warn(pod, ReasonOptionalSecretNotFound, "skipping optional envvar %q: secret %q not found", e.Name, ref.Name)
			return "", false, nil
		case apierrors.IsNotFound(err):
			return "", false, r.configErr(pod, ReasonMandatorySecretNotFound, "secret %q not found", ref.Name)
		case err != nil:
			return "", false, fmt.Errorf("reading secret %s/%s: %w", pod.Namespace, ref.Name, err)
		}
		if v, ok := s.Data[ref.Key]; ok {
			return string(v), true, nil
		}
		if optional {
			r.warn(pod, ReasonOptionalSecretKeyNotFound, "skipping optional envvar %q: key %q does not exist in secret %q", e.Name, ref.Key, ref.Name)
			return "", false, nil
		}
		return "", false, r.configErr(pod, ReasonMandatorySecretKeyNotFound, "couldn't find key %s in Secret %s/%s", ref.Key, pod.Namespace, ref.Name)
	case vf.FieldRef != nil:
		v, err := fieldValue(pod, vf.FieldRef.FieldPath)
		if err != nil {
			return "", false, &ConfigError{Reason: ReasonCreateContainerConfigError, Message: fmt.Sprintf("env %s of container %s: %v", e.Name, c.Name, err)}
		}
		return v, true, nil
	case vf.ResourceFieldRef != nil:
		v, err := r.resourceValue(pod, c.Name, vf.ResourceFieldRef)
		if err != nil {
			return "", false, &ConfigError{Reason: ReasonCreateContainerConfigError, Message: fmt.Sprintf("env %s of container %s: %v", e.Name, c.Name, err)}
		}
		return v, true, nil
	case vf.FileKeyRef != nil:
		return "", false, &ConfigError{Reason: ReasonCreateContainerConfigError, Message: fmt.Sprintf("env %s of container %s: fileKeyRef is not supported by kip", e.Name, c.Name)}
	}
	return "", false, nil
}

// addressFields are the downward-API field paths that read the pod's or its host's address.
var addressFields = map[string]bool{"status.podIP": true, "status.podIPs": true, "status.hostIP": true, "status.hostIPs": true}

// UsesAddresses reports whether a container or init container of the pod reads its
// addresses (status.podIP(s), status.hostIP(s)) into an env var: a request resolved before the
// pod's cell had an address must then be resolved again. Every other part of a request only
// carries the addresses in its pod's status, which the caller may set afterwards.
func UsesAddresses(pod *corev1.Pod) bool {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && addressFields[e.ValueFrom.FieldRef.FieldPath] {
					return true
				}
			}
		}
	}
	return false
}

// fieldValue reads a downward-API field path from the pod. status.podIP(s) are whatever the
// pod carries: the cell state machine fills them in once the cell has an address.
func fieldValue(pod *corev1.Pod, path string) (string, error) {
	if k, ok := subscript(path, "metadata.labels"); ok {
		return pod.Labels[k], nil
	}
	if k, ok := subscript(path, "metadata.annotations"); ok {
		return pod.Annotations[k], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	case "status.hostIPs":
		return joinIPs(pod.Status.HostIPs, pod.Status.HostIP), nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.podIPs":
		ips := make([]corev1.HostIP, 0, len(pod.Status.PodIPs))
		for _, ip := range pod.Status.PodIPs {
			ips = append(ips, corev1.HostIP(ip))
		}
		return joinIPs(ips, pod.Status.PodIP), nil
	}
	return "", fmt.Errorf("unsupported fieldRef.fieldPath %q", path)
}

func joinIPs(ips []corev1.HostIP, single string) string {
	if len(ips) == 0 {
		return single
	}
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.IP
	}
	return strings.Join(s, ",")
}

// subscript parses `prefix['key']`.
func subscript(path, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(path, prefix+"['")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "']")
}

// formatMap renders labels or annotations as a downward-API file does: key="value" lines in
// key order.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s=%s", k, strconv.Quote(m[k]))
	}
	return b.String()
}

// resourceValue resolves a resourceFieldRef against the named container: its limit (or the
// node's allocatable when unset) or request, divided by the divisor and rounded up.
func (r *Resolver) resourceValue(pod *corev1.Pod, container string, ref *corev1.ResourceFieldSelector) (string, error) {
	if ref.ContainerName != "" {
		container = ref.ContainerName
	}
	var c *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == container {
			c = &pod.Spec.Containers[i]
		}
	}
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == container {
			c = &pod.Spec.InitContainers[i]
		}
	}
	if c == nil {
		return "", fmt.Errorf("resourceFieldRef.containerName %q is not a container of the pod", container)
	}
	kind, res, ok := strings.Cut(ref.Resource, ".")
	if !ok {
		res, kind = ref.Resource, "limits"
	}
	var q resource.Quantity
	switch kind {
	case "limits":
		v, ok := c.Resources.Limits[corev1.ResourceName(res)]
		if !ok {
			v = r.cfg.NodeAllocatable[corev1.ResourceName(res)]
		}
		q = v
	case "requests":
		q = c.Resources.Requests[corev1.ResourceName(res)]
	default:
		return "", fmt.Errorf("unsupported resourceFieldRef.resource %q", ref.Resource)
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	switch res {
	case "cpu":
		return strconv.FormatInt(int64(math.Ceil(float64(q.MilliValue())/float64(divisor.MilliValue()))), 10), nil
	case "memory", "ephemeral-storage":
		return strconv.FormatInt(int64(math.Ceil(float64(q.Value())/float64(divisor.Value()))), 10), nil
	}
	if strings.HasPrefix(res, "hugepages-") {
		return strconv.FormatInt(int64(math.Ceil(float64(q.Value())/float64(divisor.Value()))), 10), nil
	}
	return "", fmt.Errorf("unsupported resourceFieldRef.resource %q", ref.Resource)
}

// serviceEnv builds the docker-link style variables kubelet gives every container: the
// services of the pod's namespace (when enableServiceLinks is not false) and always the
// API server's "kubernetes" service.
func (r *Resolver) serviceEnv(pod *corev1.Pod) (*envList, error) {
	env := newEnvList()
	if r.cfg.Services == nil {
		return env, nil
	}
	var svcs []*corev1.Service
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		list, err := r.cfg.Services.Services(pod.Namespace).List(labels.Everything())
		if err != nil {
			return nil, fmt.Errorf("listing services: %w", err)
		}
		svcs = append(svcs, list...)
	}
	if pod.Namespace != metav1NamespaceDefault || (pod.Spec.EnableServiceLinks != nil && !*pod.Spec.EnableServiceLinks) {
		if k, err := r.cfg.Services.Services(metav1NamespaceDefault).Get("kubernetes"); err == nil {
			svcs = append(svcs, k)
		} else if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("reading service default/kubernetes: %w", err)
		}
	}
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].Name < svcs[j].Name })
	for _, s := range svcs {
		ip := s.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone {
			continue
		}
		prefix := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
		if len(s.Spec.Ports) == 0 {
			continue
		}
		env.set(prefix+"_SERVICE_HOST", ip)
		env.set(prefix+"_SERVICE_PORT", strconv.Itoa(int(s.Spec.Ports[0].Port)))
		for _, p := range s.Spec.Ports {
			if p.Name != "" {
				env.set(prefix+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_")), strconv.Itoa(int(p.Port)))
			}
		}
		first := s.Spec.Ports[0]
		env.set(prefix+"_PORT", fmt.Sprintf("%s://%s", strings.ToLower(string(protocol(first))), net.JoinHostPort(ip, strconv.Itoa(int(first.Port)))))
		for _, p := range s.Spec.Ports {
			proto := string(protocol(p))
			base := fmt.Sprintf("%s_PORT_%d_%s", prefix, p.Port, strings.ToUpper(proto))
			env.set(base, fmt.Sprintf("%s://%s", strings.ToLower(proto), net.JoinHostPort(ip, strconv.Itoa(int(p.Port)))))
			env.set(base+"_PROTO", strings.ToLower(proto))
			env.set(base+"_PORT", strconv.Itoa(int(p.Port)))
			env.set(base+"_ADDR", ip)
		}
	}
	return env, nil
}

const metav1NamespaceDefault = "default"

func protocol(p corev1.ServicePort) corev1.Protocol {
	if p.Protocol == "" {
		return corev1.ProtocolTCP
	}
	return p.Protocol
}
