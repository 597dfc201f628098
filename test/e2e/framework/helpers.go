package framework

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/cloud"
)

// Kubectl runs the kubectl built with the control plane against it and returns its stdout;
// the error carries stderr.
func (e *Env) Kubectl(ctx context.Context, args ...string) (string, error) {
	return e.KubectlStdin(ctx, nil, args...)
}

// KubectlStdin is Kubectl with data on stdin (for `apply -f -`).
func (e *Env) KubectlStdin(ctx context.Context, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, e.CP.Kubectl(), append([]string{"--kubeconfig", e.CP.AdminKubeconfig()}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Namespace creates a namespace for t and deletes it (and waits for its pods to be gone) when
// t ends.
func (e *Env) Namespace(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	ns, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	name := ns.Name
	t.Cleanup(func() {
		err := e.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace %s: %v", name, err)
		}
	})
	return name
}

// Pod returns a pod for Kip's virtual node: its nodeSelector and toleration, restartPolicy
// Never, and the given containers.
func Pod(name string, containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeSelector:  map[string]string{"type": "virtual-kubelet"},
			Tolerations:   []corev1.Toleration{KipToleration},
			RestartPolicy: corev1.RestartPolicyNever,
			Containers:    containers,
		},
	}
}

// KipToleration tolerates the virtual node's default taint.
var KipToleration = corev1.Toleration{
	Key: "virtual-kubelet.io/provider", Operator: corev1.TolerationOpEqual, Value: "kip", Effect: corev1.TaintEffectNoSchedule,
}

// Busybox returns a busybox container running sh -c script.
func Busybox(name, script string) corev1.Container {
	return corev1.Container{Name: name, Image: "busybox", Command: []string{"sh", "-c", script}}
}

// CheckNoLeaks fails t if a cell is still alive in this environment once every pod is gone,
// or if a network namespace or cgroup of a terminated cell is left on the host. It waits (up
// to timeout) for cells of deleted pods to finish terminating.
func (e *Env) CheckNoLeaks(t testing.TB, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	cells, err := e.WaitForCells(ctx, nil, timeout, func(c []*cloud.Instance) bool { return len(c) == 0 })
	if err != nil {
		t.Errorf("cells left behind: %v", err)
		for _, c := range cells {
			t.Logf("leaked cell %s: tags %v", c.ID, c.Tags)
		}
	}
	// Every cell directory in the state dir belongs to a live cell; a terminated one leaves
	// none behind.
	entries, _ := os.ReadDir(filepath.Join(e.Dir, "cells", "cells"))
	if len(cells) == 0 && len(entries) > 0 {
		var names []string
		for _, en := range entries {
			names = append(names, en.Name())
		}
		t.Errorf("cell state directories left behind: %v", names)
	}
	// The network namespace of every cell the tests saw (the local backend names it
	// kip-<instance id>) must be gone with its cell.
	seen := e.SeenCells()
	for _, id := range seen {
		if _, err := os.Stat(filepath.Join("/run/netns", "kip-"+id)); err == nil {
			t.Errorf("network namespace kip-%s left behind", id)
		}
	}
	t.Logf("checked the %d cells seen during the run for leftovers", len(seen))
}
