package annotations

import (
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func podWith(ann map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a", Annotations: ann}}
}

func TestParse(t *testing.T) {
	spot, onDemand := true, false
	tests := []struct {
		name    string
		ann     map[string]string
		want    Pod
		wantErr string
	}{
		{"none", nil, Pod{}, ""},
		{"all", map[string]string{
			"pod.kip.dev/security-groups":             "sg-1, sg-2",
			"pod.kip.dev/instance-profile":            "arn:aws:iam::1:instance-profile/x",
			"pod.kip.dev/volume-size":                 "20Gi",
			"pod.kip.dev/private-ip-only":             "true",
			"pod.kip.dev/healthcheck-healthy-timeout": "2m",
		}, Pod{SecurityGroups: []string{"sg-1", "sg-2"}, InstanceProfile: "arn:aws:iam::1:instance-profile/x", VolumeSizeGiB: 20, PrivateIPOnly: true, HealthyTimeout: 2 * time.Minute}, ""},
		{"legacy names, seconds, rounding up", map[string]string{
			"pod.elotl.co/healthcheck-healthy-timeout": "120",
			"pod.elotl.co/volume-size":                 "10G",
		}, Pod{HealthyTimeout: 2 * time.Minute, VolumeSizeGiB: 10}, ""},
		{"bad bool", map[string]string{"pod.kip.dev/private-ip-only": "yes please"}, Pod{}, "pod.kip.dev/private-ip-only"},
		{"bad size", map[string]string{"pod.kip.dev/volume-size": "-1Gi"}, Pod{}, "pod.kip.dev/volume-size"},
		{"empty group", map[string]string{"pod.kip.dev/security-groups": "sg-1,,sg-2"}, Pod{}, "pod.kip.dev/security-groups"},
		{"zero timeout", map[string]string{"pod.kip.dev/healthcheck-healthy-timeout": "0s"}, Pod{}, "pod.kip.dev/healthcheck-healthy-timeout"},
		{"bad legacy timeout", map[string]string{"pod.elotl.co/healthcheck-healthy-timeout": "soon"}, Pod{}, `annotation pod.elotl.co/healthcheck-healthy-timeout="soon": not a duration`},
		{"lost timeout", map[string]string{"pod.kip.dev/lost-timeout": "45s"}, Pod{LostTimeout: 45 * time.Second}, ""},
		{"lost timeout in seconds", map[string]string{"pod.kip.dev/lost-timeout": "10"}, Pod{LostTimeout: 10 * time.Second}, ""},
		{"bad lost timeout", map[string]string{"pod.kip.dev/lost-timeout": "forever"}, Pod{}, `annotation pod.kip.dev/lost-timeout="forever": not a duration`},
		{"negative lost timeout", map[string]string{"pod.kip.dev/lost-timeout": "-5s"}, Pod{}, `annotation pod.kip.dev/lost-timeout="-5s": must be positive`},
		{"profile with a space", map[string]string{"pod.kip.dev/instance-profile": "my profile"}, Pod{}, "pod.kip.dev/instance-profile"},

		// One rule set for every annotation: trimmed, empty is unset, both spellings must agree.
		{"values are trimmed", map[string]string{
			"pod.kip.dev/instance-profile": " prof ",
			"pod.kip.dev/private-ip-only":  "true\n",
		}, Pod{InstanceProfile: "prof", PrivateIPOnly: true}, ""},
		{"blank counts as unset", map[string]string{
			"pod.kip.dev/volume-size":      "",
			"pod.kip.dev/instance-profile": "  ",
			"pod.kip.dev/instance-type":    "  ",
			"pod.kip.dev/launch-type":      "",
		}, Pod{}, ""},
		{"blank kip spelling leaves the legacy one", map[string]string{
			"pod.kip.dev/private-ip-only":  " ",
			"pod.elotl.co/private-ip-only": "true",
		}, Pod{PrivateIPOnly: true}, ""},
		{"both spellings agreeing", map[string]string{
			"pod.kip.dev/volume-size":  "20Gi",
			"pod.elotl.co/volume-size": " 20Gi",
		}, Pod{VolumeSizeGiB: 20}, ""},
		{"both spellings disagreeing", map[string]string{
			"pod.elotl.co/private-ip-only": "false",
			"pod.kip.dev/private-ip-only":  "true",
		}, Pod{}, `annotation pod.kip.dev/private-ip-only="true": conflicts with pod.elotl.co/private-ip-only="false"`},

		// The selector's annotations.
		{"exact instance type", map[string]string{"pod.kip.dev/instance-type": "m5.large"},
			Pod{InstanceType: "m5.large", InstanceTypeFrom: "pod.kip.dev/instance-type"}, ""},
		{"legacy glob", map[string]string{"pod.elotl.co/instance-type": "c5*"},
			Pod{InstanceType: "c5*", InstanceTypeGlob: true, InstanceTypeFrom: "pod.elotl.co/instance-type"}, ""},
		{"bad glob", map[string]string{"pod.elotl.co/instance-type": "c5["}, Pod{}, `annotation pod.elotl.co/instance-type="c5[": bad glob`},
		{"spot", map[string]string{"pod.kip.dev/launch-type": "spot"}, Pod{Spot: &spot}, ""},
		{"on-demand, any case", map[string]string{"pod.elotl.co/launch-type": "On-Demand"}, Pod{Spot: &onDemand}, ""},
		{"bad launch type", map[string]string{"pod.kip.dev/launch-type": "cheap"}, Pod{}, `annotation pod.kip.dev/launch-type="cheap": must be spot or on-demand`},
		{"dedicated", map[string]string{"pod.elotl.co/launch-type": "dedicated"}, Pod{}, "dedicated hosts are not supported"},
		{"conflicting instance types", map[string]string{
			"pod.kip.dev/instance-type":  "c5.large",
			"pod.elotl.co/instance-type": "m5.large",
		}, Pod{}, `annotation pod.kip.dev/instance-type="c5.large": conflicts with pod.elotl.co/instance-type="m5.large"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(podWith(tt.ann))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one saying %s", err, tt.wantErr)
				}
				if !IsInvalid(err) {
					t.Errorf("error %v is not an *Error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
