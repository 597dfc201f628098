package pod

import (
	"context"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/agent/image"
	"github.com/kip-dev/kip/internal/cellapi"
)

// prefetch is the first pull of one image, started by Start before it prepares the pod
// (files, volumes, the sandbox), so that fetching the manifest and unpacking overlap with
// that work. The containers whose first pull it is wait for it instead of pulling.
type prefetch struct {
	done chan struct{}
	img  *image.Image
	err  error
}

// startPrefetches pulls, in the background, the images of the containers that start first:
// the first init container's, or every app container's when there are none (they start
// together), as kubelet would pull them right away. Containers with imagePullPolicy Never
// are left out, and IfNotPresent ones whose image the cell has. The pulls end with ctx.
func startPrefetches(ctx context.Context, images Images, req *cellapi.PodRequest) map[string]*prefetch {
	spec := &req.Pod.Spec
	first := spec.Containers
	if len(spec.InitContainers) > 0 {
		first = spec.InitContainers[:1]
	}
	out := map[string]*prefetch{} // by container name
	byRef := map[string]*prefetch{}
	for i := range first {
		c := &first[i]
		if c.ImagePullPolicy == corev1.PullNever {
			continue
		}
		if f := byRef[c.Image]; f != nil {
			out[c.Name] = f
			continue
		}
		if c.ImagePullPolicy == corev1.PullIfNotPresent {
			if _, ok := images.Lookup(c.Image); ok {
				continue
			}
		}
		f := &prefetch{done: make(chan struct{})}
		out[c.Name], byRef[c.Image] = f, f
		go func(ref string) {
			defer close(f.done)
			f.img, f.err = images.Pull(ctx, ref, req.PullSecrets)
		}(c.Image)
	}
	return out
}

// takePrefetch returns the prefetched first pull of c's image, once; nil when there is none
// (c pulls itself).
func (p *Pod) takePrefetch(c *ctr) *prefetch {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.prefetched[c.spec.Name]
	delete(p.prefetched, c.spec.Name)
	return f
}
