package cellapi

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The fuzz targets of the wire contract. Their seeds (below and in testdata/fuzz) run as
// ordinary tests; `make fuzz` explores from them (docs/fuzzing.md).

// FuzzDecodePodRequest: a body either decodes to a request with a pod, which encodes and
// decodes again to the same request, or fails with kind Invalid saying what was wrong.
func FuzzDecodePodRequest(f *testing.F) {
	for _, s := range []string{
		`{"pod":{"metadata":{"name":"p","uid":"u"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}}`,
		`{"pod":{"metadata":{"name":"p"}},"volumes":{"v":{"files":[{"path":"a","data":"aGk=","mode":420}]}},"pullSecrets":[{"server":"r:5000","username":"u","password":"p"}],"clusterDNS":["10.0.0.10"],"clusterDomain":"cluster.local"}`,
		`{"pod":null}`,
		`{}`,
		`{"pod":{}}{"pod":{}}`,
		`{"pod":{},"unknown":1}`,
		`{"pod":{"spec":{"containers":[{"name":"c","resources":{"limits":{"memory":"1Gi"}}}]}}}`,
		`[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := DecodePodRequest(bytes.NewReader(body))
		if err != nil {
			if !IsInvalid(err) {
				t.Fatalf("error %v has kind %d, want Invalid", err, KindOf(err))
			}
			if !strings.HasPrefix(err.Error(), "decoding pod request") && !strings.HasPrefix(err.Error(), "pod request: field pod") {
				t.Fatalf("error %q does not say it is about the pod request", err)
			}
			return
		}
		if req.Pod == nil {
			t.Fatal("decoded a request without a pod")
		}
		enc, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("encoding a decoded request: %v", err)
		}
		again, err := DecodePodRequest(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("the encoding of a decoded request does not decode: %v\n%s", err, enc)
		}
		enc2, _ := json.Marshal(again)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("round trip changed the request:\n%s\n%s", enc, enc2)
		}
	})
}

// FuzzParseLogOptions: query parameters either parse, and EncodeLogOptions gives them back,
// or fail with kind Invalid naming the parameter.
func FuzzParseLogOptions(f *testing.F) {
	for _, s := range []string{
		"", "follow=true&tail=10", "previous=1&timestamps=false&limitBytes=100&since=5",
		"sinceTime=2024-01-02T03:04:05.123456789%2B02:00", "tail=-1", "follow=yes", "sinceTime=yesterday",
		"since=99999999999999999999",
	} {
		f.Add(s)
	}
	names := []string{"follow", "previous", "timestamps", "tail", "limitBytes", "since", "sinceTime"}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		o, err := ParseLogOptions(q)
		if err != nil {
			if !IsInvalid(err) {
				t.Fatalf("error %v has kind %d, want Invalid", err, KindOf(err))
			}
			named := false
			for _, n := range names {
				named = named || strings.HasPrefix(err.Error(), "query parameter "+n+":")
			}
			if !named {
				t.Fatalf("error %q names no parameter", err)
			}
			return
		}
		back, err := ParseLogOptions(EncodeLogOptions(o))
		if err != nil {
			t.Fatalf("EncodeLogOptions(%+v) does not parse: %v", o, err)
		}
		if !sameLogOptions(o, back) {
			t.Fatalf("round trip changed the options: %+v → %+v", describe(o), describe(back))
		}
	})
}

func sameLogOptions(a, b LogOptions) bool {
	if (a.SinceTime == nil) != (b.SinceTime == nil) || (a.SinceTime != nil && !a.SinceTime.Equal(*b.SinceTime)) {
		return false
	}
	a.SinceTime, b.SinceTime = nil, nil
	return reflect.DeepEqual(a, b)
}

func describe(o LogOptions) string {
	b, _ := json.Marshal(o)
	return string(b)
}

type frame struct {
	kind    byte
	payload []byte
}

// frames reads r's frames until the first error, which it returns with them.
func frames(r io.Reader) ([]frame, error) {
	var out []frame
	for {
		k, p, err := readFrame(r)
		if err != nil {
			return out, err
		}
		out = append(out, frame{k, p})
	}
}

// rawFrames builds a stream from (kind, payload) pairs, for seeds.
func rawFrames(fs ...frame) []byte {
	var b bytes.Buffer
	for _, f := range fs {
		var hdr [5]byte
		hdr[0] = f.kind
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(f.payload)))
		b.Write(hdr[:])
		b.Write(f.payload)
	}
	return b.Bytes()
}

func streamSeeds(f *testing.F) {
	f.Add([]byte{})
	f.Add(rawFrames(frame{frameStdin, []byte("hello\n")}, frame{frameStdinEOF, nil}))
	f.Add(rawFrames(frame{frameResize, []byte(`{"width":80,"height":24}`)}, frame{frameStdin, []byte("x")}))
	f.Add(rawFrames(frame{frameStdout, []byte("out")}, frame{frameStderr, []byte("err")}, frame{frameExit, []byte(`{"code":3}`)}))
	f.Add(rawFrames(frame{frameExit, []byte(`{"code":1,"error":"no such container","kind":404}`)}))
	f.Add(rawFrames(frame{frameExit, []byte(`{"code":`)}))
	f.Add([]byte{frameStdin, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{frameStdin, 0, 0, 0, 9, 'a'})
	f.Add(rawFrames(frame{9, []byte("unknown kind")}, frame{frameStdin, []byte("after")}))
}

// FuzzFrames: whatever a stream holds, readFrame never returns a frame longer than maxFrame,
// and the frames it read, written again by frameWriter, read back the same.
func FuzzFrames(f *testing.F) {
	streamSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		got, _ := frames(bytes.NewReader(data))
		var buf bytes.Buffer
		fw := &frameWriter{w: &buf}
		for _, fr := range got {
			if len(fr.payload) > maxFrame {
				t.Fatalf("read a frame of %d bytes, more than maxFrame", len(fr.payload))
			}
			if err := fw.frame(fr.kind, fr.payload); err != nil {
				t.Fatal(err)
			}
		}
		again, err := frames(&buf)
		if err != io.EOF {
			t.Fatalf("re-encoded frames end with %v, want EOF", err)
		}
		if len(again) != len(got) {
			t.Fatalf("re-encoded %d frames, read back %d", len(got), len(again))
		}
		for i := range got {
			if got[i].kind != again[i].kind || !bytes.Equal(got[i].payload, again[i].payload) {
				t.Fatalf("frame %d changed in the round trip", i)
			}
		}
	})
}

// conn is a connection whose peer sent in and reads out.
type conn struct {
	io.Reader
	out bytes.Buffer
}

func (c *conn) Write(p []byte) (int, error) { return c.out.Write(p) }
func (c *conn) Close() error                { return nil }

// FuzzServeStream drives the agent's side of exec and attach with whatever a client sends.
// With stdin the command copies stdin to stdout, which must then carry exactly the payloads
// of the stdin frames before the first end-of-stdin frame or unreadable frame; without stdin
// the command waits for its context, which must end once the client's side of the stream
// ends. Either way the agent's last frame is the exit frame, and nothing follows it.
func FuzzServeStream(f *testing.F) {
	streamSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, stdin := range []bool{true, false} {
			c := &conn{Reader: bytes.NewReader(data)}
			serveStream(context.Background(), stdin, c, func(ctx context.Context, stdio ExecIO) (int, error) {
				if stdin {
					_, err := io.Copy(stdio.Stdout, stdio.Stdin)
					return 7, err
				}
				select {
				case <-ctx.Done():
					return 7, nil
				case <-time.After(10 * time.Second): // a hang guard, not a timing assertion
					t.Fatal("the stream's context did not end after the client's side of the stream ended")
					return 0, nil
				}
			})
			out, err := frames(&c.out)
			if err != io.EOF || len(out) == 0 {
				t.Fatalf("stdin %v: agent wrote %d frames ending in %v", stdin, len(out), err)
			}
			last := out[len(out)-1]
			var ef exitFrame
			if last.kind != frameExit || json.Unmarshal(last.payload, &ef) != nil || ef.Code != 7 {
				t.Fatalf("stdin %v: last frame is kind %d %q, want the exit frame with code 7", stdin, last.kind, last.payload)
			}
			var stdout bytes.Buffer
			for _, fr := range out[:len(out)-1] {
				if fr.kind != frameStdout {
					t.Fatalf("stdin %v: agent wrote a frame of kind %d", stdin, fr.kind)
				}
				stdout.Write(fr.payload)
			}
			var want bytes.Buffer
			if stdin {
				in, _ := frames(bytes.NewReader(data))
				for _, fr := range in {
					if fr.kind == frameStdinEOF {
						break
					}
					if fr.kind == frameStdin {
						want.Write(fr.payload)
					}
				}
			}
			if !bytes.Equal(stdout.Bytes(), want.Bytes()) {
				t.Fatalf("stdin %v: stdout %q, want %q", stdin, stdout.Bytes(), want.Bytes())
			}
		}
	})
}

// FuzzClientExec drives kip's side of exec and attach with whatever an agent sends: it
// succeeds exactly when an exit frame with a valid body comes, returning its code (and its
// error, of its kind), after writing the stdout and stderr frames before it.
func FuzzClientExec(f *testing.F) {
	streamSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var stdout, stderr bytes.Buffer
		code, err := clientExec(context.Background(), &conn{Reader: bytes.NewReader(data)}, ExecOptions{}, ExecIO{Stdout: &stdout, Stderr: &stderr})

		in, _ := frames(bytes.NewReader(data))
		var wantOut, wantErr bytes.Buffer
		var exit *exitFrame
		badExit := false
		for _, fr := range in {
			if fr.kind == frameExit {
				exit = &exitFrame{}
				badExit = json.Unmarshal(fr.payload, exit) != nil
				break
			}
			switch fr.kind {
			case frameStdout:
				wantOut.Write(fr.payload)
			case frameStderr:
				wantErr.Write(fr.payload)
			}
		}
		if !bytes.Equal(stdout.Bytes(), wantOut.Bytes()) || !bytes.Equal(stderr.Bytes(), wantErr.Bytes()) {
			t.Fatalf("stdout %q stderr %q, want %q %q", stdout.Bytes(), stderr.Bytes(), wantOut.Bytes(), wantErr.Bytes())
		}
		switch {
		case exit == nil || badExit:
			if err == nil || code != -1 {
				t.Fatalf("no valid exit frame, but clientExec = %d, %v", code, err)
			}
		case exit.Error != "":
			if err == nil || err.Error() != exit.Error || KindOf(err) != exit.Kind || code != exit.Code {
				t.Fatalf("exit frame %+v, but clientExec = %d, %v (kind %d)", exit, code, err, KindOf(err))
			}
		default:
			if err != nil || code != exit.Code {
				t.Fatalf("exit frame %+v, but clientExec = %d, %v", exit, code, err)
			}
		}
	})
}
