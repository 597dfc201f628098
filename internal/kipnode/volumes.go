package kipnode

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/cache"

	"github.com/kip-dev/kip/internal/controllers/volpush"
	"github.com/kip-dev/kip/internal/vnode"
)

// watchVolumeSources tells the volume controller about every change of a ConfigMap or Secret
// (added, updated, deleted) and of a pod's labels or annotations, from the shared informers.
func watchVolumeSources(inf *vnode.Informers, c *volpush.Controller) error {
	object := func(kind string) cache.ResourceEventHandler {
		changed := func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if m, err := meta.Accessor(obj); err == nil {
				c.ObjectChanged(kind, m.GetNamespace(), m.GetName())
			}
		}
		return cache.ResourceEventHandlerFuncs{
			AddFunc: changed,
			UpdateFunc: func(old, cur any) {
				mo, err1 := meta.Accessor(old)
				mc, err2 := meta.Accessor(cur)
				if err1 == nil && err2 == nil && mo.GetResourceVersion() == mc.GetResourceVersion() {
					return // a periodic resync, not a change
				}
				changed(cur)
			},
			DeleteFunc: changed,
		}
	}
	if _, err := inf.ConfigMaps.Informer().AddEventHandler(object("ConfigMap")); err != nil {
		return fmt.Errorf("watching ConfigMaps for volumes: %w", err)
	}
	if _, err := inf.Secrets.Informer().AddEventHandler(object("Secret")); err != nil {
		return fmt.Errorf("watching Secrets for volumes: %w", err)
	}
	if _, err := inf.Pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Pod)
			n, ok2 := cur.(*corev1.Pod)
			if ok1 && ok2 {
				c.PodMetaChanged(o, n)
			}
		},
	}); err != nil {
		return fmt.Errorf("watching pod metadata for volumes: %w", err)
	}
	return nil
}
