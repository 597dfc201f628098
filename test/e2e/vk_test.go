//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	vke2e "github.com/virtual-kubelet/virtual-kubelet/test/e2e"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/utils/ptr"
)

// vkSkipEnv lists (comma-separated) tests of virtual-kubelet's suite to skip by name; empty
// by default: all 9 run.
const vkSkipEnv = "KIP_VKE2E_SKIP"

// TestVirtualKubeletSuite runs virtual-kubelet's own end-to-end suite against kip's node. Its
// unqualified images (nginx, foo, bar, baz) come from the seeded registry through kip's
// defaultRegistry setting. Its two stats tests reach /stats/summary and /metrics/resource
// through a *pod* proxy to a pod named after the node; a placeholder pod of that name, never
// scheduled, whose status.podIP is kip's address (the bridge IP) makes the apiserver proxy
// there.
func TestVirtualKubeletSuite(t *testing.T) {
	e := need(t)
	ns := e.Namespace(t)
	skip := map[string]bool{}
	for _, n := range strings.Split(os.Getenv(vkSkipEnv), ",") {
		if n = strings.TrimSpace(n); n != "" {
			skip[n] = true
		}
	}
	suite := vke2e.NewEndToEndTestSuite(vke2e.EndToEndTestSuiteConfig{
		Kubeconfig:   e.CP.AdminKubeconfig(),
		Namespace:    ns,
		NodeName:     e.NodeName,
		WatchTimeout: 3 * time.Minute,
		Setup: func() error {
			if err := grantAnonymousStats(e.Client, t); err != nil {
				return err
			}
			return placeholderPod(e.Client.CoreV1(), ns, e.NodeName, e.BridgeIP.String())
		},
		Teardown: func() error {
			err := e.Client.CoreV1().Pods(ns).Delete(context.Background(), e.NodeName, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
			if err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("deleting placeholder pod: %w", err)
			}
			return nil
		},
		ShouldSkipTest: func(name string) bool {
			if skip[name] {
				t.Logf("skipping %s (listed in %s)", name, vkSkipEnv)
			}
			return skip[name]
		},
	})
	suite.Run(t)
}

// placeholderPod creates pod ns/name that no scheduler ever binds (its schedulerName names
// none) and sets its status.podIP to ip, so that the apiserver's pod proxy for it reaches ip.
func placeholderPod(c corev1client.CoreV1Interface, ns, name, ip string) error {
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kip.dev/placeholder": "true"}},
		Spec: corev1.PodSpec{
			SchedulerName: "kip-placeholder-never-scheduled",
			Containers:    []corev1.Container{{Name: "placeholder", Image: "busybox"}},
		},
	}
	created, err := c.Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating placeholder pod: %w", err)
	}
	created.Status.PodIP = ip
	created.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	if _, err := c.Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting placeholder pod IP: %w", err)
	}
	return nil
}

// grantAnonymousStats lets system:anonymous read the node's stats and metrics (what the pod
// proxy of the stats tests arrives as) until t ends.
func grantAnonymousStats(c kubernetes.Interface, t *testing.T) error {
	ctx := context.Background()
	name := "kip-e2e-anonymous-stats"
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/stats", "nodes/metrics"}, Verbs: []string{"get"}}},
	}
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating %s role: %w", name, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "system:anonymous"}},
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating %s binding: %w", name, err)
	}
	t.Cleanup(func() {
		_ = c.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		_ = c.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return nil
}
