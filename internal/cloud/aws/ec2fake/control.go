package ec2fake

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"time"
)

// ControlHandler serves the fake's test controls over HTTP, for tests that run the fake as
// a separate process (hack/tools/ec2fake mounts it under /_fake/):
//
//	GET  instances                                      Instances() as JSON, each with its "Cell"
//	GET  output?instance=ID                             the user-data script's output so far
//	POST interrupt-spot?instance=ID[&action=terminate][&at=RFC3339]   InterruptSpot
//	POST capacity?type=T[&zone=Z]&on=true|false          SetInsufficientCapacity ("spot:*": all spot)
//	POST inject-error?action=A&code=C[&message=M][&times=N]           InjectError
//	POST peers[?peer=ADDR|CIDR...]                       SetPeers (none: unpeer)
//
// Errors are plain text with a 4xx status.
func (s *Server) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /instances", func(w http.ResponseWriter, r *http.Request) {
		type withCell struct {
			Instance
			Cell *CellInfo `json:",omitempty"`
		}
		var out []withCell
		for _, in := range s.Instances() {
			wc := withCell{Instance: in}
			if c, ok := s.Cell(in.ID); ok {
				wc.Cell = &c
			}
			out = append(out, wc)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("GET /output", func(w http.ResponseWriter, r *http.Request) {
		c, ok := s.Cell(r.URL.Query().Get("instance"))
		if !ok {
			http.Error(w, "no instance with a cell named by parameter instance", http.StatusNotFound)
			return
		}
		b, err := os.ReadFile(c.OutputPath)
		if err != nil && !os.IsNotExist(err) {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(b)
	})
	mux.HandleFunc("POST /interrupt-spot", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		action := q.Get("action")
		if action == "" {
			action = "terminate"
		}
		var at time.Time
		if v := q.Get("at"); v != "" {
			var err error
			if at, err = time.Parse(time.RFC3339, v); err != nil {
				http.Error(w, "parameter at: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		if err := s.InterruptSpot(q.Get("instance"), action, at); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /peers", func(w http.ResponseWriter, r *http.Request) {
		var peers []netip.Prefix
		for _, v := range r.URL.Query()["peer"] {
			p, err := ParsePeer(v)
			if err != nil {
				http.Error(w, "parameter peer: "+err.Error(), http.StatusBadRequest)
				return
			}
			peers = append(peers, p)
		}
		if err := s.SetPeers(peers...); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /capacity", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		on, err := strconv.ParseBool(q.Get("on"))
		if err != nil || q.Get("type") == "" {
			http.Error(w, "parameters type and on (true or false) are required", http.StatusBadRequest)
			return
		}
		s.SetInsufficientCapacity(q.Get("type"), q.Get("zone"), on)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /inject-error", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		times := 1
		if v := q.Get("times"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				http.Error(w, "parameter times must be a positive integer", http.StatusBadRequest)
				return
			}
			times = n
		}
		if q.Get("action") == "" || q.Get("code") == "" {
			http.Error(w, "parameters action and code are required", http.StatusBadRequest)
			return
		}
		s.InjectError(q.Get("action"), q.Get("code"), q.Get("message"), times)
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}
