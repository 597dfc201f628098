package cellapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/pki"
)

// fakeAgent is an in-memory Agent for the wire tests.
type fakeAgent struct {
	mu      sync.Mutex
	pod     *cellapi.PodRequest
	status  *cellapi.PodStatus
	grace   time.Duration
	logOpts cellapi.LogOptions
	updates chan *cellapi.PodStatus
}

func (f *fakeAgent) PutPod(_ context.Context, req *cellapi.PodRequest) (*cellapi.PodStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pod != nil && f.pod.Pod.UID != req.Pod.UID {
		return nil, cellapi.Errorf(cellapi.KindConflict, "pod %s already runs here", f.pod.Pod.UID)
	}
	f.pod = req
	f.status = &cellapi.PodStatus{UID: string(req.Pod.UID), Seq: 1, Phase: corev1.PodPending}
	return f.status, nil
}

func (f *fakeAgent) GetPod(context.Context) (*cellapi.PodStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.status == nil {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "no pod")
	}
	return f.status, nil
}

func (f *fakeAgent) WatchPod(ctx context.Context) (<-chan *cellapi.PodStatus, error) {
	out := make(chan *cellapi.PodStatus)
	go func() {
		defer close(out)
		for {
			select {
			case st := <-f.updates:
				select {
				case out <- st:
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func (f *fakeAgent) DeletePod(_ context.Context, grace time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.grace = grace
	return nil
}

func (f *fakeAgent) Logs(_ context.Context, c string, o cellapi.LogOptions) (io.ReadCloser, error) {
	if c != "app" {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "container %q not found", c)
	}
	f.mu.Lock()
	f.logOpts = o
	f.mu.Unlock()
	return io.NopCloser(strings.NewReader("hello\n")), nil
}

func (f *fakeAgent) Stats(context.Context) (*cellapi.Stats, error) {
	return &cellapi.Stats{Cell: cellapi.Usage{CPUUsageNanoSeconds: 7}}, nil
}

func (f *fakeAgent) Health(context.Context) (*cellapi.Health, error) {
	return &cellapi.Health{CellID: "cell-1", Version: "test"}, nil
}

type rig struct {
	srv    *httptest.Server
	ca     *pki.CA
	agent  *fakeAgent
	client *cellapi.Client
}

func newRig(t *testing.T) *rig {
	t.Helper()
	fa := &fakeAgent{updates: make(chan *cellapi.PodStatus)}
	return newRigFor(t, fa, fa)
}

// newRigFor serves agent (which embeds or is fa).
func newRigFor(t *testing.T, agent cellapi.Agent, fa *fakeAgent) *rig {
	t.Helper()
	return newRigWrapped(t, agent, fa, nil)
}

// newRigWrapped serves agent through wrap (nil: as it is).
func newRigWrapped(t *testing.T, agent cellapi.Agent, fa *fakeAgent, wrap func(http.Handler) http.Handler) *rig {
	t.Helper()
	ca, err := pki.NewCA("kip-test")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := ca.Issue(pki.LeafSpec{CommonName: "cell-1", DNSNames: []string{"cell-1"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	stls, err := pki.ServerTLS(ca.CertPEM, srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	var hd http.Handler = cellapi.Handler(agent, cellapi.HandlerOptions{})
	if wrap != nil {
		hd = wrap(hd)
	}
	srv := httptest.NewUnstartedServer(hd)
	srv.TLS = stls
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	r := &rig{srv: srv, ca: ca, agent: fa}
	r.client = r.clientFor(t, ca, "cell-1")
	return r
}

func (r *rig) clientFor(t *testing.T, signer *pki.CA, serverName string) *cellapi.Client {
	t.Helper()
	cert, key, err := signer.Issue(pki.LeafSpec{CommonName: "kip", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	ctls, err := pki.ClientTLS(r.ca.CertPEM, cert, key, serverName)
	if err != nil {
		t.Fatal(err)
	}
	c := cellapi.NewClient(r.srv.URL, ctls)
	t.Cleanup(c.Close)
	return c
}

func testPod(uid string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default", UID: types.UID(uid)},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox"}}},
	}
}

func TestClientRoundTrip(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()

	if _, err := r.client.GetPod(ctx); !cellapi.IsNotFound(err) {
		t.Fatalf("GetPod before put: want NotFound, got %v", err)
	}
	st, err := r.client.PutPod(ctx, &cellapi.PodRequest{Pod: testPod("u1")})
	if err != nil || st.UID != "u1" || st.Phase != corev1.PodPending {
		t.Fatalf("PutPod = %+v, %v", st, err)
	}
	if _, err := r.client.PutPod(ctx, &cellapi.PodRequest{Pod: testPod("u2")}); !cellapi.IsConflict(err) {
		t.Fatalf("PutPod other UID: want Conflict, got %v", err)
	}
	if st, err := r.client.GetPod(ctx); err != nil || st.UID != "u1" {
		t.Fatalf("GetPod = %+v, %v", st, err)
	}
	if err := r.client.DeletePod(ctx, 3*time.Second); err != nil || r.agent.grace != 3*time.Second {
		t.Fatalf("DeletePod: err %v, grace seen %v", err, r.agent.grace)
	}
	h, err := r.client.Health(ctx)
	if err != nil || h.CellID != "cell-1" {
		t.Fatalf("Health = %+v, %v", h, err)
	}
	s, err := r.client.Stats(ctx)
	if err != nil || s.Cell.CPUUsageNanoSeconds != 7 {
		t.Fatalf("Stats = %+v, %v", s, err)
	}
	tail := int64(5)
	rc, err := r.client.Logs(ctx, "app", cellapi.LogOptions{Follow: true, Timestamps: true, TailLines: &tail})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "hello\n" || !r.agent.logOpts.Follow || !r.agent.logOpts.Timestamps || *r.agent.logOpts.TailLines != 5 {
		t.Fatalf("Logs = %q, options seen %+v", b, r.agent.logOpts)
	}
	if _, err := r.client.Logs(ctx, "nope", cellapi.LogOptions{}); !cellapi.IsNotFound(err) {
		t.Fatalf("Logs of unknown container: want NotFound, got %v", err)
	}
}

func TestWatchStreamsEachUpdate(t *testing.T) {
	r := newRig(t)
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := r.client.WatchPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		r.agent.updates <- &cellapi.PodStatus{UID: "u", Seq: seq}
		select {
		case st := <-ch:
			if st.Seq != seq {
				t.Fatalf("got seq %d, want %d", st.Seq, seq)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("update %d not delivered (stream not flushed?)", seq)
		}
	}
	cancel()
	for range ch { // must close after cancel
	}
}

func TestBadInputGetsClearErrors(t *testing.T) {
	r := newRig(t)
	cert, key, err := r.ca.Issue(pki.LeafSpec{CommonName: "kip", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	ctls, err := pki.ClientTLS(r.ca.CertPEM, cert, key, "cell-1")
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ctls}}
	defer hc.CloseIdleConnections()
	cases := []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"malformed json", "PUT", cellapi.PodPath, `{"pod": {`, 400, "decoding pod request"},
		{"unknown top field", "PUT", cellapi.PodPath, `{"pod":{"metadata":{"uid":"x"}},"bogus":1}`, 400, `unknown field \"bogus\"`},
		{"unknown nested field", "PUT", cellapi.PodPath, `{"pod":{"spec":{"containerz":[]}}}`, 400, `unknown field \"containerz\"`},
		{"missing pod", "PUT", cellapi.PodPath, `{}`, 400, "field pod is required"},
		{"trailing data", "PUT", cellapi.PodPath, `{"pod":{}} {}`, 400, "trailing data"},
		{"bad grace", "DELETE", cellapi.PodPath + "?grace=soon", "", 400, "grace"},
		{"bad tail", "GET", cellapi.LogsPath + "app?tail=-1", "", 400, "tail"},
		{"bad follow", "GET", cellapi.LogsPath + "app?follow=maybe", "", 400, "follow"},
		{"other version", "GET", "/v2/pod", "", 501, "serves v1"},
		{"exec reserved", "GET", cellapi.ExecPath + "app", "", 501, "not implemented"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, r.srv.URL+tc.path, strings.NewReader(tc.body))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !bytes.Contains(b, []byte(tc.want)) {
				t.Fatalf("status %d body %s; want %d containing %q", resp.StatusCode, b, tc.status, tc.want)
			}
		})
	}
	// The agent still serves after all of that.
	if _, err := r.client.Health(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func TestAuthentication(t *testing.T) {
	r := newRig(t)
	// No client certificate: health works, everything else is 401.
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.ca.Pool(), ServerName: "cell-1"}}}
	defer anon.CloseIdleConnections()
	for _, tc := range []struct {
		path   string
		status int
	}{{cellapi.HealthPath, 200}, {cellapi.PodPath, 401}, {cellapi.StatsPath, 401}, {cellapi.WatchPath, 401}, {cellapi.LogsPath + "app", 401}, {"/v9/x", 401}} {
		resp, err := anon.Get(r.srv.URL + tc.path)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("anonymous GET %s = %d, want %d", tc.path, resp.StatusCode, tc.status)
		}
	}

	// A certificate from another CA is refused during the handshake.
	other, err := pki.NewCA("intruder")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.clientFor(t, other, "cell-1").GetPod(t.Context()); err == nil {
		t.Fatal("client certificate from another CA was accepted")
	}

	// The agent's certificate must name the cell kip expects.
	if _, err := r.clientFor(t, r.ca, "cell-2").Health(t.Context()); err == nil {
		t.Fatal("client accepted an agent certificate naming another cell")
	} else if !errors.As(err, new(*tls.CertificateVerificationError)) {
		t.Logf("wrong-cell error: %v", err)
	}
}

// streamingAgent adds exec and port-forward to fakeAgent.
type streamingAgent struct {
	*fakeAgent
}

func (s streamingAgent) Exec(ctx context.Context, container string, opts cellapi.ExecOptions, stdio cellapi.ExecIO) (int, error) {
	if container != "app" {
		return -1, cellapi.Errorf(cellapi.KindNotFound, "container %q is not running", container)
	}
	if opts.Stdin {
		io.Copy(stdio.Stdout, stdio.Stdin)
	}
	if opts.TTY {
		ts := <-stdio.Resize
		fmt.Fprintf(stdio.Stdout, " %dx%d", ts.Width, ts.Height)
	}
	fmt.Fprint(stdio.Stderr, strings.Join(opts.Command, " "))
	return 3, nil
}

func (s streamingAgent) PortForward(ctx context.Context, port int32, conn io.ReadWriteCloser) error {
	defer conn.Close()
	if port == 9999 { // nothing listens there: fail before using conn, as the agent does
		return cellapi.Errorf(cellapi.KindNotFound, "port %d: connection refused", port)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	fmt.Fprintf(conn, "%d:%s", port, buf)
	return nil
}

func TestExecAndPortForwardStreams(t *testing.T) {
	r := newRig(t)
	// A plain Agent has no streams.
	if _, err := r.client.Exec(t.Context(), "app", cellapi.ExecOptions{Command: []string{"x"}}, cellapi.ExecIO{}); cellapi.KindOf(err) != cellapi.KindBadVersion {
		t.Fatalf("exec on a plain agent: %v, want BadVersion", err)
	}

	r.srv.Config.Handler = cellapi.Handler(streamingAgent{r.agent}, cellapi.HandlerOptions{})
	var out, errb bytes.Buffer
	resize := make(chan cellapi.TermSize, 1)
	resize <- cellapi.TermSize{Width: 80, Height: 24}
	code, err := r.client.Exec(t.Context(), "app", cellapi.ExecOptions{Command: []string{"cat", "-"}, Stdin: true, TTY: true},
		cellapi.ExecIO{Stdin: strings.NewReader(strings.Repeat("z", 3<<20)), Stdout: &out, Stderr: &errb, Resize: resize})
	if err != nil || code != 3 || out.Len() != 3<<20+len(" 80x24") || !strings.HasSuffix(out.String(), "zzz 80x24") || errb.String() != "cat -" {
		t.Fatalf("exec = %d, %v, stdout %d bytes, stderr %q", code, err, out.Len(), errb.String())
	}
	if _, err := r.client.Exec(t.Context(), "nope", cellapi.ExecOptions{Command: []string{"x"}}, cellapi.ExecIO{}); !cellapi.IsNotFound(err) {
		t.Fatalf("exec in a missing container: %v, want NotFound", err)
	}
	if _, err := r.client.Exec(t.Context(), "app", cellapi.ExecOptions{}, cellapi.ExecIO{}); !cellapi.IsInvalid(err) {
		t.Fatalf("exec without a command: %v, want Invalid", err)
	}

	local, remote := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- r.client.PortForward(t.Context(), 8080, remote) }()
	io.WriteString(local, "ping")
	got, _ := io.ReadAll(local)
	if string(got) != "8080:ping" {
		t.Fatalf("port-forwarded %q", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := r.client.PortForward(t.Context(), 0, nopRWC{}); !cellapi.IsInvalid(err) {
		t.Fatalf("port 0: %v, want Invalid", err)
	}
	// A port the agent cannot connect to is an error of the call (kubectl reports it), not a
	// stream that closes without a word.
	if err := r.client.PortForward(t.Context(), 9999, nopRWC{}); !cellapi.IsNotFound(err) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("refused port: %v, want NotFound naming the refusal", err)
	}
}

type nopRWC struct{}

func (nopRWC) Read([]byte) (int, error)    { return 0, io.EOF }
func (nopRWC) Write(p []byte) (int, error) { return len(p), nil }
func (nopRWC) Close() error                { return nil }

// attachingAgent adds attach to fakeAgent: it echoes stdin with the options it got.
type attachingAgent struct {
	*fakeAgent
}

func (a attachingAgent) Attach(_ context.Context, container string, opts cellapi.AttachOptions, stdio cellapi.ExecIO) error {
	if container != "app" {
		return cellapi.Errorf(cellapi.KindNotFound, "container %q is not running", container)
	}
	if opts.TTY {
		ts := <-stdio.Resize
		fmt.Fprintf(stdio.Stdout, "%dx%d ", ts.Width, ts.Height)
	}
	if opts.Stdin {
		io.Copy(stdio.Stdout, stdio.Stdin)
	} else if stdio.Stdin != nil {
		return cellapi.Errorf(cellapi.KindInternal, "stdin given without opts.Stdin")
	}
	fmt.Fprint(stdio.Stderr, "err")
	return nil
}

func TestAttachStreams(t *testing.T) {
	r := newRig(t)
	// A plain Agent cannot attach.
	if err := r.client.Attach(t.Context(), "app", cellapi.AttachOptions{}, cellapi.ExecIO{}); cellapi.KindOf(err) != cellapi.KindBadVersion {
		t.Fatalf("attach on a plain agent: %v, want BadVersion", err)
	}
	r.srv.Config.Handler = cellapi.Handler(attachingAgent{r.agent}, cellapi.HandlerOptions{})
	tests := []struct {
		name             string
		opts             cellapi.AttachOptions
		wantOut, wantErr string
	}{
		{name: "output only", wantOut: "", wantErr: "err"},
		{name: "stdin", opts: cellapi.AttachOptions{Stdin: true}, wantOut: "hello\n", wantErr: "err"},
		{name: "tty", opts: cellapi.AttachOptions{Stdin: true, TTY: true}, wantOut: "100x30 hello\n", wantErr: "err"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			resize := make(chan cellapi.TermSize, 1)
			resize <- cellapi.TermSize{Width: 100, Height: 30}
			stdio := cellapi.ExecIO{Stdout: &out, Stderr: &errb, Resize: resize}
			if tc.opts.Stdin {
				stdio.Stdin = strings.NewReader("hello\n")
			}
			if err := r.client.Attach(t.Context(), "app", tc.opts, stdio); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.wantOut || errb.String() != tc.wantErr {
				t.Fatalf("stdout %q, stderr %q; want %q, %q", out.String(), errb.String(), tc.wantOut, tc.wantErr)
			}
		})
	}
	if err := r.client.Attach(t.Context(), "nope", cellapi.AttachOptions{}, cellapi.ExecIO{}); !cellapi.IsNotFound(err) {
		t.Fatalf("attach to a missing container: %v, want NotFound", err)
	}
}
