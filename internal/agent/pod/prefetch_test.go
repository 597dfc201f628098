package pod

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/agent/image"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cgroups"
)

// TestPrefetchChoosesFirstContainers: Start fetches the images of the containers that start
// first (the first init container's, else every app container's), once per image, skipping
// Never and IfNotPresent images the cell has.
func TestPrefetchChoosesFirstContainers(t *testing.T) {
	ctr := func(name, img string, policy corev1.PullPolicy) corev1.Container {
		return corev1.Container{Name: name, Image: img, ImagePullPolicy: policy}
	}
	for _, tc := range []struct {
		name       string
		init, apps []corev1.Container
		have       []string // images Lookup finds
		wantCtrs   []string // containers with a prefetch
		wantPulls  int
	}{
		{
			name:     "apps",
			apps:     []corev1.Container{ctr("a", "img-a", corev1.PullAlways), ctr("b", "img-b", corev1.PullAlways)},
			wantCtrs: []string{"a", "b"}, wantPulls: 2,
		},
		{
			name:     "first init container only",
			init:     []corev1.Container{ctr("i1", "img-i1", corev1.PullAlways), ctr("i2", "img-i2", corev1.PullAlways)},
			apps:     []corev1.Container{ctr("a", "img-a", corev1.PullAlways)},
			wantCtrs: []string{"i1"}, wantPulls: 1,
		},
		{
			name:     "one pull per image",
			apps:     []corev1.Container{ctr("a", "same", corev1.PullAlways), ctr("b", "same", corev1.PullAlways)},
			wantCtrs: []string{"a", "b"}, wantPulls: 1,
		},
		{
			name: "never and present if-not-present",
			apps: []corev1.Container{ctr("n", "img-n", corev1.PullNever), ctr("p", "img-p", corev1.PullIfNotPresent),
				ctr("q", "img-q", corev1.PullIfNotPresent)},
			have:     []string{"img-p"},
			wantCtrs: []string{"q"}, wantPulls: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			images := &fakeImages{}
			for _, ref := range tc.have {
				if _, err := images.Pull(context.Background(), ref, nil); err != nil {
					t.Fatal(err)
				}
			}
			before := images.pulls
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: "u1"}, Spec: corev1.PodSpec{InitContainers: tc.init, Containers: tc.apps}}
			got := startPrefetches(context.Background(), images, &cellapi.PodRequest{Pod: p})
			var names []string
			for name, f := range got {
				<-f.done
				if f.err != nil || f.img == nil {
					t.Errorf("prefetch of %s: %v", name, f.err)
				}
				names = append(names, name)
			}
			slices.Sort(names)
			if !slices.Equal(names, tc.wantCtrs) {
				t.Errorf("prefetched for %v, want %v", names, tc.wantCtrs)
			}
			images.mu.Lock()
			defer images.mu.Unlock()
			if n := images.pulls - before; n != tc.wantPulls {
				t.Errorf("%d pulls, want %d", n, tc.wantPulls)
			}
		})
	}
}

// pullSignal is fakeImages that closes began when a pull begins.
type pullSignal struct {
	fakeImages
	once  sync.Once
	began chan struct{}
}

func (p *pullSignal) Pull(ctx context.Context, ref string, auths []cellapi.RegistryAuth) (*image.Image, error) {
	p.once.Do(func() { close(p.began) })
	return p.fakeImages.Pull(ctx, ref, auths)
}

// waitPullCgroups is fakeCgroups whose Ceiling (read while the pod is prepared) waits for
// a pull to have begun.
type waitPullCgroups struct {
	fakeCgroups
	began chan struct{}
}

func (w waitPullCgroups) Ceiling(string) (cgroups.Ceiling, error) {
	select {
	case <-w.began:
		return cgroups.Ceiling{}, nil
	case <-time.After(10 * time.Second):
		return cgroups.Ceiling{}, errors.New("no image pull began while the pod was prepared")
	}
}

// TestPrefetchOverlapsPreparation: the image pull begins before the pod's preparation ends
// (here, preparation waits for it), and the container runs the prefetched image without
// pulling again.
func TestPrefetchOverlapsPreparation(t *testing.T) {
	began := make(chan struct{})
	images := &pullSignal{began: began}
	rt := newFakeRuntime()
	p, err := Start(Config{
		Dir: filepath.Join(t.TempDir(), "pod"), Runtime: rt, Images: images, Cgroups: waitPullCgroups{began: began},
		CgroupParent: "kip", NewLog: func(string) (LogWriter, error) { return discardLog{}, nil },
	}, &cellapi.PodRequest{Pod: testPod(corev1.RestartPolicyAlways, "app")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(context.Background(), 0) })
	select {
	case <-rt.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the container did not start")
	}
	images.mu.Lock()
	defer images.mu.Unlock()
	if images.pulls != 1 {
		t.Errorf("%d pulls, want the prefetch alone", images.pulls)
	}
}
