package annotations

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

var keys = []string{InstanceType, LaunchType, SecurityGroups, InstanceProfile, VolumeSize, PrivateIPOnly, HealthyTimeout}

func legacyOf(key string) string { return LegacyPrefix + strings.TrimPrefix(key, Prefix) }

// FuzzParse reads any values of the seven annotations. Properties: no panic; an error is an
// *Error naming one of the annotations with its (trimmed) value and a reason; a parsed value
// means what it says (a volume size of at least the quantity, a timeout of exactly the seconds
// given, no empty security group); the values under the original pod.elotl.co/ names, or under
// both names at once, give the same result.
func FuzzParse(f *testing.F) {
	f.Add("c5.large", "spot", "sg-1,sg-2", "arn:aws:iam::1:instance-profile/x", "20Gi", "true", "120s")
	f.Add("c5*", "on-demand", "", "", "1", "false", "90")
	f.Add("[", "dedicated", "sg-1,,sg-2", "a b", "-1Gi", "maybe", "0")
	f.Add("", "ONDEMAND", " sg-1 ", "", "8Ei", "", "99999999999")
	f.Add("t3.*", "", "sg 1", "", "0.5", "1", "-5s")
	f.Fuzz(func(t *testing.T, it, lt, sg, ip, vs, pio, ht string) {
		values := []string{it, lt, sg, ip, vs, pio, ht}
		kip, legacy, both := map[string]string{}, map[string]string{}, map[string]string{}
		for i, k := range keys {
			kip[k] = values[i]
			legacy[legacyOf(k)] = values[i]
			both[k], both[legacyOf(k)] = values[i], values[i]
		}
		p, err := Parse(&corev1.Pod{})
		if err != nil || !reflect.DeepEqual(p, Pod{}) {
			t.Fatalf("a pod without annotations parses to %+v, %v", p, err)
		}
		got, err := Parse(podWith(kip))
		check(t, kip, got, err)

		lgot, lerr := Parse(podWith(legacy))
		check(t, legacy, lgot, lerr)
		if (err == nil) != (lerr == nil) {
			t.Fatalf("kip names: %v; legacy names: %v", err, lerr)
		}
		if err != nil {
			var e, le *Error
			errors.As(err, &e)
			errors.As(lerr, &le)
			if legacyOf(e.Annotation) != le.Annotation || e.Reason != le.Reason {
				t.Fatalf("kip names: %v; legacy names: %v", err, lerr)
			}
		} else {
			if got.InstanceTypeFrom != "" && lgot.InstanceTypeFrom != legacyOf(got.InstanceTypeFrom) {
				t.Fatalf("instance type from %q under legacy names, want %q", lgot.InstanceTypeFrom, legacyOf(got.InstanceTypeFrom))
			}
			lgot.InstanceTypeFrom = got.InstanceTypeFrom
			if !reflect.DeepEqual(got, lgot) {
				t.Fatalf("kip names give %+v, legacy names %+v", got, lgot)
			}
		}

		bgot, berr := Parse(podWith(both))
		check(t, both, bgot, berr)
		if (err == nil) != (berr == nil) || (err == nil && !reflect.DeepEqual(got, bgot)) {
			t.Fatalf("kip names: %+v, %v; both names: %+v, %v", got, err, bgot, berr)
		}
	})
}

// check asserts what Parse's result says about ann.
func check(t *testing.T, ann map[string]string, p Pod, err error) {
	t.Helper()
	value := func(key string) string {
		if v := strings.TrimSpace(ann[key]); v != "" {
			return v
		}
		return strings.TrimSpace(ann[legacyOf(key)])
	}
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("error %v is not an *Error", err)
		}
		if _, ok := ann[e.Annotation]; !ok {
			t.Fatalf("error names annotation %q, which the pod does not have: %v", e.Annotation, err)
		}
		if e.Value != strings.TrimSpace(ann[e.Annotation]) || e.Reason == "" {
			t.Fatalf("error %v: value %q, want the annotation's %q, and a reason", err, e.Value, strings.TrimSpace(ann[e.Annotation]))
		}
		return
	}
	if v := value(InstanceType); v != p.InstanceType {
		t.Fatalf("instance type %q, want %q", p.InstanceType, v)
	}
	if (value(LaunchType) != "") != (p.Spot != nil) {
		t.Fatalf("launch type %q parsed to spot %v", value(LaunchType), p.Spot)
	}
	for _, g := range p.SecurityGroups {
		if g == "" || strings.ContainsAny(g, " \t,") {
			t.Fatalf("security group %q from %q", g, value(SecurityGroups))
		}
	}
	if v := value(VolumeSize); v != "" {
		q := resource.MustParse(v)
		const gib = 1 << 30
		if p.VolumeSizeGiB <= 0 {
			t.Fatalf("volume size %q parsed to %d GiB", v, p.VolumeSizeGiB)
		}
		gibs := resource.NewQuantity(gib, resource.BinarySI)
		gibs.Mul(int64(p.VolumeSizeGiB))
		if gibs.Cmp(q) < 0 {
			t.Fatalf("volume size %q parsed to %d GiB, less than asked", v, p.VolumeSizeGiB)
		}
	} else if p.VolumeSizeGiB != 0 {
		t.Fatalf("no volume size, but %d GiB", p.VolumeSizeGiB)
	}
	if v := value(HealthyTimeout); v != "" {
		if p.HealthyTimeout <= 0 {
			t.Fatalf("healthy timeout %q parsed to %v", v, p.HealthyTimeout)
		}
		if _, derr := time.ParseDuration(v); derr != nil {
			n, _ := strconv.Atoi(v)
			if p.HealthyTimeout != time.Duration(n)*time.Second || p.HealthyTimeout/time.Second != time.Duration(n) {
				t.Fatalf("healthy timeout %q seconds parsed to %v", v, p.HealthyTimeout)
			}
		}
	}
}
