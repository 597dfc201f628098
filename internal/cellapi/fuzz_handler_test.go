package cellapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cellapi"
)

// recordingAgent implements every interface Handler serves, never fails, and records what
// each call was given.
type recordingAgent struct {
	mu    sync.Mutex
	calls []string
	got   any
}

func (a *recordingAgent) record(name string, v any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, name)
	a.got = v
}

func (a *recordingAgent) PutPod(_ context.Context, req *cellapi.PodRequest) (*cellapi.PodStatus, error) {
	a.record("PutPod", req)
	return &cellapi.PodStatus{UID: string(req.Pod.UID)}, nil
}
func (a *recordingAgent) GetPod(context.Context) (*cellapi.PodStatus, error) {
	a.record("GetPod", nil)
	return &cellapi.PodStatus{UID: "u"}, nil
}
func (a *recordingAgent) WatchPod(context.Context) (<-chan *cellapi.PodStatus, error) {
	a.record("WatchPod", nil)
	ch := make(chan *cellapi.PodStatus, 1)
	ch <- &cellapi.PodStatus{UID: "u"}
	close(ch)
	return ch, nil
}
func (a *recordingAgent) DeletePod(_ context.Context, grace time.Duration) error {
	a.record("DeletePod", grace)
	return nil
}
func (a *recordingAgent) Logs(_ context.Context, c string, o cellapi.LogOptions) (io.ReadCloser, error) {
	a.record("Logs", o)
	return io.NopCloser(strings.NewReader("log line\n")), nil
}
func (a *recordingAgent) Stats(context.Context) (*cellapi.Stats, error) {
	a.record("Stats", nil)
	return &cellapi.Stats{}, nil
}
func (a *recordingAgent) Health(context.Context) (*cellapi.Health, error) {
	return &cellapi.Health{CellID: "c"}, nil
}
func (a *recordingAgent) PutServices(_ context.Context, t *cellapi.ServiceTable) (*cellapi.ServiceTableStatus, error) {
	a.record("PutServices", t)
	return &cellapi.ServiceTableStatus{}, nil
}
func (a *recordingAgent) UpdateVolumes(_ context.Context, u *cellapi.VolumeUpdate) (*cellapi.VolumeUpdateStatus, error) {
	a.record("UpdateVolumes", u)
	return &cellapi.VolumeUpdateStatus{}, nil
}
func (a *recordingAgent) PutEphemeralContainers(_ context.Context, e *cellapi.EphemeralContainers) (*cellapi.PodStatus, error) {
	a.record("PutEphemeralContainers", e)
	return &cellapi.PodStatus{}, nil
}
func (a *recordingAgent) Exec(context.Context, string, cellapi.ExecOptions, cellapi.ExecIO) (int, error) {
	a.record("Exec", nil)
	return 0, nil
}
func (a *recordingAgent) PortForward(context.Context, int32, io.ReadWriteCloser) error {
	a.record("PortForward", nil)
	return nil
}
func (a *recordingAgent) Attach(context.Context, string, cellapi.AttachOptions, cellapi.ExecIO) error {
	a.record("Attach", nil)
	return nil
}

var (
	_ cellapi.ServiceProgrammer = (*recordingAgent)(nil)
	_ cellapi.VolumeUpdater     = (*recordingAgent)(nil)
	_ cellapi.EphemeralRunner   = (*recordingAgent)(nil)
	_ cellapi.Streamer          = (*recordingAgent)(nil)
	_ cellapi.Attacher          = (*recordingAgent)(nil)
)

var fuzzMethods = []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodPatch, http.MethodHead}

// FuzzHandler sends the agent's HTTP handler any request from an authenticated client.
// Properties: no panic; the agent that never fails never causes a 5xx other than 501 for an
// unknown version; every error response is a JSON {"kind","message"} whose kind is the status
// and whose message is not empty; the agent is not called for a request answered 400; a PUT
// of the pod is accepted exactly when DecodePodRequest accepts its body, and the agent gets
// the decoded request.
func FuzzHandler(f *testing.F) {
	pod := `{"pod":{"metadata":{"name":"p","uid":"u"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}}`
	for _, s := range []struct {
		method            int
		path, query, body string
		upgrade           bool
	}{
		{1, cellapi.PodPath, "", pod, false},
		{1, cellapi.PodPath, "", `{"pod":{}} trailing`, false},
		{0, cellapi.PodPath, "", "", false},
		{3, cellapi.PodPath, "grace=5s", "", false},
		{3, cellapi.PodPath, "grace=-1s", "", false},
		{0, cellapi.WatchPath, "", "", false},
		{0, cellapi.LogsPath + "app", "tail=3&follow=true&sinceTime=2024-01-01T00:00:00Z", "", false},
		{0, cellapi.LogsPath + "app", "limitBytes=x", "", false},
		{0, cellapi.StatsPath, "", "", false},
		{1, cellapi.ServicesPath, "", `{"services":[{"namespace":"default","name":"s","clusterIP":"10.0.0.5","ports":[{"port":80,"protocol":"TCP"}]}]}`, false},
		{1, cellapi.VolumesPath, "", `{"uid":"u","volumes":{"v":{"files":[{"path":"a","data":"aGk="}]}}}`, false},
		{1, cellapi.VolumesPath, "", `{"volumes":{}}`, false},
		{1, cellapi.EphemeralPath, "", `{"uid":"u","containers":[{"name":"debug","image":"busybox"}]}`, false},
		{2, cellapi.ExecPath + "app", "command=sh&command=-c&stdin=true&tty=maybe", "", true},
		{2, cellapi.ExecPath + "app", "", "", true},
		{2, cellapi.AttachPath + "app", "stdin=1", "", true},
		{2, cellapi.PortForwardPath + "8080", "", "", true},
		{2, cellapi.PortForwardPath + "70000", "", "", true},
		{0, "/v2/pod", "", "", false},
		{0, "/v1/nothing", "", "", false},
		{4, "/v1/../v1/pod", "", "", false},
	} {
		f.Add(s.method, s.path, s.query, []byte(s.body), s.upgrade)
	}
	f.Fuzz(func(t *testing.T, method int, path, query string, body []byte, upgrade bool) {
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		m := fuzzMethods[uint(method)%uint(len(fuzzMethods))]
		req := &http.Request{
			Method:     m,
			URL:        &url.URL{Path: path, RawQuery: query},
			Proto:      "HTTP/1.1",
			ProtoMajor: 1, ProtoMinor: 1,
			Header:     http.Header{},
			Body:       io.NopCloser(bytes.NewReader(body)),
			Host:       "cell",
			RequestURI: (&url.URL{Path: path, RawQuery: query}).RequestURI(),
			TLS:        &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{}}}},
		}
		req = req.WithContext(context.Background())
		if upgrade {
			req.Header.Set("Upgrade", cellapi.StreamProtocol)
			req.Header.Set("Connection", "Upgrade")
		}
		agent := &recordingAgent{}
		rec := httptest.NewRecorder()
		cellapi.Handler(agent, cellapi.HandlerOptions{}).ServeHTTP(rec, req)

		res := rec.Result()
		if res.StatusCode >= 500 && res.StatusCode != http.StatusNotImplemented {
			t.Fatalf("%s %s?%s: status %d from an agent that never fails: %s", m, path, query, res.StatusCode, rec.Body.Bytes())
		}
		if res.StatusCode >= 400 && res.StatusCode != http.StatusMethodNotAllowed {
			var e cellapi.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Message == "" || int(e.Kind) != res.StatusCode {
				t.Fatalf("%s %s?%s: status %d with body %q, want a JSON error of that kind with a message", m, path, query, res.StatusCode, rec.Body.Bytes())
			}
			if res.StatusCode == http.StatusBadRequest && len(agent.calls) > 0 {
				t.Fatalf("%s %s?%s: answered 400 but called the agent: %v", m, path, query, agent.calls)
			}
		}
		if m == http.MethodPut && path == cellapi.PodPath {
			want, derr := cellapi.DecodePodRequest(bytes.NewReader(body))
			if (derr == nil) != (res.StatusCode == http.StatusOK) {
				t.Fatalf("PUT %s: status %d but DecodePodRequest says %v", path, res.StatusCode, derr)
			}
			if derr == nil {
				got, _ := json.Marshal(agent.got)
				exp, _ := json.Marshal(want)
				if !bytes.Equal(got, exp) {
					t.Fatalf("PUT %s: agent got\n%s\nwant\n%s", path, got, exp)
				}
			}
		}
	})
}
