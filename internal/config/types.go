package config

import (
	"encoding/json"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Duration is a time.Duration written as a Go duration string ("90s"). A malformed value
// does not fail decoding: Validate reports it with its field path.
type Duration struct {
	time.Duration
	set bool
	err error
}

// NewDuration returns a set Duration.
func NewDuration(d time.Duration) Duration { return Duration{Duration: d, set: true} }

// IsSet reports whether the file (or a default) gave a value.
func (d Duration) IsSet() bool { return d.set }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	d.set = true
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		d.err = fmt.Errorf("must be a duration string like \"90s\", got %s", b)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		d.err = fmt.Errorf("must be a duration like \"90s\", got %q", s)
		return nil
	}
	d.Duration, d.err = v, nil
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.Duration.String()) }

// Quantity is a Kubernetes resource quantity ("500m", "2Gi", 4). A malformed value does not
// fail decoding: Validate reports it with its field path.
type Quantity struct {
	resource.Quantity
	set bool
	err error
}

// NewQuantity parses s, panicking on a malformed literal (for defaults and tests).
func NewQuantity(s string) Quantity { return Quantity{Quantity: resource.MustParse(s), set: true} }

// IsSet reports whether the file (or a default) gave a value.
func (q Quantity) IsSet() bool { return q.set }

// UnmarshalJSON implements json.Unmarshaler.
func (q *Quantity) UnmarshalJSON(b []byte) error {
	q.set = true
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n json.Number
		if err := json.Unmarshal(b, &n); err != nil {
			q.err = fmt.Errorf("must be a quantity like \"2Gi\" or 4, got %s", b)
			return nil
		}
		s = n.String()
	}
	v, err := resource.ParseQuantity(s)
	if err != nil {
		q.err = fmt.Errorf("must be a quantity like \"2Gi\" or \"500m\", got %q", s)
		return nil
	}
	q.Quantity, q.err = v, nil
	return nil
}

// MarshalJSON implements json.Marshaler.
func (q Quantity) MarshalJSON() ([]byte, error) { return json.Marshal(q.Quantity.String()) }
