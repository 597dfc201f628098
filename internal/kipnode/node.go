package kipnode

import (
	"runtime"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/config"
)

// nodeSpec is the Node kip registers: kubelet's well-known labels, the configured taints,
// capacity (= allocatable), the InternalIP and the kubelet endpoint.
func nodeSpec(cfg *config.ProviderConfig, ip string) *corev1.Node {
	n := cfg.Node
	lbls := map[string]string{
		"type":                   "virtual-kubelet",
		"kubernetes.io/role":     "agent",
		"kubernetes.io/hostname": n.Name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     runtime.GOARCH,
		"kip.dev/provider":       cfg.Cloud.Provider,
	}
	for k, v := range n.Labels {
		lbls[k] = v
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    n.Capacity.CPU.Quantity.DeepCopy(),
		corev1.ResourceMemory: n.Capacity.Memory.Quantity.DeepCopy(),
		corev1.ResourcePods:   n.Capacity.Pods.Quantity.DeepCopy(),
	}
	if !n.Capacity.GPU.Quantity.IsZero() {
		capacity["nvidia.com/gpu"] = n.Capacity.GPU.Quantity.DeepCopy()
	}
	if !n.Capacity.AMDGPU.Quantity.IsZero() {
		capacity["amd.com/gpu"] = n.Capacity.AMDGPU.Quantity.DeepCopy()
	}
	capacity[corev1.ResourceEphemeralStorage] = resource.MustParse("1Ti")
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: lbls},
		Spec:       corev1.NodeSpec{Taints: append([]corev1.Taint(nil), n.Taints...)},
		Status: corev1.NodeStatus{
			Phase:       corev1.NodePending,
			Capacity:    capacity,
			Allocatable: capacity.DeepCopy(),
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: ip},
				{Type: corev1.NodeHostName, Address: n.Name},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(n.KubeletPort)}},
			NodeInfo: corev1.NodeSystemInfo{
				OperatingSystem: "linux",
				Architecture:    runtime.GOARCH,
				KubeletVersion:  "v1.37.2-kip-" + strings.TrimPrefix(Version, "v"),
				KernelVersion:   "",
				OSImage:         "kip cells (" + cfg.Cloud.Provider + ")",
			},
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KipStarting", Message: "kip is starting"},
				{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KipHasSufficientMemory", Message: "each pod runs on its own cell"},
				{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KipHasNoDiskPressure", Message: "each pod runs on its own cell"},
				{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KipHasSufficientPID", Message: "each pod runs on its own cell"},
				{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: "KipNetworkReady", Message: "cells are reachable"},
			},
		},
	}
}
