package provider

import (
	"context"
	"net/http"
	"strconv"
	"strings"
)

// zeroTailKey marks a request context whose query asked for tailLines=0.
type zeroTailKey struct{}

// WithLogQuery wraps the kubelet API handler so that GetContainerLogs learns what
// virtual-kubelet's parsed ContainerLogOpts cannot say: tailLines=0 (`kubectl logs --tail=0`,
// no lines at all), which its Tail field cannot tell from "not set".
func WithLogQuery(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/containerLogs/") {
			if n, err := strconv.Atoi(r.URL.Query().Get("tailLines")); err == nil && n == 0 {
				r = r.WithContext(context.WithValue(r.Context(), zeroTailKey{}, true))
			}
		}
		h.ServeHTTP(w, r)
	})
}

// zeroTail reports whether ctx is that of a logs request asking for tailLines=0.
func zeroTail(ctx context.Context) bool {
	v, _ := ctx.Value(zeroTailKey{}).(bool)
	return v
}
