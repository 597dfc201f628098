package ec2fake

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// IMDSAddress is where instances reach the instance metadata service.
const IMDSAddress = "169.254.169.254"

// imdsTable is the nftables table in each cell's netns that sends IMDSAddress:80 to the
// fake's metadata server on the bridge.
const imdsTable = "ec2fake-imds"

// maxTokenTTL is IMDSv2's longest token lifetime, in seconds.
const maxTokenTTL = 21600

type connKey struct{}

// startIMDS serves the instance metadata service on the bridge address (an ephemeral port).
func (h *cellHost) startIMDS(s *Server) error {
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(h.bridgeIP, 0).String())
	if err != nil {
		return fmt.Errorf("ec2fake cells: listening for the metadata service: %w", err)
	}
	h.imdsAddr = netip.MustParseAddrPort(ln.Addr().String())
	h.imds = &http.Server{
		Handler:           http.HandlerFunc(s.serveIMDS),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext:       func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) },
	}
	go h.imds.Serve(ln)
	return nil
}

// imdsRoute programs the cell's netns: TCP to IMDSAddress:80 goes to the metadata server at
// to; anything else to IMDSAddress is rejected (it must not reach the host's own metadata
// service through the host's routes).
func imdsRoute(nsName string, to netip.AddrPort) error {
	ns, err := netns.GetFromName(nsName)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", nsName, err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("opening nftables in netns %s: %w", nsName, err)
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: imdsTable})
	accept := nftables.ChainPolicyAccept
	nat := c.AddChain(&nftables.Chain{Name: "output-nat", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	filter := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	imds := netip.MustParseAddr(IMDSAddress).AsSlice()
	daddr := func(ip []byte) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip},
		}
	}
	tcpPort := func(port uint16) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		}
	}
	// ip daddr 169.254.169.254 tcp dport 80 dnat to <bridge>:<port>
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: slices.Concat(daddr(imds), tcpPort(80), []expr.Any{
		&expr.Immediate{Register: 1, Data: to.Addr().AsSlice()},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(to.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	})})
	// ip daddr 169.254.169.254 reject (what the DNAT did not take)
	c.AddRule(&nftables.Rule{Table: t, Chain: filter, Exprs: append(daddr(imds),
		&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 13 /* ICMP_PKT_FILTERED */})})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("programming the metadata route in netns %s: %w", nsName, err)
	}
	return nil
}

// imdsView is what the metadata service needs of one instance, copied under the lock.
type imdsView struct {
	in       *instance
	tokens   string // "required" or "optional"
	hops     int
	endpoint string
	meta     map[string]string // path below /latest/meta-data/ → value
	userData []byte
	identity []byte
}

// imdsViewLocked finds the live instance with a cell at ip.
func (s *Server) imdsViewLocked(ip string, now time.Time) *imdsView {
	for _, id := range s.order {
		in := s.instances[id]
		if in.cell == nil || in.privateIP != ip || in.cell.destroyed {
			continue
		}
		v := &imdsView{in: in, tokens: in.metadata.HttpTokens, hops: in.metadata.HopLimit, endpoint: in.metadata.HttpEndpoint}
		v.userData, _ = base64.StdEncoding.DecodeString(in.userData)
		life := "on-demand"
		if in.spot {
			life = "spot"
		}
		host := privateDNSName(in.privateIP)
		v.meta = map[string]string{
			"ami-id": in.imageID, "ami-launch-index": "0", "instance-id": in.id, "instance-type": in.instanceType,
			"local-ipv4": in.privateIP, "local-hostname": host, "hostname": host, "instance-life-cycle": life,
			"mac": macOf(in.privateIP), "reservation-id": in.reservationID,
			"placement/availability-zone": in.zone, "placement/region": s.opts.Region,
		}
		if in.publicIP != "" {
			v.meta["public-ipv4"] = in.publicIP
		}
		var names []string
		for _, g := range in.groups {
			if sg := s.groups[g]; sg != nil {
				names = append(names, sg.name)
			}
		}
		v.meta["security-groups"] = strings.Join(names, "\n")
		if a := in.spotAction; a != nil {
			t := a.at.UTC().Format("2006-01-02T15:04:05Z")
			doc, _ := json.Marshal(map[string]string{"action": a.action, "time": t})
			v.meta["spot/instance-action"] = string(doc)
			v.meta["spot/termination-time"] = t
		}
		arch := "x86_64"
		if it, ok := s.typeByName(in.instanceType); ok {
			arch = it.Arch
		}
		v.identity, _ = json.MarshalIndent(map[string]any{
			"accountId": OwnerID, "architecture": arch, "availabilityZone": in.zone, "imageId": in.imageID,
			"instanceId": in.id, "instanceType": in.instanceType, "pendingTime": in.launched.UTC().Format(time.RFC3339),
			"privateIp": in.privateIP, "region": s.opts.Region, "version": "2017-09-30",
		}, "", "  ")
		return v
	}
	return nil
}

// macOf is the MAC local cells derive from their address.
func macOf(ip string) string {
	a := netip.MustParseAddr(ip).As4()
	return net.HardwareAddr{0x02, 0x00, a[0], a[1], a[2], a[3]}.String()
}

// serveIMDS answers one metadata request, for the instance whose address the request comes
// from (so no instance reads another's data).
func (s *Server) serveIMDS(w http.ResponseWriter, r *http.Request) {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	now := s.clk.Now()
	s.mu.Lock()
	v := s.imdsViewLocked(host, now)
	s.mu.Unlock()
	if v == nil {
		http.Error(w, "no instance at "+host, http.StatusForbidden)
		return
	}
	if v.endpoint == "disabled" {
		http.Error(w, "the instance metadata endpoint is disabled", http.StatusForbidden)
		return
	}
	if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
		s.imdsToken(w, r, v, now)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "OPTIONS, GET, HEAD, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if tok := r.Header.Get("X-aws-ec2-metadata-token"); tok != "" {
		s.mu.Lock()
		exp, ok := v.in.cell.imdsTokens[tok]
		s.mu.Unlock()
		if !ok || !now.Before(exp) {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
	} else if v.tokens == "required" {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	p := r.URL.Path
	switch {
	case p == "/latest/user-data":
		if len(v.userData) == 0 {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(v.userData)
	case p == "/latest/dynamic/instance-identity/document":
		w.Header().Set("Content-Type", "application/json")
		w.Write(v.identity)
	case p == "/latest/meta-data" || strings.HasPrefix(p, "/latest/meta-data/"):
		key := strings.TrimPrefix(strings.TrimPrefix(p, "/latest/meta-data"), "/")
		if val, ok := v.meta[key]; ok {
			if strings.HasPrefix(key, "spot/instance-action") {
				w.Header().Set("Content-Type", "application/json")
			}
			fmt.Fprint(w, val)
			return
		}
		if list := listing(v.meta, key); len(list) > 0 {
			fmt.Fprint(w, strings.Join(list, "\n"))
			return
		}
		http.NotFound(w, r)
	case p == "/latest" || p == "/latest/":
		fmt.Fprint(w, "dynamic\nmeta-data\nuser-data")
	default:
		http.NotFound(w, r)
	}
}

// listing returns the entries of the metadata directory dir ("" or "placement/"): leaves
// by name, directories with a trailing slash.
func listing(meta map[string]string, dir string) []string {
	if dir != "" && !strings.HasSuffix(dir, "/") {
		dir += "/"
	}
	seen := map[string]bool{}
	for k := range meta {
		rest, ok := strings.CutPrefix(k, dir)
		if !ok {
			continue
		}
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			rest = rest[:i+1]
		}
		seen[rest] = true
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// imdsToken issues an IMDSv2 session token. The response leaves with the instance's hop
// limit as its IP TTL, so a token request from a container behind the instance's own
// network (one more hop) gets no answer, as on EC2.
func (s *Server) imdsToken(w http.ResponseWriter, r *http.Request, v *imdsView, now time.Time) {
	if r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, "Forbidden", http.StatusForbidden)
		return
	}
	ttl, err := strconv.Atoi(r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds"))
	if err != nil || ttl < 1 || ttl > maxTokenTTL {
		http.Error(w, "Bad Request: X-aws-ec2-metadata-token-ttl-seconds must be 1 to 21600", http.StatusBadRequest)
		return
	}
	b := make([]byte, 42)
	if _, err := rand.Read(b); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	tok := base64.StdEncoding.EncodeToString(b)
	s.mu.Lock()
	v.in.cell.imdsTokens[tok] = now.Add(time.Duration(ttl) * time.Second)
	for t, exp := range v.in.cell.imdsTokens {
		if !now.Before(exp) {
			delete(v.in.cell.imdsTokens, t)
		}
	}
	s.mu.Unlock()
	if c, ok := r.Context().Value(connKey{}).(*net.TCPConn); ok {
		if rc, err := c.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, v.hops) })
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("X-aws-ec2-metadata-token-ttl-seconds", strconv.Itoa(ttl))
	fmt.Fprint(w, tok)
}

// InterruptSpot sends spot instance id an interruption notice: from now its metadata's
// spot/instance-action is {"action": action, "time": at}, and at that time EC2 takes the
// action. A zero at means now + Options.SpotNotice. The fake takes only "terminate".
func (s *Server) InterruptSpot(id, action string, at time.Time) error {
	if action != "terminate" {
		return fmt.Errorf("interrupting %s: the fake takes only the terminate action, not %q", id, action)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	if in == nil {
		return fmt.Errorf("interrupting %s: no such instance", id)
	}
	if !in.spot {
		return fmt.Errorf("interrupting %s: not a spot instance", id)
	}
	if !in.terminateAt.IsZero() {
		return fmt.Errorf("interrupting %s: already terminated", id)
	}
	now := s.clk.Now()
	if at.IsZero() {
		at = now.Add(s.opts.SpotNotice)
	}
	in.spotAction = &spotAction{action: action, at: at}
	s.sweepLocked(now)
	return nil
}
