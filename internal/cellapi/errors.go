package cellapi

import (
	"errors"
	"fmt"
	"net/http"
)

// ErrorKind classifies an agent error; it travels as the HTTP status code.
type ErrorKind int

const (
	KindInternal   ErrorKind = http.StatusInternalServerError
	KindNotFound   ErrorKind = http.StatusNotFound
	KindInvalid    ErrorKind = http.StatusBadRequest
	KindConflict   ErrorKind = http.StatusConflict
	KindBadVersion ErrorKind = http.StatusNotImplemented
)

// Error is an agent error with its kind. On the wire it is {"kind":..., "message":...} with the
// kind as the status code.
type Error struct {
	Kind    ErrorKind `json:"kind"`
	Message string    `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error of kind k.
func Errorf(k ErrorKind, format string, args ...any) error {
	return &Error{Kind: k, Message: fmt.Sprintf(format, args...)}
}

// KindOf returns err's kind, KindInternal when it has none.
func KindOf(err error) ErrorKind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

func IsNotFound(err error) bool { return err != nil && KindOf(err) == KindNotFound }
func IsInvalid(err error) bool  { return err != nil && KindOf(err) == KindInvalid }
func IsConflict(err error) bool { return err != nil && KindOf(err) == KindConflict }
