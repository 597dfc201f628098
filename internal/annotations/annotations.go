// Package annotations is the one owner of the pod.kip.dev/* annotations (and their
// pod.elotl.co/* spellings from the original Kip): their names, and Parse, which reads them all
// with one rule set into a Pod. It is pure: no I/O, no catalog; whether a named instance type
// exists is the selector's question.
package annotations

import (
	"errors"
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Prefixes: Kip's own, and the original Kip's, still accepted so existing manifests keep working.
const (
	Prefix       = "pod.kip.dev/"
	LegacyPrefix = "pod.elotl.co/"
)

// The annotations, under Kip's prefix. Each is also read under LegacyPrefix.
const (
	// InstanceType names an instance type, or a glob of them (path.Match syntax, e.g. "c5*"),
	// to choose from instead of the whole catalog.
	InstanceType = Prefix + "instance-type"
	// LaunchType is "spot" or "on-demand".
	LaunchType = Prefix + "launch-type"
	// SecurityGroups is a comma-separated list of security group ids for the cell.
	SecurityGroups = Prefix + "security-groups"
	// InstanceProfile is the cell's instance profile, by name or ARN.
	InstanceProfile = Prefix + "instance-profile"
	// VolumeSize is the cell's root volume size, a quantity like "20Gi" (rounded up to GiB).
	VolumeSize = Prefix + "volume-size"
	// PrivateIPOnly is true or false: whether the cell may have a public address.
	PrivateIPOnly = Prefix + "private-ip-only"
	// HealthyTimeout overrides how long the cell's agent may stay unreachable: a duration like
	// "120s", or a number of seconds as the original took.
	HealthyTimeout = Prefix + "healthcheck-healthy-timeout"
	// LostTimeout overrides how long a running cell's agent may stay silent before the pod is
	// failed as lost (cells.lostTimeout): a duration like "45s", or a number of seconds.
	LostTimeout = Prefix + "lost-timeout"
)

// The original Kip's spellings of the annotations.
const (
	LegacyInstanceType    = LegacyPrefix + "instance-type"
	LegacyLaunchType      = LegacyPrefix + "launch-type"
	LegacySecurityGroups  = LegacyPrefix + "security-groups"
	LegacyInstanceProfile = LegacyPrefix + "instance-profile"
	LegacyVolumeSize      = LegacyPrefix + "volume-size"
	LegacyPrivateIPOnly   = LegacyPrefix + "private-ip-only"
	LegacyHealthyTimeout  = LegacyPrefix + "healthcheck-healthy-timeout"
)

// Launch types.
const (
	LaunchTypeSpot     = "spot"
	LaunchTypeOnDemand = "on-demand"
)

// Pod is what a pod's annotations ask for. The zero value asks for nothing.
type Pod struct {
	// InstanceType is an instance type name or a glob; "" means the whole catalog.
	// InstanceTypeGlob says it is a glob; InstanceTypeFrom is the annotation it came from.
	InstanceType     string
	InstanceTypeGlob bool
	InstanceTypeFrom string
	// Spot is nil when the pod does not say.
	Spot *bool
	// SecurityGroups, InstanceProfile, VolumeSizeGiB and PrivateIPOnly are launch settings;
	// zero values leave the backend's defaults.
	SecurityGroups  []string
	InstanceProfile string
	VolumeSizeGiB   int
	PrivateIPOnly   bool
	// HealthyTimeout overrides the configured healthy timeout; 0 keeps it.
	HealthyTimeout time.Duration
	// LostTimeout overrides the configured lost timeout; 0 keeps it.
	LostTimeout time.Duration
}

// Error says which annotation has a value kip cannot use, and why.
type Error struct {
	Annotation, Value, Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("annotation %s=%q: %s", e.Annotation, e.Value, e.Reason)
}

// IsInvalid reports whether err is (or wraps) an *Error.
func IsInvalid(err error) bool {
	var e *Error
	return errors.As(err, &e)
}

// lookup returns the value of the annotation key (under Prefix) or its spelling under
// LegacyPrefix, and the key it came from. Values are trimmed and an empty one counts as unset;
// when both spellings are set they must agree.
func lookup(pod *corev1.Pod, key string) (value, from string, err error) {
	legacy := LegacyPrefix + strings.TrimPrefix(key, Prefix)
	v := strings.TrimSpace(pod.Annotations[key])
	lv := strings.TrimSpace(pod.Annotations[legacy])
	switch {
	case v != "" && lv != "" && v != lv:
		return "", "", &Error{Annotation: key, Value: v, Reason: "conflicts with " + legacy + "=" + `"` + lv + `"`}
	case v != "":
		return v, key, nil
	case lv != "":
		return lv, legacy, nil
	}
	return "", "", nil
}

// Parse reads all of pod's annotations. Its error is an *Error naming the first annotation
// (in the order of the constants above) whose value is unusable.
func Parse(pod *corev1.Pod) (Pod, error) {
	var p Pod
	for _, f := range parsers {
		v, from, err := lookup(pod, f.key)
		if err != nil {
			return Pod{}, err
		}
		if v == "" {
			continue
		}
		if reason := f.parse(&p, v, from); reason != "" {
			return Pod{}, &Error{Annotation: from, Value: v, Reason: reason}
		}
	}
	return p, nil
}

// parsers read one annotation's (trimmed, non-empty) value into p; they return why it is
// unusable, or "".
var parsers = []struct {
	key   string
	parse func(p *Pod, v, from string) string
}{
	{InstanceType, func(p *Pod, v, from string) string {
		if _, err := path.Match(v, ""); err != nil {
			return "bad glob: " + err.Error()
		}
		p.InstanceType, p.InstanceTypeFrom = v, from
		p.InstanceTypeGlob = strings.ContainsAny(v, `*?[\`)
		return ""
	}},
	{LaunchType, func(p *Pod, v, _ string) string {
		switch strings.ToLower(v) {
		case LaunchTypeSpot:
			p.Spot = ptr(true)
		case LaunchTypeOnDemand, "ondemand", "on_demand":
			p.Spot = ptr(false)
		case "dedicated":
			return "dedicated hosts are not supported; use spot or on-demand"
		default:
			return "must be spot or on-demand"
		}
		return ""
	}},
	{SecurityGroups, func(p *Pod, v, _ string) string {
		for _, g := range strings.Split(v, ",") {
			g = strings.TrimSpace(g)
			if g == "" || strings.ContainsAny(g, " \t") {
				return "not a comma-separated list of security group ids"
			}
			p.SecurityGroups = append(p.SecurityGroups, g)
		}
		return ""
	}},
	{InstanceProfile, func(p *Pod, v, _ string) string {
		if strings.ContainsAny(v, " \t") {
			return "not an instance profile name or ARN"
		}
		p.InstanceProfile = v
		return ""
	}},
	{VolumeSize, func(p *Pod, v, _ string) string {
		// A decimal exponent far from any volume's size makes the quantity code compute with
		// a number of that many digits (parsing 1e-888888811, or comparing 1e888888811, takes
		// minutes and GiBs), so it is refused from the exponent alone, before parsing.
		if exp, ok := decimalExponent(v); ok && exp > maxVolumeSizeExponent {
			return "larger than " + maxVolumeSize.String() + ", the largest volume a cloud offers"
		} else if ok && exp < -maxVolumeSizeExponent {
			return `not a size in bytes like "20Gi"`
		}
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() <= 0 {
			return `not a positive size like "20Gi"`
		}
		switch scale := q.AsDec().Scale(); {
		case scale < -maxVolumeSizeExponent:
			return "larger than " + maxVolumeSize.String() + ", the largest volume a cloud offers"
		case scale > maxVolumeSizeExponent:
			return `not a size in bytes like "20Gi"`
		}
		if q.Cmp(maxVolumeSize) > 0 {
			return "larger than " + maxVolumeSize.String() + ", the largest volume a cloud offers"
		}
		const gib = 1 << 30
		p.VolumeSizeGiB = int((q.Value() + gib - 1) / gib)
		return ""
	}},
	{PrivateIPOnly, func(p *Pod, v, _ string) string {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return "not true or false"
		}
		p.PrivateIPOnly = b
		return ""
	}},
	{HealthyTimeout, func(p *Pod, v, _ string) string {
		d, reason := parseTimeout(v)
		p.HealthyTimeout = d
		return reason
	}},
	{LostTimeout, func(p *Pod, v, _ string) string {
		d, reason := parseTimeout(v)
		p.LostTimeout = d
		return reason
	}},
}

// parseTimeout reads a positive duration like "120s", or a whole number of seconds as the
// original took; it returns why v is unusable, or "".
func parseTimeout(v string) (time.Duration, string) {
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.ParseInt(v, 10, 64)
		if nerr != nil {
			return 0, `not a duration like "120s" or a number of seconds`
		}
		if n > int64(maxDuration/time.Second) {
			return 0, "longer than " + maxDuration.String()
		}
		d = time.Duration(n) * time.Second
	}
	if d <= 0 {
		return 0, "must be positive"
	}
	return d, ""
}

// maxDuration is the longest time.Duration, about 292 years.
const maxDuration = time.Duration(1<<63 - 1)

// maxVolumeSize bounds volume-size: EBS's largest volume, and far below where a size in
// bytes overflows.
var maxVolumeSize = resource.MustParse("64Ti")

// decimalExponent returns the exponent of a quantity written with one ("5e3", "1E-2"); a
// number too long for an int counts as far beyond any bound. ok is false for other forms
// (including the suffixes E and Ei).
func decimalExponent(v string) (exp int, ok bool) {
	i := strings.LastIndexAny(v, "eE")
	if i < 0 || i == len(v)-1 {
		return 0, false
	}
	digits := strings.TrimLeft(v[i+1:], "+-")
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(v[i+1:])
	if err != nil { // out of range: as far as it goes
		if strings.HasPrefix(v[i+1:], "-") {
			return math.MinInt, true
		}
		return math.MaxInt, true
	}
	return n, true
}

// maxVolumeSizeExponent bounds the decimal exponent of a volume size: 10^30 bytes is far above
// maxVolumeSize, and 10^-30 bytes far below a byte.
const maxVolumeSizeExponent = 30

func ptr[T any](v T) *T { return &v }
