package cellapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
)

// EphemeralPath is served by agents that implement EphemeralRunner.
//
//	PUT: EphemeralContainers → PodStatus
const EphemeralPath = "/v1/pod/ephemeral"

// EphemeralRunner is implemented by agents that run a running pod's ephemeral containers
// (kubectl debug, the pods/ephemeralcontainers subresource). kip resolves each container's
// env, envFrom and $(VAR) references as for ordinary containers and pushes the pod's whole
// list; the agent starts each container it has not seen once (never restarted, no probes), in
// the pod's network and IPC namespaces, and keeps the ones it has. Their statuses come back in
// PodStatus.EphemeralContainerStatuses. Agents without it answer KindBadVersion (501).
type EphemeralRunner interface {
	// PutEphemeralContainers starts each container of e not yet known to the pod and returns
	// the pod's status. Containers already known are left as they are (their spec cannot
	// change), and none is ever removed. Errors: NotFound when the cell does not run pod
	// e.UID; Invalid when a container's name is taken by an ordinary container or a field
	// cannot be honoured (the message names it); Conflict while the pod stops.
	PutEphemeralContainers(ctx context.Context, e *EphemeralContainers) (*PodStatus, error)
}

// EphemeralContainers is a running pod's list of ephemeral containers, resolved.
type EphemeralContainers struct {
	// UID is the pod's UID; the request applies only to that pod.
	UID string `json:"uid"`
	// Containers is spec.ephemeralContainers with env resolved to literal values (EnvFrom
	// empty).
	Containers []corev1.EphemeralContainer `json:"containers"`
}

// PutEphemeralContainers implements EphemeralRunner over the wire.
func (c *Client) PutEphemeralContainers(ctx context.Context, e *EphemeralContainers) (*PodStatus, error) {
	body, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encoding ephemeral containers: %w", err)
	}
	var st PodStatus
	if err := c.doJSON(ctx, http.MethodPut, EphemeralPath, bytes.NewReader(body), &st); err != nil {
		return nil, fmt.Errorf("putting ephemeral containers of pod %s: %w", e.UID, err)
	}
	return &st, nil
}

var _ EphemeralRunner = (*Client)(nil)

func (h *handler) putEphemeral(w http.ResponseWriter, r *http.Request) {
	er, ok := h.agent.(EphemeralRunner)
	if !ok {
		h.fail(w, r, Errorf(KindBadVersion, "%s %s is not implemented by this agent", r.Method, r.URL.Path))
		return
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	dec.DisallowUnknownFields()
	var e EphemeralContainers
	if err := dec.Decode(&e); err != nil {
		h.fail(w, r, Errorf(KindInvalid, "decoding ephemeral containers: %v", err))
		return
	}
	if dec.More() {
		h.fail(w, r, Errorf(KindInvalid, "decoding ephemeral containers: trailing data after the JSON object"))
		return
	}
	if e.UID == "" {
		h.fail(w, r, Errorf(KindInvalid, "ephemeral containers: field uid is required"))
		return
	}
	st, err := er.PutEphemeralContainers(r.Context(), &e)
	h.reply(w, r, st, err)
}
