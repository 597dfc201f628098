package vnode

import (
	"context"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/informers"
	corev1informers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes"
)

// ResyncPeriod is the informers' full resync period (nodeutil.NewNode's default).
const ResyncPeriod = time.Minute

// Informers are the API server caches kip reads: the pods bound to the node, and every
// namespace's Secrets, ConfigMaps, Services and EndpointSlices. There is one watch per kind,
// shared by virtual-kubelet's pod controller (which Node runs), kip's pod resolver
// (internal/podrequest, which takes the listers) and the service table
// (internal/servicetable: Services and EndpointSlices).
type Informers struct {
	Pods           corev1informers.PodInformer
	Secrets        corev1informers.SecretInformer
	ConfigMaps     corev1informers.ConfigMapInformer
	Services       corev1informers.ServiceInformer
	EndpointSlices discoveryinformers.EndpointSliceInformer

	factories []informers.SharedInformerFactory
}

// NewInformers makes the informers; nothing is watched until Start. Pods are filtered to
// spec.nodeName=nodeName.
func NewInformers(client kubernetes.Interface, nodeName string) *Informers {
	strip := informers.WithTransform(stripManagedFields)
	pods := informers.NewSharedInformerFactoryWithOptions(client, ResyncPeriod, nodeutil.PodInformerFilter(nodeName), strip)
	all := informers.NewSharedInformerFactoryWithOptions(client, ResyncPeriod, strip)
	inf := &Informers{
		Pods:           pods.Core().V1().Pods(),
		Secrets:        all.Core().V1().Secrets(),
		ConfigMaps:     all.Core().V1().ConfigMaps(),
		Services:       all.Core().V1().Services(),
		EndpointSlices: all.Discovery().V1().EndpointSlices(),
		factories:      []informers.SharedInformerFactory{pods, all},
	}
	// A factory starts only the informers asked for before Start: ask for all five now.
	inf.Pods.Informer()
	inf.Secrets.Informer()
	inf.ConfigMaps.Informer()
	inf.Services.Informer()
	inf.EndpointSlices.Informer()
	return inf
}

// stripManagedFields drops metadata.managedFields from every cached object: nothing in kip
// reads them, they are about a third of a small pod, and each pod is copied several times
// (docs/design/scale.md). An update that carries none leaves the server's as they are.
func stripManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil && m.GetManagedFields() != nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// Start starts watching; the informers stop when ctx ends. Starting again does nothing.
func (i *Informers) Start(ctx context.Context) {
	for _, f := range i.factories {
		f.Start(ctx.Done())
	}
}

// HasSynced reports whether the Secret, ConfigMap and Service caches hold the API server's
// state as of their first list (podrequest.Config.Synced). The pod cache is the pod
// controller's to wait for.
func (i *Informers) HasSynced() bool {
	return i.Secrets.Informer().HasSynced() && i.ConfigMaps.Informer().HasSynced() && i.Services.Informer().HasSynced()
}
