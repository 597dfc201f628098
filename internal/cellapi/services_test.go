package cellapi_test

import (
	"context"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// servicesAgent is fakeAgent plus cellapi.ServiceProgrammer.
type servicesAgent struct {
	*fakeAgent
	got *cellapi.ServiceTable
	err error
}

func (s *servicesAgent) PutServices(_ context.Context, t *cellapi.ServiceTable) (*cellapi.ServiceTableStatus, error) {
	if s.err != nil {
		return nil, s.err
	}
	s.got = t
	return &cellapi.ServiceTableStatus{Version: t.Version, Services: len(t.Services)}, nil
}

func TestPutServicesRoundTrip(t *testing.T) {
	sa := &servicesAgent{fakeAgent: &fakeAgent{updates: make(chan *cellapi.PodStatus)}}
	r := newRigFor(t, sa, sa.fakeAgent)
	table := &cellapi.ServiceTable{Version: 7, Base: 6, Deleted: []string{"ns/gone"}, Services: []cellapi.Service{{
		Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10", "fd00::10"}, AffinitySeconds: 600,
		Ports: []cellapi.ServicePort{
			{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, NodePort: 30080, Endpoints: []cellapi.Endpoint{{IP: "10.0.0.1", Port: 8080}}},
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
		},
	}}}
	st, err := r.client.PutServices(t.Context(), table)
	if err != nil {
		t.Fatalf("PutServices: %v", err)
	}
	if st.Version != 7 || st.Services != 1 {
		t.Errorf("status %+v, want version 7 with 1 service", st)
	}
	if !reflect.DeepEqual(sa.got, table) {
		t.Errorf("the agent got %+v, want %+v", sa.got, table)
	}
	sa.err = cellapi.Errorf(cellapi.KindConflict, "delta applies to version 6, cell has 0")
	if _, err := r.client.PutServices(t.Context(), table); !cellapi.IsConflict(err) {
		t.Errorf("PutServices with the agent answering Conflict = %v, want Conflict", err)
	}
}

func TestPutServicesNotImplemented(t *testing.T) {
	r := newRig(t) // fakeAgent does not implement ServiceProgrammer
	_, err := r.client.PutServices(t.Context(), &cellapi.ServiceTable{Version: 1})
	if cellapi.KindOf(err) != cellapi.KindBadVersion {
		t.Errorf("PutServices to an agent without services = %v, want KindBadVersion (501)", err)
	}
}
