// Package clusterdns runs the cluster's DNS the way a cluster's own addon does: CoreDNS,
// built from its Go module (hack/tools/coredns) with only the plugins cluster DNS needs,
// packaged as an OCI image, pushed to a registry, and deployed as Deployment
// kube-system/coredns behind Service kube-system/kube-dns with a fixed cluster IP. kip up
// runs it on Kip's own node (as EKS Fargate runs CoreDNS on Fargate) and points kip's
// clusterDNS at that IP.
package clusterdns

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/template"

	"github.com/google/go-containerregistry/pkg/authn"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/registry"
)

// Defaults of an install.
const (
	// ServiceIP is kube-dns's cluster IP: the tenth address of the service range kip up's
	// control plane uses (internal/controlplane.ServiceCIDR), as on kubeadm clusters.
	ServiceIP = "10.0.0.10"
	Namespace = "kube-system"
	// Domain is the default cluster domain.
	Domain = "cluster.local"
	// Repo is the image's repository in the registry.
	Repo = "kip/coredns"
	// fieldManager owns what Apply writes (server-side apply).
	fieldManager = "kip-clusterdns"
)

//go:embed coredns.yaml
var manifest string

// CorefileOptions shape the Corefile. The zero value is the in-cluster one.
type CorefileOptions struct {
	// Domain is the cluster domain; default "cluster.local".
	Domain string
	// Port CoreDNS serves DNS on; default 53.
	Port int
	// Kubeconfig, when set, is the kubeconfig the kubernetes plugin uses instead of the
	// in-cluster service account (for running CoreDNS outside the cluster).
	Kubeconfig string
	// HealthAddr, ReadyAddr and MetricsAddr default to :8080, :8181 and :9153.
	HealthAddr, ReadyAddr, MetricsAddr string
}

// Corefile is an ordinary cluster DNS configuration: the kubernetes plugin answers the cluster
// domain and reverse zones (pods insecure: A records for pod IPs as kube-dns did), the rest is
// forwarded to the resolvers of CoreDNS's own resolv.conf, with caching, health, readiness,
// metrics, loop detection, live reload of the ConfigMap and A/AAAA round-robin.
func Corefile(o CorefileOptions) string {
	if o.Domain == "" {
		o.Domain = Domain
	}
	if o.Port == 0 {
		o.Port = 53
	}
	def := func(s, d string) string {
		if s == "" {
			return d
		}
		return s
	}
	var kubeconfig string
	if o.Kubeconfig != "" {
		kubeconfig = fmt.Sprintf("\n        kubeconfig %s", o.Kubeconfig)
	}
	return fmt.Sprintf(`.:%d {
    errors
    health %s {
        lameduck 5s
    }
    ready %s
    kubernetes %s in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30%s
    }
    prometheus %s
    forward . /etc/resolv.conf {
        max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
`, o.Port, def(o.HealthAddr, ":8080"), def(o.ReadyAddr, ":8181"), o.Domain, kubeconfig, def(o.MetricsAddr, ":9153"))
}

// Options describe one install.
type Options struct {
	// Image is the CoreDNS image reference the Deployment runs (required).
	Image string
	// Domain is the cluster domain; default "cluster.local".
	Domain string
	// ServiceIP is kube-dns's cluster IP; default ServiceIP.
	ServiceIP string
}

// Objects returns the install's objects in apply order: ServiceAccount, ClusterRole,
// ClusterRoleBinding, ConfigMap (the Corefile), Deployment and Service.
func Objects(o Options) ([]runtime.Object, error) {
	if o.Image == "" {
		return nil, errors.New("clusterdns: Options.Image is required")
	}
	if o.ServiceIP == "" {
		o.ServiceIP = ServiceIP
	}
	var buf bytes.Buffer
	t := template.Must(template.New("coredns.yaml").Option("missingkey=error").Parse(manifest))
	if err := t.Execute(&buf, map[string]string{"Namespace": Namespace, "Image": o.Image, "ServiceIP": o.ServiceIP}); err != nil {
		return nil, fmt.Errorf("rendering the CoreDNS manifest: %w", err)
	}
	dec := scheme.Codecs.UniversalDeserializer()
	var objs []runtime.Object
	r := utilyaml.NewYAMLReader(bufio.NewReader(&buf))
	for {
		doc, err := r.Read()
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("reading the CoreDNS manifest: %w", err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, gvk, err := dec.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("decoding the CoreDNS manifest: %w", err)
		}
		obj.GetObjectKind().SetGroupVersionKind(*gvk)
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			cm.Data = map[string]string{"Corefile": Corefile(CorefileOptions{Domain: o.Domain})}
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

func stripComments(doc []byte) []byte {
	var out []string
	for _, l := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return []byte(strings.Join(out, "\n"))
}

// Apply creates or updates the objects with server-side apply, in order.
func Apply(ctx context.Context, c kubernetes.Interface, objs []runtime.Object) error {
	opts := metav1.PatchOptions{FieldManager: fieldManager, Force: ptr.To(true)}
	for _, obj := range objs {
		data, err := json.Marshal(obj)
		if err != nil {
			return fmt.Errorf("applying CoreDNS: %w", err)
		}
		m := obj.(metav1.Object)
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			_, err = c.CoreV1().ServiceAccounts(o.Namespace).Patch(ctx, o.Name, types.ApplyPatchType, data, opts)
		case *rbacv1.ClusterRole:
			_, err = c.RbacV1().ClusterRoles().Patch(ctx, o.Name, types.ApplyPatchType, data, opts)
		case *rbacv1.ClusterRoleBinding:
			_, err = c.RbacV1().ClusterRoleBindings().Patch(ctx, o.Name, types.ApplyPatchType, data, opts)
		case *corev1.ConfigMap:
			_, err = c.CoreV1().ConfigMaps(o.Namespace).Patch(ctx, o.Name, types.ApplyPatchType, data, opts)
		case *appsv1.Deployment:
			_, err = c.AppsV1().Deployments(o.Namespace).Patch(ctx, o.Name, types.ApplyPatchType, data, opts)
		case *corev1.Service:
			_, err = c.CoreV1().Services(o.Namespace).Patch(ctx, o.Name, types.ApplyPatchType, data, opts)
		default:
			err = fmt.Errorf("unexpected kind %T", obj)
		}
		if err != nil {
			return fmt.Errorf("applying CoreDNS %s %s: %w", obj.GetObjectKind().GroupVersionKind().Kind, m.GetName(), err)
		}
	}
	return nil
}

// Delete removes the objects, in reverse order; absent ones are skipped.
func Delete(ctx context.Context, c kubernetes.Interface, objs []runtime.Object) error {
	var errs []error
	fg := metav1.DeletePropagationForeground
	opts := metav1.DeleteOptions{PropagationPolicy: &fg}
	for i := len(objs) - 1; i >= 0; i-- {
		var err error
		switch o := objs[i].(type) {
		case *corev1.ServiceAccount:
			err = c.CoreV1().ServiceAccounts(o.Namespace).Delete(ctx, o.Name, opts)
		case *rbacv1.ClusterRole:
			err = c.RbacV1().ClusterRoles().Delete(ctx, o.Name, opts)
		case *rbacv1.ClusterRoleBinding:
			err = c.RbacV1().ClusterRoleBindings().Delete(ctx, o.Name, opts)
		case *corev1.ConfigMap:
			err = c.CoreV1().ConfigMaps(o.Namespace).Delete(ctx, o.Name, opts)
		case *appsv1.Deployment:
			err = c.AppsV1().Deployments(o.Namespace).Delete(ctx, o.Name, opts)
		case *corev1.Service:
			err = c.CoreV1().Services(o.Namespace).Delete(ctx, o.Name, opts)
		}
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting CoreDNS %s: %w", objs[i].(metav1.Object).GetName(), err))
		}
	}
	return errors.Join(errs...)
}

// DeployOptions describe Deploy.
type DeployOptions struct {
	Build BuildOptions
	// Registry (host:port, plain HTTP) receives the image, and cells pull it from there.
	Registry string
	// RegistryAuth authenticates the push (the registry's Auth()); nil pushes anonymously.
	RegistryAuth authn.Authenticator
	// Domain and ServiceIP as in Options.
	Domain, ServiceIP string
}

// Deploy builds (or reuses) the CoreDNS binary, pushes its image to the registry and applies
// the install. It returns the applied objects (for Delete) and does not wait for readiness.
func Deploy(ctx context.Context, c kubernetes.Interface, o DeployOptions) ([]runtime.Object, error) {
	bin, err := Binary(ctx, o.Build)
	if err != nil {
		return nil, err
	}
	img, err := Image(bin)
	if err != nil {
		return nil, err
	}
	digest, err := registry.Push(ctx, o.Registry, Repo+":latest", img, o.RegistryAuth)
	if err != nil {
		return nil, fmt.Errorf("pushing the CoreDNS image: %w", err)
	}
	objs, err := Objects(Options{Image: o.Registry + "/" + Repo + "@" + digest, Domain: o.Domain, ServiceIP: o.ServiceIP})
	if err != nil {
		return nil, err
	}
	if err := Apply(ctx, c, objs); err != nil {
		return nil, err
	}
	return objs, nil
}
