// Package sdkhttp provides the HTTP client Kip gives AWS SDK clients.
//
// smithy-go's ClientHandler closes a request's body as soon as http.Client.Do returns. Go's
// transport may still be reading that body then (after the server has answered, it reads once
// more to see EOF), and an error there makes it close the connection under the response being
// read: the call fails with "use of closed network connection" while decoding a good response.
// The EC2 fake in internal/cloud/aws/ec2fake shows it within a few calls of large responses
// (a traced close points at the transport's writeLoop). This is the failure reported upstream
// as aws/aws-sdk-go-v2#1825 and #2737; the SDK now retries net.ErrClosed (PR #2949), which
// hides it when retries are on but spends an attempt each time.
// Client reads the body into memory first (EC2 and Price List request bodies are small forms
// or JSON documents) and gives the transport a copy nobody else closes.
package sdkhttp

import (
	"bytes"
	"fmt"
	"io"
	"net/http"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
)

// Doer is what SDK clients take as their HTTPClient option.
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

// Client wraps an SDK HTTP client so that the transport owns each request body.
type Client struct {
	Doer Doer
}

// New returns a Client around the SDK's default buildable client.
func New() *Client { return Wrap(nil) }

// Wrap returns a Client around d (as loaded by config.LoadDefaultConfig, with its CA bundle and
// proxy settings), or around the SDK's default client when d is nil. Wrapping a Client again
// returns it unchanged.
func Wrap(d Doer) *Client {
	switch c := d.(type) {
	case nil:
		return &Client{Doer: awshttp.NewBuildableClient()}
	case *Client:
		return c
	}
	return &Client{Doer: d}
}

// Do sends r with a body the transport alone reads and closes.
func (c *Client) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, fmt.Errorf("reading the request body: %w", err)
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
		r.ContentLength = int64(len(b))
	}
	return c.Doer.Do(r)
}
