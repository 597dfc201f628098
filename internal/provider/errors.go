package provider

import (
	"errors"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/podrequest"
)

// errNotImplemented marks the streaming calls the cell agent does not offer yet.
var errNotImplemented = errors.New("not implemented by kip yet")

// classify gives err the virtual-kubelet errdefs kind matching its cause, once, at the
// boundary: unknown pods, containers and cells are NotFound; bad specs and bad requests are
// InvalidInput. Anything else stays an internal error.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errdefs.IsNotFound(err), errdefs.IsInvalidInput(err):
		return err
	case hasKind[errdefs.ErrNotFound](err), cells.IsNotFound(err), cellapi.IsNotFound(err):
		return errdefs.AsNotFound(err)
	case hasKind[errdefs.ErrInvalidInput](err), cells.IsInvalid(err), cellapi.IsInvalid(err), podrequest.IsConfigError(err):
		return errdefs.AsInvalidInput(err)
	}
	return err
}

// hasKind reports whether an error of kind K sits anywhere in err's %w chain; errdefs itself
// only follows Cause().
func hasKind[K error](err error) bool {
	var k K
	return errors.As(err, &k)
}
