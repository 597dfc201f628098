package cellapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MaxRequestBytes bounds a PutPod body; volume files travel inside it.
const MaxRequestBytes = 64 << 20

// HandlerOptions configure Handler.
type HandlerOptions struct {
	// Logger receives one line per failed request; nil discards.
	Logger *slog.Logger
	// Certs renews the agent's serving certificate (CertRequestPath, CertPath); nil answers
	// those routes with KindBadVersion.
	Certs CertRotator
}

// Handler serves agent over the routes in this package. Every route but HealthPath requires
// a verified client certificate chain (the server's tls.Config is pki.ServerTLS, which
// verifies a certificate when one is given); requests without one get 401. Errors are
// written as {"kind","message"} with the kind as the status code.
func Handler(agent Agent, opts HandlerOptions) http.Handler {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &handler{agent: agent, log: log, certs: opts.Certs}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+HealthPath, h.health)
	mux.HandleFunc("PUT "+PodPath, h.authed(h.putPod))
	mux.HandleFunc("GET "+PodPath, h.authed(h.getPod))
	mux.HandleFunc("DELETE "+PodPath, h.authed(h.deletePod))
	mux.HandleFunc("GET "+WatchPath, h.authed(h.watch))
	mux.HandleFunc("GET "+LogsPath+"{container}", h.authed(h.logs))
	mux.HandleFunc("GET "+StatsPath, h.authed(h.stats))
	mux.HandleFunc("POST "+ExecPath+"{container}", h.authed(h.exec))
	mux.HandleFunc("POST "+PortForwardPath+"{port}", h.authed(h.portForward))
	mux.HandleFunc("POST "+AttachPath+"{container}", h.authed(h.attach))
	mux.HandleFunc("PUT "+ServicesPath, h.authed(h.putServices))
	mux.HandleFunc("PUT "+VolumesPath, h.authed(h.updateVolumes))
	mux.HandleFunc("PUT "+EphemeralPath, h.authed(h.putEphemeral))
	mux.HandleFunc("POST "+CertRequestPath, h.authed(h.requestCert))
	mux.HandleFunc("PUT "+CertPath, h.authed(h.putCert))
	mux.HandleFunc(ExecPath, h.authed(func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, r, Errorf(KindBadVersion, "%s %s is not implemented by this agent", r.Method, r.URL.Path))
	}))
	mux.HandleFunc("/", h.authed(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/"+Version+"/") {
			h.fail(w, r, Errorf(KindBadVersion, "unsupported API path %s: this agent serves %s", r.URL.Path, Version))
			return
		}
		h.fail(w, r, Errorf(KindNotFound, "no route %s %s", r.Method, r.URL.Path))
	}))
	return mux
}

type handler struct {
	agent Agent
	log   *slog.Logger
	certs CertRotator
}

// authed refuses requests that carry no verified client chain.
func (h *handler) authed(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			writeError(w, http.StatusUnauthorized, "a client certificate signed by the cell's CA is required")
			return
		}
		next(w, r)
	}
}

func (h *handler) health(w http.ResponseWriter, r *http.Request) {
	res, err := h.agent.Health(r.Context())
	h.reply(w, r, res, err)
}

func (h *handler) putPod(w http.ResponseWriter, r *http.Request) {
	req, err := DecodePodRequest(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	res, err := h.agent.PutPod(r.Context(), req)
	h.reply(w, r, res, err)
}

// DecodePodRequest strictly decodes one PodRequest: unknown fields and trailing data are
// errors of kind Invalid that name the problem.
func DecodePodRequest(r io.Reader) (*PodRequest, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var req PodRequest
	if err := dec.Decode(&req); err != nil {
		return nil, Errorf(KindInvalid, "decoding pod request: %v", err)
	}
	if dec.More() {
		return nil, Errorf(KindInvalid, "decoding pod request: trailing data after the JSON object")
	}
	if req.Pod == nil {
		return nil, Errorf(KindInvalid, "pod request: field pod is required")
	}
	return &req, nil
}

func (h *handler) getPod(w http.ResponseWriter, r *http.Request) {
	res, err := h.agent.GetPod(r.Context())
	h.reply(w, r, res, err)
}

func (h *handler) deletePod(w http.ResponseWriter, r *http.Request) {
	grace := 30 * time.Second
	if s := r.URL.Query().Get("grace"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			h.fail(w, r, Errorf(KindInvalid, "query parameter grace: %q is not a non-negative duration", s))
			return
		}
		grace = d
	}
	err := h.agent.DeletePod(r.Context(), grace)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) watch(w http.ResponseWriter, r *http.Request) {
	var every time.Duration
	if v := r.URL.Query().Get(HeartbeatParam); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < MinHeartbeat || d > MaxHeartbeat {
			h.fail(w, r, Errorf(KindInvalid, "query parameter %s=%q: want a duration from %s to %s", HeartbeatParam, v, MinHeartbeat, MaxHeartbeat))
			return
		}
		every = d
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	ch, err := h.agent.WatchPod(ctx)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	if every > 0 {
		w.Header().Set(HeartbeatHeader, every.String())
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	enc := json.NewEncoder(w)
	// beat fires after every quiet interval; nil (never fires) without heartbeats.
	var beat <-chan time.Time
	var t *time.Timer
	if every > 0 {
		t = time.NewTimer(every)
		defer t.Stop()
		beat = t.C
	}
	for {
		var msg any
		select {
		case st, ok := <-ch:
			if !ok {
				return
			}
			msg = st
		case now := <-beat:
			msg = HeartbeatLine{Heartbeat: now.UTC()}
		}
		if err := enc.Encode(msg); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		if t != nil {
			t.Reset(every)
		}
	}
}

func (h *handler) logs(w http.ResponseWriter, r *http.Request) {
	opts, err := ParseLogOptions(r.URL.Query())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	rc, err := h.agent.Logs(r.Context(), r.PathValue("container"), opts)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	ctl := http.NewResponseController(w)
	_ = ctl.Flush()
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if opts.Follow {
				_ = ctl.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}

// streamer returns the agent as a Streamer, or fails the request.
func (h *handler) streamer(w http.ResponseWriter, r *http.Request) (Streamer, bool) {
	s, ok := h.agent.(Streamer)
	if !ok {
		h.fail(w, r, Errorf(KindBadVersion, "this agent does not support exec or port forwarding"))
		return nil, false
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), StreamProtocol) {
		h.fail(w, r, Errorf(KindInvalid, "%s needs Upgrade: %s", r.URL.Path, StreamProtocol))
		return nil, false
	}
	return s, true
}

// upgrade answers 101 and takes over the connection (HTTP/1.1 only).
func upgrade(w http.ResponseWriter) (io.ReadWriteCloser, error) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, fmt.Errorf("taking over the connection (HTTP/1.1 is required): %w", err)
	}
	if _, err := brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + StreamProtocol + "\r\n\r\n"); err != nil {
		conn.Close()
		return nil, err
	}
	if err := brw.Flush(); err != nil {
		conn.Close()
		return nil, err
	}
	return struct {
		io.Reader
		io.Writer
		io.Closer
	}{brw.Reader, conn, conn}, nil
}

func (h *handler) exec(w http.ResponseWriter, r *http.Request) {
	s, ok := h.streamer(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	opts := ExecOptions{Command: q["command"]}
	if len(opts.Command) == 0 {
		h.fail(w, r, Errorf(KindInvalid, "query parameter command: required"))
		return
	}
	for name, dst := range map[string]*bool{"stdin": &opts.Stdin, "tty": &opts.TTY} {
		if v := q.Get(name); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				h.fail(w, r, Errorf(KindInvalid, "query parameter %s: %q is not a boolean", name, v))
				return
			}
			*dst = b
		}
	}
	conn, err := upgrade(w)
	if err != nil {
		h.log.Info("exec upgrade failed", "err", err)
		return
	}
	// The request's context ends when the handler returns; the stream outlives nothing else.
	serveExec(r.Context(), s, r.PathValue("container"), opts, conn)
}

func (h *handler) attach(w http.ResponseWriter, r *http.Request) {
	a, ok := h.agent.(Attacher)
	if !ok {
		h.fail(w, r, Errorf(KindBadVersion, "this agent does not support attach"))
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), StreamProtocol) {
		h.fail(w, r, Errorf(KindInvalid, "%s needs Upgrade: %s", r.URL.Path, StreamProtocol))
		return
	}
	q := r.URL.Query()
	var opts AttachOptions
	for name, dst := range map[string]*bool{"stdin": &opts.Stdin, "tty": &opts.TTY} {
		if v := q.Get(name); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				h.fail(w, r, Errorf(KindInvalid, "query parameter %s: %q is not a boolean", name, v))
				return
			}
			*dst = b
		}
	}
	conn, err := upgrade(w)
	if err != nil {
		h.log.Info("attach upgrade failed", "err", err)
		return
	}
	serveAttach(r.Context(), a, r.PathValue("container"), opts, conn)
}

func (h *handler) portForward(w http.ResponseWriter, r *http.Request) {
	s, ok := h.streamer(w, r)
	if !ok {
		return
	}
	port, err := strconv.ParseInt(r.PathValue("port"), 10, 32)
	if err != nil || port <= 0 || port > 65535 {
		h.fail(w, r, Errorf(KindInvalid, "port %q is not a port number", r.PathValue("port")))
		return
	}
	// Upgrade only when the streamer first uses the connection: an error before that (nothing
	// listens on the port) is then an ordinary error response, which the client returns and
	// kubectl reports, instead of a stream that just closes.
	conn := &lazyUpgrade{w: w}
	err = s.PortForward(r.Context(), int32(port), conn)
	switch {
	case err != nil && !conn.upgraded():
		h.fail(w, r, err)
	case err != nil:
		h.log.Info("port forward failed", "port", port, "err", err)
	}
}

// lazyUpgrade is a connection that upgrades the HTTP exchange on its first Read or Write.
// Closed before that, it never upgrades.
type lazyUpgrade struct {
	w    http.ResponseWriter
	mu   sync.Mutex
	conn io.ReadWriteCloser
	err  error
}

func (l *lazyUpgrade) get() (io.ReadWriteCloser, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil && l.err == nil {
		l.conn, l.err = upgrade(l.w)
		if l.err != nil {
			l.err = fmt.Errorf("upgrading the port-forward connection: %w", l.err)
		}
	}
	return l.conn, l.err
}

func (l *lazyUpgrade) upgraded() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conn != nil
}

func (l *lazyUpgrade) Read(p []byte) (int, error) {
	c, err := l.get()
	if err != nil {
		return 0, err
	}
	return c.Read(p)
}

func (l *lazyUpgrade) Write(p []byte) (int, error) {
	c, err := l.get()
	if err != nil {
		return 0, err
	}
	return c.Write(p)
}

func (l *lazyUpgrade) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		if l.err == nil {
			l.err = net.ErrClosed // never upgrade now
		}
		return nil
	}
	return l.conn.Close()
}

func (h *handler) stats(w http.ResponseWriter, r *http.Request) {
	res, err := h.agent.Stats(r.Context())
	h.reply(w, r, res, err)
}

func (h *handler) reply(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	kind := KindOf(err)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		kind = KindInvalid
	}
	h.log.Info("agent request failed", "method", r.Method, "path", r.URL.Path, "status", int(kind), "err", err)
	writeError(w, int(kind), err.Error())
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(&Error{Kind: ErrorKind(status), Message: msg})
}

// ParseLogOptions reads LogOptions from query parameters (the names in LogsPath); a bad
// value is an error of kind Invalid naming the parameter.
func ParseLogOptions(q url.Values) (LogOptions, error) {
	var o LogOptions
	var err error
	boolean := func(name string, dst *bool) {
		if s := q.Get(name); s != "" && err == nil {
			b, perr := strconv.ParseBool(s)
			if perr != nil {
				err = Errorf(KindInvalid, "query parameter %s: %q is not a boolean", name, s)
			}
			*dst = b
		}
	}
	integer := func(name string) *int64 {
		s := q.Get(name)
		if s == "" || err != nil {
			return nil
		}
		n, perr := strconv.ParseInt(s, 10, 64)
		if perr != nil || n < 0 {
			err = Errorf(KindInvalid, "query parameter %s: %q is not a non-negative integer", name, s)
			return nil
		}
		return &n
	}
	boolean("follow", &o.Follow)
	boolean("previous", &o.Previous)
	boolean("timestamps", &o.Timestamps)
	o.TailLines = integer("tail")
	o.LimitBytes = integer("limitBytes")
	o.SinceSeconds = integer("since")
	if s := q.Get("sinceTime"); s != "" && err == nil {
		t, perr := time.Parse(time.RFC3339Nano, s)
		if perr != nil {
			err = Errorf(KindInvalid, "query parameter sinceTime: %q is not an RFC 3339 time", s)
		} else {
			o.SinceTime = &t
		}
	}
	return o, err
}

// EncodeLogOptions is the inverse of ParseLogOptions.
func EncodeLogOptions(o LogOptions) url.Values {
	q := url.Values{}
	if o.Follow {
		q.Set("follow", "true")
	}
	if o.Previous {
		q.Set("previous", "true")
	}
	if o.Timestamps {
		q.Set("timestamps", "true")
	}
	if o.TailLines != nil {
		q.Set("tail", fmt.Sprint(*o.TailLines))
	}
	if o.LimitBytes != nil {
		q.Set("limitBytes", fmt.Sprint(*o.LimitBytes))
	}
	if o.SinceSeconds != nil {
		q.Set("since", fmt.Sprint(*o.SinceSeconds))
	}
	if o.SinceTime != nil {
		q.Set("sinceTime", o.SinceTime.Format(time.RFC3339Nano))
	}
	return q
}
