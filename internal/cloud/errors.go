package cloud

import (
	"errors"
	"fmt"
)

// Kind classifies a backend error. Backends classify their SDK's errors once, at their
// boundary, so callers only ever test kinds.
type Kind int

const (
	KindUnknown Kind = iota
	KindNotFound
	KindInsufficientCapacity
	KindInvalidSpec
	KindThrottled
)

func (k Kind) String() string {
	switch k {
	case KindNotFound:
		return "NotFound"
	case KindInsufficientCapacity:
		return "InsufficientCapacity"
	case KindInvalidSpec:
		return "InvalidSpec"
	case KindThrottled:
		return "Throttled"
	}
	return "Unknown"
}

// Error is a classified backend error.
type Error struct {
	Kind Kind
	Msg  string
	Err  error
	// Field names the LaunchSpec field an InvalidSpec error is about ("SecurityGroups"),
	// when the backend knows it, so that callers can name what the pod asked for.
	Field string
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Kind, e.Msg, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Kind, e.Msg)
}

func (e *Error) Unwrap() error { return e.Err }

func newError(k Kind, err error, format string, args ...any) error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...), Err: err}
}

// NotFound returns an error of kind NotFound.
func NotFound(format string, args ...any) error { return newError(KindNotFound, nil, format, args...) }

// InsufficientCapacity returns an error of kind InsufficientCapacity.
func InsufficientCapacity(format string, args ...any) error {
	return newError(KindInsufficientCapacity, nil, format, args...)
}

// InvalidSpec returns an error of kind InvalidSpec.
func InvalidSpec(format string, args ...any) error {
	return newError(KindInvalidSpec, nil, format, args...)
}

// InvalidSpecField returns an error of kind InvalidSpec about LaunchSpec's field.
func InvalidSpecField(field, format string, args ...any) error {
	return &Error{Kind: KindInvalidSpec, Msg: fmt.Sprintf(format, args...), Field: field}
}

// FieldOf returns the LaunchSpec field the first classified error in err's chain is about,
// or "".
func FieldOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Field
	}
	return ""
}

// Throttled returns an error of kind Throttled.
func Throttled(format string, args ...any) error {
	return newError(KindThrottled, nil, format, args...)
}

// Wrap classifies err as kind k.
func Wrap(k Kind, err error, format string, args ...any) error {
	return newError(k, err, format, args...)
}

// KindOf returns the kind of the first classified error in err's chain.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindUnknown
}

func IsNotFound(err error) bool             { return KindOf(err) == KindNotFound }
func IsInsufficientCapacity(err error) bool { return KindOf(err) == KindInsufficientCapacity }
func IsInvalidSpec(err error) bool          { return KindOf(err) == KindInvalidSpec }
func IsThrottled(err error) bool            { return KindOf(err) == KindThrottled }
