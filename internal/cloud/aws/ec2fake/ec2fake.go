// Package ec2fake is a stateful fake of Amazon EC2 that speaks EC2's query protocol over HTTP:
// form-encoded requests (Action=...&Version=2016-11-15), XML responses in EC2's namespace and
// EC2's error document. The real aws-sdk-go-v2 EC2 client, pointed at it with BaseEndpoint and
// static credentials, exercises its own serialization, retries and error-code parsing.
//
// It keeps instances, tags, VPCs, subnets (with address allocation), security groups, images,
// instance types, offerings and spot prices. Instances move pending → running and
// shutting-down → terminated after delays measured on an injectable clock. It enforces EC2's
// throttling as token buckets (request-rate per action plus the RunInstances and
// TerminateInstances resource buckets), and injects capacity errors, arbitrary errors and
// latency. It counts calls per action. Reset restores the seeded state. New instances can be
// kept from DescribeInstances for a while (eventual consistency); ClientTokens are kept 24
// hours of the fake's clock; InterruptSpot sends a spot interruption notice and later
// terminates the instance.
//
// NewWithCells makes a fake whose instances are real cells on this machine (root): a network
// namespace on a bridge whose network is the fake's VPC, with the instance's private address;
// a cgroup sized to the instance type holding all its processes; its user data run as
// cloud-init runs a script (#!), in a private mount namespace; an instance metadata service
// (IMDSv1/v2) at 169.254.169.254 in each cell, answering by source address. Terminating an
// instance kills all its processes and removes its cell; Close removes them all.
// hack/tools/ec2fake runs it as a process.
package ec2fake

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cloud/aws/ec2limits"
)

// Namespace is the XML namespace of EC2 API version 2016-11-15 responses.
const Namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"

// APIVersion is the only EC2 API version the fake accepts.
const APIVersion = "2016-11-15"

// OwnerID is the account id the fake reports as the owner of what callers create.
const OwnerID = "123456789012"

// Options configures a Server. The zero value is usable: the real clock, no delays, no
// throttling, region us-east-1.
type Options struct {
	// Region names the region; zones are Region+"a" and Region+"b".
	Region string
	// Clock drives state transitions; nil means the real clock.
	Clock clock.PassiveClock
	// PendingDelay is how long an instance stays pending before it is running.
	PendingDelay time.Duration
	// ShutdownDelay is how long a terminated instance stays shutting-down.
	ShutdownDelay time.Duration
	// Limits enables throttling with these buckets; nil disables it. See
	// ec2limits.Published.
	Limits *ec2limits.Limits
	// Latency is added to every request before it is served.
	Latency time.Duration
	// DescribeDelay is how long a new instance stays invisible to DescribeInstances (EC2's
	// eventual consistency): a filtered listing leaves it out and naming its id is
	// InvalidInstanceID.NotFound. RunInstances with its ClientToken still returns it.
	DescribeDelay time.Duration
	// SpotNotice is how long after InterruptSpot (given no time) EC2 acts on a spot
	// instance. Default DefaultSpotNotice.
	SpotNotice time.Duration
}

// DefaultSpotNotice is the two minutes EC2 gives a spot instance between the interruption
// notice and the interruption.
const DefaultSpotNotice = 2 * time.Minute

// ClientTokenTTL is how long RunInstances remembers a ClientToken (EC2: at least 24 hours).
const ClientTokenTTL = 24 * time.Hour

// Server is the fake. It is an http.Handler; all methods are safe for concurrent use.
type Server struct {
	opts Options
	clk  clock.PassiveClock
	// cells is set in cell mode (NewWithCells); idBase is added to every new id's sequence.
	cells  *cellHost
	idBase uint64

	mu        sync.Mutex
	seq       int
	calls     map[string]int
	throttled map[string]int
	inject    map[string][]injected
	ice       map[string]bool // "type" or "type/zone"
	latency   time.Duration
	buckets   *buckets

	instances map[string]*instance
	order     []string // instance ids in launch order
	tokens    map[string]tokenEntry
	vpcs      map[string]*vpc
	subnets   map[string]*subnet
	groups    map[string]*securityGroup
	images    map[string]*image
	types     []InstanceType
	profiles  map[string]bool
}

type injected struct {
	code, message string
	status        int
}

// New returns a Server seeded with a default VPC (10.0.0.0/16), one subnet per zone, a few
// images and a small instance-type catalog (see Seed*).
func New(opts Options) *Server { return newServer(opts, nil, 0) }

func newServer(opts Options, cells *cellHost, idBase uint64) *Server {
	if opts.Region == "" {
		opts.Region = "us-east-1"
	}
	if opts.SpotNotice == 0 {
		opts.SpotNotice = DefaultSpotNotice
	}
	s := &Server{opts: opts, clk: opts.Clock, cells: cells, idBase: idBase}
	if s.clk == nil {
		s.clk = clock.RealClock{}
	}
	s.Reset()
	return s
}

// Reset restores the seeded state, clears counters and injected errors, and refills the
// throttling buckets. In cell mode it first removes every cell.
func (s *Server) Reset() {
	if s.cells != nil {
		s.mu.Lock()
		s.destroyAllLocked()
		s.mu.Unlock()
		s.cells.wg.Wait()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq = 0
	s.calls = map[string]int{}
	s.throttled = map[string]int{}
	s.inject = map[string][]injected{}
	s.ice = map[string]bool{}
	s.latency = s.opts.Latency
	s.buckets = newBuckets(s.opts.Limits)
	s.instances = map[string]*instance{}
	s.order = nil
	s.tokens = map[string]tokenEntry{}
	s.vpcs = map[string]*vpc{}
	s.subnets = map[string]*subnet{}
	s.groups = map[string]*securityGroup{}
	s.images = map[string]*image{}
	s.profiles = map[string]bool{InstanceProfile: true}
	s.seedLocked()
}

// Region returns the fake's region.
func (s *Server) Region() string { return s.opts.Region }

// Calls returns how many requests of action were received (throttled ones included).
func (s *Server) Calls(action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[action]
}

// CallCounts returns a copy of the per-action request counts.
func (s *Server) CallCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.calls))
	for k, v := range s.calls {
		out[k] = v
	}
	return out
}

// Throttled returns how many requests of action were refused with RequestLimitExceeded.
func (s *Server) Throttled(action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.throttled[action]
}

// TotalThrottled returns how many requests of any action were refused with RequestLimitExceeded.
func (s *Server) TotalThrottled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, v := range s.throttled {
		n += v
	}
	return n
}

// InjectError makes the next times requests of action fail with an EC2 error of that code.
func (s *Server) InjectError(action, code, message string, times int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range times {
		s.inject[action] = append(s.inject[action], injected{code: code, message: message, status: statusFor(code)})
	}
}

// SetInsufficientCapacity makes RunInstances of instanceType fail with
// InsufficientInstanceCapacity (in zone only, when zone is not empty) until cleared.
func (s *Server) SetInsufficientCapacity(instanceType, zone string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := instanceType
	if zone != "" {
		key += "/" + zone
	}
	if on {
		s.ice[key] = true
	} else {
		delete(s.ice, key)
	}
}

// SetNoSpotCapacity makes every spot RunInstances fail with InsufficientInstanceCapacity
// until cleared; on-demand requests are unaffected.
func (s *Server) SetNoSpotCapacity(on bool) {
	s.SetInsufficientCapacity("spot:*", "", on)
}

// SetLatency changes the latency added to every request.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// ServeHTTP serves one EC2 query-protocol request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	reqID := s.requestID()
	if r.Method != http.MethodPost {
		writeError(w, reqID, http.StatusBadRequest, "InvalidAction", "only POST is supported")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeError(w, reqID, http.StatusBadRequest, "InvalidParameterValue", "reading request body: "+err.Error())
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		writeError(w, reqID, http.StatusBadRequest, "InvalidParameterValue", "parsing form: "+err.Error())
		return
	}
	action := form.Get("Action")
	s.mu.Lock()
	s.calls[action]++
	lat := s.latency
	s.mu.Unlock()
	if lat > 0 {
		select {
		case <-time.After(lat):
		case <-r.Context().Done():
			return
		}
	}
	if v := form.Get("Version"); v != APIVersion {
		writeError(w, reqID, http.StatusBadRequest, "InvalidParameterValue", fmt.Sprintf("unsupported Version %q, want %s", v, APIVersion))
		return
	}
	h, ok := handlers[action]
	if !ok {
		writeError(w, reqID, http.StatusBadRequest, "InvalidAction", fmt.Sprintf("The action %s is not valid for this web service.", action))
		return
	}
	s.mu.Lock()
	if inj := s.inject[action]; len(inj) > 0 {
		s.inject[action] = inj[1:]
		s.mu.Unlock()
		writeError(w, reqID, inj[0].status, inj[0].code, inj[0].message)
		return
	}
	if !s.buckets.allowRequest(action, s.clk.Now()) {
		s.throttled[action]++
		s.mu.Unlock()
		writeError(w, reqID, http.StatusServiceUnavailable, "RequestLimitExceeded", "Request limit exceeded.")
		return
	}
	resp, apiErr := h(s, query(form))
	if apiErr == nil && resp == nil {
		apiErr = internalError("handler returned nothing")
	}
	s.mu.Unlock()
	if apiErr != nil {
		if apiErr.code == "RequestLimitExceeded" {
			s.mu.Lock()
			s.throttled[action]++
			s.mu.Unlock()
		}
		writeError(w, reqID, apiErr.status, apiErr.code, apiErr.message)
		return
	}
	writeResponse(w, action, reqID, resp)
}

// handler serves one action with s.mu held.
type handler func(s *Server, q query) (any, *apiError)

var handlers map[string]handler

func init() {
	handlers = map[string]handler{
		"RunInstances":                  (*Server).runInstances,
		"DescribeInstances":             (*Server).describeInstances,
		"TerminateInstances":            (*Server).terminateInstances,
		"CreateTags":                    (*Server).createTags,
		"DescribeImages":                (*Server).describeImages,
		"DescribeVpcs":                  (*Server).describeVpcs,
		"DescribeSubnets":               (*Server).describeSubnets,
		"DescribeSecurityGroups":        (*Server).describeSecurityGroups,
		"CreateSecurityGroup":           (*Server).createSecurityGroup,
		"AuthorizeSecurityGroupIngress": (*Server).authorizeSecurityGroupIngress,
		"DescribeInstanceTypes":         (*Server).describeInstanceTypes,
		"DescribeInstanceTypeOfferings": (*Server).describeInstanceTypeOfferings,
		"DescribeSpotPriceHistory":      (*Server).describeSpotPriceHistory,
		"DescribeRegions":               (*Server).describeRegions,
	}
}

// Actions returns the names of the actions the fake serves, sorted.
func Actions() []string {
	out := make([]string, 0, len(handlers))
	for a := range handlers {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

func (s *Server) requestID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	return fmt.Sprintf("00000000-0000-4000-8000-%012x", s.seq)
}

// nextID returns a fresh resource id with prefix, 17 hex digits like EC2's.
func (s *Server) nextID(prefix string) string {
	s.seq++
	return fmt.Sprintf("%s-%017x", prefix, s.idBase+uint64(s.seq))
}

// apiError is an EC2 error response.
type apiError struct {
	status        int
	code, message string
}

func errorf(code, format string, args ...any) *apiError {
	return &apiError{status: statusFor(code), code: code, message: fmt.Sprintf(format, args...)}
}

func internalError(msg string) *apiError {
	return &apiError{status: http.StatusInternalServerError, code: "InternalError", message: msg}
}

// statusFor returns the HTTP status EC2 uses for an error code: 503 for throttling, 500 for
// server-side errors (capacity, internal), 400 for client errors.
func statusFor(code string) int {
	switch code {
	case "RequestLimitExceeded", "Unavailable":
		return http.StatusServiceUnavailable
	case "InsufficientInstanceCapacity", "InternalError", "InsufficientCapacity":
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

type errorResponse struct {
	XMLName   xml.Name    `xml:"Response"`
	Errors    []errorItem `xml:"Errors>Error"`
	RequestID string      `xml:"RequestID"`
}

type errorItem struct {
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

func writeError(w http.ResponseWriter, reqID string, status int, code, message string) {
	var b bytes.Buffer
	b.WriteString(xml.Header)
	xml.NewEncoder(&b).Encode(errorResponse{Errors: []errorItem{{Code: code, Message: message}}, RequestID: reqID})
	writeXML(w, status, b.Bytes())
}

func writeResponse(w http.ResponseWriter, action, reqID string, resp any) {
	if h, ok := resp.(interface{ setRequestID(string) }); ok {
		h.setRequestID(reqID)
	}
	var b bytes.Buffer
	b.WriteString(xml.Header)
	start := xml.StartElement{Name: xml.Name{Local: action + "Response"}, Attr: []xml.Attr{{Name: xml.Name{Local: "xmlns"}, Value: Namespace}}}
	if err := xml.NewEncoder(&b).EncodeElement(resp, start); err != nil {
		writeError(w, reqID, http.StatusInternalServerError, "InternalError", "encoding the response: "+err.Error())
		return
	}
	writeXML(w, http.StatusOK, b.Bytes())
}

// writeXML sends a whole document with its length, as EC2 does, so that a client that stops
// reading at the document's end leaves nothing unread on the connection.
func writeXML(w http.ResponseWriter, status int, doc []byte) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(doc)))
	w.WriteHeader(status)
	w.Write(doc)
}

// header is embedded in every response document.
type header struct {
	RequestID string `xml:"requestId"`
}

func (h *header) setRequestID(id string) { h.RequestID = id }
