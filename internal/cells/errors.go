package cells

import (
	"errors"
	"fmt"

	"github.com/kip-dev/kip/internal/cloud"
)

// The kinds of the errors the manager returns. Errors from below (the cloud) are translated
// into these at the manager's boundary, so its users need not know the cloud's.
var (
	// ErrNotFound: a pod (or its cell) the manager does not know.
	ErrNotFound = errors.New("pod not found")
	// ErrInvalid: a request or spec that can never succeed as given.
	ErrInvalid = errors.New("invalid")
)

// IsNotFound reports whether err means the pod is unknown.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// IsInvalid reports whether err means the request can never succeed as given.
func IsInvalid(err error) bool { return errors.Is(err, ErrInvalid) }

// kindError is an error of one kind. It also answers virtual-kubelet's errdefs checks
// (NotFound(), InvalidInput()) so the provider's classification needs nothing more.
type kindError struct {
	kind  error
	msg   string
	cause error
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Unwrap() error        { return e.cause }
func (e *kindError) Is(target error) bool { return target == e.kind }
func (e *kindError) NotFound() bool       { return e.kind == ErrNotFound }
func (e *kindError) InvalidInput() bool   { return e.kind == ErrInvalid }

func notFound(namespace, name string) error {
	return &kindError{kind: ErrNotFound, msg: fmt.Sprintf("pod %s/%s not found in kip", namespace, name)}
}

func invalid(format string, args ...any) error {
	return &kindError{kind: ErrInvalid, msg: fmt.Sprintf(format, args...)}
}

// translate gives an error from the cloud the manager's kind, keeping its message and chain.
func translate(err error) error {
	switch {
	case err == nil:
		return nil
	case cloud.IsNotFound(err):
		return &kindError{kind: ErrNotFound, msg: err.Error(), cause: err}
	case cloud.IsInvalidSpec(err):
		return &kindError{kind: ErrInvalid, msg: err.Error(), cause: err}
	}
	return err
}
