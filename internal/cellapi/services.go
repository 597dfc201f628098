package cellapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
)

// ServicesPath is served by agents that implement ServiceProgrammer.
//
//	PUT: ServiceTable → ServiceTableStatus
const ServicesPath = "/v1/services"

// ServiceProgrammer is implemented by agents that program the cluster's Services inside
// their cell (kube-proxy's job on an ordinary node). kip watches Services and EndpointSlices
// once and pushes every cell the table; the agent never talks to the API server.
type ServiceProgrammer interface {
	// PutServices applies t. A full table (Base 0) replaces everything the agent has; a delta
	// (Base > 0) applies only on top of version Base and fails with KindConflict otherwise,
	// so that kip sends the full table instead. The status names the version now in force.
	PutServices(ctx context.Context, t *ServiceTable) (*ServiceTableStatus, error)
}

// ServiceTable is the cluster's Services as a cell must program them, already resolved by kip:
// each port carries its own endpoints (ready ones, or kube-proxy's fallbacks), with the
// target port of each endpoint resolved.
type ServiceTable struct {
	// Version is the version of kip's table this brings the agent to; it only increases.
	Version uint64 `json:"version"`
	// Base is 0 for a full table, else the version this delta applies on top of.
	Base uint64 `json:"base,omitempty"`
	// Services are added or replaced whole, by Namespace/Name.
	Services []Service `json:"services,omitempty"`
	// Deleted names the Services ("namespace/name") a delta removes.
	Deleted []string `json:"deleted,omitempty"`
}

// ServiceTableStatus is the agent's answer to PutServices.
type ServiceTableStatus struct {
	// Version is the version of the table the agent has programmed.
	Version uint64 `json:"version"`
	// Services is how many Services it programmed.
	Services int `json:"services"`
}

// Service is one Service with a cluster IP (headless and ExternalName Services are DNS-only
// and never sent).
type Service struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// ClusterIPs are the Service's virtual addresses (IPv4 and/or IPv6).
	ClusterIPs []string      `json:"clusterIPs"`
	Ports      []ServicePort `json:"ports"`
	// AffinitySeconds > 0 is sessionAffinity ClientIP with that timeout.
	AffinitySeconds int32 `json:"affinitySeconds,omitempty"`
}

// Key is the Service's "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// ServicePort is one port of a Service with the endpoints that serve it. No endpoints means
// connections to it are rejected (ICMP port unreachable, TCP RST), as kube-proxy does.
type ServicePort struct {
	Name     string          `json:"name,omitempty"`
	Protocol corev1.Protocol `json:"protocol"`
	Port     int32           `json:"port"`
	// NodePort is the Service's node port, 0 when it has none.
	NodePort  int32      `json:"nodePort,omitempty"`
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// Endpoint is one backend address of a service port.
type Endpoint struct {
	IP   string `json:"ip"`
	Port int32  `json:"port"`
}

// PutServices implements ServiceProgrammer over the wire.
func (c *Client) PutServices(ctx context.Context, t *ServiceTable) (*ServiceTableStatus, error) {
	body, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("encoding service table: %w", err)
	}
	var st ServiceTableStatus
	if err := c.doJSON(ctx, http.MethodPut, ServicesPath, bytes.NewReader(body), &st); err != nil {
		return nil, fmt.Errorf("putting services: %w", err)
	}
	return &st, nil
}

var _ ServiceProgrammer = (*Client)(nil)

func (h *handler) putServices(w http.ResponseWriter, r *http.Request) {
	sp, ok := h.agent.(ServiceProgrammer)
	if !ok {
		h.fail(w, r, Errorf(KindBadVersion, "%s %s is not implemented by this agent", r.Method, r.URL.Path))
		return
	}
	var t ServiceTable
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	if err := dec.Decode(&t); err != nil {
		h.fail(w, r, Errorf(KindInvalid, "decoding service table: %v", err))
		return
	}
	st, err := sp.PutServices(r.Context(), &t)
	h.reply(w, r, st, err)
}
