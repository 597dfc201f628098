package pod

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestGRPCProbe runs kubelet's gRPC probe against a real gRPC health server on loopback.
func TestGRPCProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("db", healthpb.HealthCheckResponse_NOT_SERVING)

	bare, err := net.Listen("tcp", "127.0.0.1:0") // a server without the health service
	if err != nil {
		t.Fatal(err)
	}
	bareSrv := grpc.NewServer()
	go func() { _ = bareSrv.Serve(bare) }()
	t.Cleanup(bareSrv.Stop)

	tests := []struct {
		name, addr, service string
		ok                  bool
		msg                 string
	}{
		{"serving", ln.Addr().String(), "", true, ""},
		{"not serving", ln.Addr().String(), "db", false, `service unhealthy (responded with "NOT_SERVING")`},
		{"unknown service", ln.Addr().String(), "nope", false, "health rpc probe failed"},
		{"no health service", bare.Addr().String(), "", false, "does not implement the grpc health protocol"},
		{"nothing listening", "127.0.0.1:1", "", false, "health rpc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			ok, msg := grpcProbe(ctx, tt.addr, tt.service)
			if ok != tt.ok || !strings.Contains(msg, tt.msg) {
				t.Errorf("grpcProbe = %t %q, want %t and a message containing %q", ok, msg, tt.ok, tt.msg)
			}
		})
	}
}
