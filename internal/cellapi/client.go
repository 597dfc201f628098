package cellapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DialTimeout bounds opening a connection to an agent, whatever the caller's deadline.
const DialTimeout = 10 * time.Second

// Client implements Agent over HTTPS with mutual TLS.
type Client struct {
	base string
	hc   *http.Client
	// stream is an HTTP/1.1-only client for upgraded exec and port-forward connections.
	stream *http.Client
}

var (
	_ Agent    = (*Client)(nil)
	_ Streamer = (*Client)(nil)
)

// NewClient returns a client for the agent at baseURL (https://host:port). tlsConfig is
// normally pki.ClientTLS(ca, cert, key, cellID): it presents kip's client certificate and
// checks that the agent's certificate names the cell kip launched.
func NewClient(baseURL string, tlsConfig *tls.Config) *Client {
	dialer := &net.Dialer{Timeout: DialTimeout, KeepAlive: 15 * time.Second}
	tr := &http.Transport{
		DialContext:         dialer.DialContext,
		TLSClientConfig:     tlsConfig,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
		// A connection to a cell cut off the network hangs without an error (no RST comes
		// back) and every request multiplexed on it would hang too: ping a connection quiet
		// for SendPingTimeout and close it when the answer takes longer than PingTimeout, so
		// the next request dials afresh.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 2 * time.Second, PingTimeout: 2 * time.Second},
	}
	var stls *tls.Config
	if tlsConfig != nil {
		stls = tlsConfig.Clone()
		stls.NextProtos = []string{"http/1.1"}
	}
	// Upgrades are answered at once (101 or an error): bound the wait, since the request
	// itself outlives its caller's context.
	str := &http.Transport{DialContext: dialer.DialContext, TLSClientConfig: stls, TLSHandshakeTimeout: 10 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second, DisableKeepAlives: true}
	return &Client{base: strings.TrimRight(baseURL, "/"), hc: &http.Client{Transport: tr}, stream: &http.Client{Transport: str}}
}

// Exec implements Streamer.
func (c *Client) Exec(ctx context.Context, container string, opts ExecOptions, stdio ExecIO) (int, error) {
	q := url.Values{"command": opts.Command}
	if opts.Stdin {
		q.Set("stdin", "true")
	}
	if opts.TTY {
		q.Set("tty", "true")
	}
	conn, err := c.upgrade(ctx, ExecPath+url.PathEscape(container)+"?"+q.Encode())
	if err != nil {
		return -1, fmt.Errorf("executing in container %s: %w", container, err)
	}
	defer conn.Close()
	return clientExec(ctx, conn, opts, stdio)
}

// Attach implements Attacher. An agent without the route answers with an error of kind
// BadVersion (or NotFound from an older agent's catch-all).
func (c *Client) Attach(ctx context.Context, container string, opts AttachOptions, stdio ExecIO) error {
	q := url.Values{}
	if opts.Stdin {
		q.Set("stdin", "true")
	}
	if opts.TTY {
		q.Set("tty", "true")
	}
	conn, err := c.upgrade(ctx, AttachPath+url.PathEscape(container)+"?"+q.Encode())
	if err != nil {
		return fmt.Errorf("attaching to container %s: %w", container, err)
	}
	defer conn.Close()
	return clientAttach(ctx, conn, opts, stdio)
}

var _ Attacher = (*Client)(nil)

// PortForward implements Streamer.
func (c *Client) PortForward(ctx context.Context, port int32, conn io.ReadWriteCloser) error {
	up, err := c.upgrade(ctx, fmt.Sprintf("%s%d", PortForwardPath, port))
	if err != nil {
		conn.Close()
		return fmt.Errorf("forwarding port %d: %w", port, err)
	}
	stop := context.AfterFunc(ctx, func() { up.Close(); conn.Close() })
	defer stop()
	pipe(up, conn)
	return nil
}

func (c *Client) upgrade(ctx context.Context, path string) (io.ReadWriteCloser, error) {
	req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodPost, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", StreamProtocol)
	resp, err := c.stream.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, errorFrom(resp)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, fmt.Errorf("the agent's upgraded connection is not writable")
	}
	return rwc, nil
}

// Close drops idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// PutPod implements Agent.
func (c *Client) PutPod(ctx context.Context, req *PodRequest) (*PodStatus, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encoding pod request: %w", err)
	}
	var st PodStatus
	if err := c.doJSON(ctx, http.MethodPut, PodPath, bytes.NewReader(body), &st); err != nil {
		return nil, fmt.Errorf("putting pod: %w", err)
	}
	return &st, nil
}

// GetPod implements Agent.
func (c *Client) GetPod(ctx context.Context) (*PodStatus, error) {
	var st PodStatus
	if err := c.doJSON(ctx, http.MethodGet, PodPath, nil, &st); err != nil {
		return nil, fmt.Errorf("getting pod: %w", err)
	}
	return &st, nil
}

// DeletePod implements Agent.
func (c *Client) DeletePod(ctx context.Context, grace time.Duration) error {
	q := url.Values{"grace": {grace.String()}}
	if err := c.doJSON(ctx, http.MethodDelete, PodPath+"?"+q.Encode(), nil, nil); err != nil {
		return fmt.Errorf("deleting pod: %w", err)
	}
	return nil
}

// WatchPod implements Agent. The channel closes when ctx ends or the stream breaks.
func (c *Client) WatchPod(ctx context.Context) (<-chan *PodStatus, error) {
	msgs, _, err := c.watch(ctx, 0)
	if err != nil {
		return nil, err
	}
	ch := make(chan *PodStatus)
	go func() {
		defer close(ch)
		for m := range msgs {
			if m.Status == nil {
				continue
			}
			select {
			case ch <- m.Status:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// WatchPodHeartbeats implements HeartbeatWatcher. The channel closes when ctx ends or the
// stream breaks.
func (c *Client) WatchPodHeartbeats(ctx context.Context, every time.Duration) (<-chan WatchMessage, bool, error) {
	return c.watch(ctx, every)
}

var _ HeartbeatWatcher = (*Client)(nil)

// watch opens the status stream, asking for heartbeats every interval unless it is 0.
func (c *Client) watch(ctx context.Context, every time.Duration) (<-chan WatchMessage, bool, error) {
	path := WatchPath
	if every > 0 {
		path += "?" + url.Values{HeartbeatParam: {every.String()}}.Encode()
	}
	resp, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, false, fmt.Errorf("watching pod: %w", err)
	}
	beats := every > 0 && resp.Header.Get(HeartbeatHeader) != ""
	ch := make(chan WatchMessage)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), MaxRequestBytes)
		for sc.Scan() {
			m, err := decodeWatchLine(sc.Bytes())
			if err != nil {
				return
			}
			select {
			case ch <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, beats, nil
}

// decodeWatchLine decodes one line of the status stream: a HeartbeatLine or a PodStatus.
func decodeWatchLine(line []byte) (WatchMessage, error) {
	var hb struct {
		Heartbeat *time.Time `json:"heartbeat"`
	}
	if err := json.Unmarshal(line, &hb); err != nil {
		return WatchMessage{}, fmt.Errorf("decoding status stream: %w", err)
	}
	if hb.Heartbeat != nil {
		return WatchMessage{}, nil
	}
	var st PodStatus
	if err := json.Unmarshal(line, &st); err != nil {
		return WatchMessage{}, fmt.Errorf("decoding status stream: %w", err)
	}
	return WatchMessage{Status: &st}, nil
}

// Logs implements Agent.
func (c *Client) Logs(ctx context.Context, container string, opts LogOptions) (io.ReadCloser, error) {
	path := LogsPath + url.PathEscape(container) + "?" + EncodeLogOptions(opts).Encode()
	resp, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, fmt.Errorf("reading logs of container %s: %w", container, err)
	}
	return resp.Body, nil
}

// Stats implements Agent.
func (c *Client) Stats(ctx context.Context) (*Stats, error) {
	var s Stats
	if err := c.doJSON(ctx, http.MethodGet, StatsPath, nil, &s); err != nil {
		return nil, fmt.Errorf("reading stats: %w", err)
	}
	return &s, nil
}

// Health implements Agent.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	if err := c.doJSON(ctx, http.MethodGet, HealthPath, nil, &h); err != nil {
		return nil, fmt.Errorf("checking health: %w", err)
	}
	return &h, nil
}

func (c *Client) doJSON(ctx context.Context, method, path string, body io.Reader, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding response: %w", err)
	}
	return nil
}

// do sends a request and turns a non-2xx answer into an *Error.
func (c *Client) do(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	return nil, errorFrom(resp)
}

// errorFrom turns a failed response into an *Error, closing its body.
func errorFrom(resp *http.Response) error {
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e Error
	if json.Unmarshal(raw, &e) != nil || e.Message == "" {
		e.Message = strings.TrimSpace(string(raw))
		if e.Message == "" {
			e.Message = resp.Status
		}
	}
	e.Kind = ErrorKind(resp.StatusCode)
	return &e
}
