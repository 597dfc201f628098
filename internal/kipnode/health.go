package kipnode

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// The roles /healthz reports.
const (
	roleStandalone = "standalone" // no leader election: this process runs the node
	roleFollower   = "follower"   // campaigning for the Lease; serving nothing else
	roleLeader     = "leader"     // holding the Lease and running the node
)

func (r *runner) setRole(role string) { r.role.Store(role) }

// healthHandler answers GET /healthz with 200 and this process's role, whatever it is: a
// follower is healthy too (it is waiting, as it should). Everything else is 404; nothing on
// this listener reads or changes a cell.
func (r *runner) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		role, _ := r.role.Load().(string)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "ok %s\n", role)
	})
	return mux
}

// serveHealth serves healthHandler on addr (plain HTTP) until ctx ends.
func (r *runner) serveHealth(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("starting kip: --health-addr: %w", err)
	}
	srv := &http.Server{Handler: r.healthHandler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l) //nolint:errcheck // Serve returns once Close is called
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	r.log.Info("serving health", "addr", "http://"+l.Addr().String()+"/healthz")
	return nil
}
