package ec2fake

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// Seeded resource ids. New and Reset create these.
const (
	VPCID          = "vpc-0a000000000000001"
	VPCCIDR        = "10.0.0.0/16"
	SubnetA        = "subnet-0a000000000000001"
	SubnetB        = "subnet-0a000000000000002"
	DefaultGroupID = "sg-0a000000000000001"
	// ImageOwner owns the seeded kip-cell-* images.
	ImageOwner = OwnerID
	// InstanceProfile is an IAM instance profile the fake knows.
	InstanceProfile = "kip-cell"
)

// TerminatedRetention is how long a terminated instance stays visible to DescribeInstances.
const TerminatedRetention = time.Hour

type vpc struct {
	id, cidr string
	tags     map[string]string
}

type subnet struct {
	id, vpcID, zone string
	prefix          netip.Prefix
	mapPublicIP     bool
	used            map[netip.Addr]bool
	tags            map[string]string
}

// allocate returns a free address of the subnet, skipping the four addresses EC2 reserves at
// the start and the one at the end.
func (sn *subnet) allocate() (netip.Addr, bool) {
	a := sn.prefix.Masked().Addr()
	for range 4 {
		a = a.Next()
	}
	for ; sn.prefix.Contains(a); a = a.Next() {
		if !sn.prefix.Contains(a.Next()) {
			break // broadcast
		}
		if !sn.used[a] {
			sn.used[a] = true
			return a, true
		}
	}
	return netip.Addr{}, false
}

// release returns an address to the subnet.
func (sn *subnet) release(a netip.Addr) { delete(sn.used, a) }

func (sn *subnet) free() int {
	total := 1<<(sn.prefix.Addr().BitLen()-sn.prefix.Bits()) - 5
	return total - len(sn.used)
}

type permission struct {
	protocol string
	from, to int
	ranges   []ipRange
}

type ipRange struct{ cidr, desc string }

type securityGroup struct {
	id, name, desc, vpcID string
	ingress               []permission
	tags                  map[string]string
}

type image struct {
	id, name, owner, arch, created, rootDevice string
	sizeGiB                                    int
	tags                                       map[string]string
	// root is a directory holding what the image has baked in (SetImageRoot).
	root string
}

// InstanceType is an instance type the fake serves through DescribeInstanceTypes,
// DescribeInstanceTypeOfferings and DescribeSpotPriceHistory, and launches.
type InstanceType struct {
	Name string
	// Arch is EC2's spelling: "x86_64" or "arm64".
	Arch      string
	VCPU      int
	MemoryMiB int64
	GPUs      int
	GPUName   string
	// GPUVendor is the GPUs' manufacturer as EC2 spells it ("NVIDIA", "AMD"); empty means NVIDIA.
	GPUVendor string
	Burstable bool
	// Zones lists the zones offering it; empty means every zone of the region.
	Zones []string
	// OnDemandPrice and SpotPrice are USD per hour.
	OnDemandPrice, SpotPrice float64
}

type blockDevice struct {
	device, volumeID, volumeType string
	sizeGiB                      int
}

type instance struct {
	id, reservationID, imageID, instanceType, zone string
	subnetID, vpcID, clientToken, profile          string
	privateIP, publicIP                            string
	spot                                           bool
	userData                                       string
	metadata                                       MetadataOptions
	cpuCredits                                     string
	groups                                         []string
	devices                                        []blockDevice
	tags, volumeTags                               map[string]string
	launched                                       time.Time
	terminateAt                                    time.Time // zero while not terminated
	stateReason                                    string    // why it is terminated: "Code: message"
	released                                       bool      // its address went back to the subnet
	spotAction                                     *spotAction
	cell                                           *cellState // in cell mode
}

// spotAction is a spot interruption: the action EC2 takes on the instance at a time.
type spotAction struct {
	action string
	at     time.Time
}

// State reasons of terminated instances, as EC2 words them.
const (
	reasonUserShutdown = "Client.UserInitiatedShutdown: User initiated shutdown"
	reasonSpot         = "Server.SpotInstanceTermination: Spot instance termination"
	reasonLaunchError  = "Server.InternalError: Internal error on launch"
)

type tokenEntry struct {
	params string
	ids    []string
	at     time.Time
}

// state returns the instance's EC2 state name at now.
//
// In cell mode an instance is also pending until its cell is made, and shutting-down until
// its cell is removed.
func (s *Server) stateOf(in *instance, now time.Time) string {
	c := in.cell
	switch {
	case !in.terminateAt.IsZero() && c != nil && !c.destroyed:
		return "shutting-down"
	case !in.terminateAt.IsZero() && !now.Before(in.terminateAt.Add(s.opts.ShutdownDelay)):
		return "terminated"
	case !in.terminateAt.IsZero():
		return "shutting-down"
	case now.Before(in.launched.Add(s.opts.PendingDelay)) || c != nil && !c.booted:
		return "pending"
	}
	return "running"
}

var stateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48}

// sweepLocked carries out spot interruptions that are due, releases the addresses of
// terminated instances, forgets instances terminated longer than TerminatedRetention ago
// and client tokens older than ClientTokenTTL.
func (s *Server) sweepLocked(now time.Time) {
	for tok, e := range s.tokens {
		if now.Sub(e.at) >= ClientTokenTTL {
			delete(s.tokens, tok)
		}
	}
	kept := s.order[:0]
	for _, id := range s.order {
		in := s.instances[id]
		if a := in.spotAction; a != nil && in.terminateAt.IsZero() && !now.Before(a.at) {
			s.terminateLocked(in, a.at, reasonSpot)
		}
		if s.stateOf(in, now) == "terminated" {
			if sn := s.subnets[in.subnetID]; sn != nil && in.privateIP != "" && !in.released {
				delete(sn.used, netip.MustParseAddr(in.privateIP))
				in.released = true
			}
			if now.After(in.terminateAt.Add(s.opts.ShutdownDelay + TerminatedRetention)) {
				delete(s.instances, id)
				continue
			}
		}
		kept = append(kept, id)
	}
	s.order = kept
}

// AddSubnet adds a subnet of the seeded VPC in zone and returns its id.
func (s *Server) AddSubnet(cidr, zone string, mapPublicIP bool) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return "", fmt.Errorf("adding subnet: %w", err)
	}
	if s.cells != nil && (!s.cells.prefix.Contains(p.Addr()) || p.Bits() < s.cells.prefix.Bits()) {
		return "", fmt.Errorf("adding subnet: %s is not inside the cells' network %s", p, s.cells.prefix)
	}
	id := s.nextID("subnet")
	s.subnets[id] = &subnet{id: id, vpcID: VPCID, zone: zone, prefix: p, mapPublicIP: mapPublicIP, used: map[netip.Addr]bool{}, tags: map[string]string{}}
	return id, nil
}

// AddImage adds an image and returns its id. created is an RFC 3339 time.
func (s *Server) AddImage(name, owner, arch, created string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addImageLocked(name, owner, arch, created)
}

func (s *Server) addImageLocked(name, owner, arch, created string) string {
	id := s.nextID("ami")
	s.images[id] = &image{id: id, name: name, owner: owner, arch: arch, created: created, rootDevice: "/dev/xvda", sizeGiB: 2, tags: map[string]string{}}
	return id
}

// SetImageRoot makes dir the baked part of image id's filesystem ("" undoes it): in cell
// mode, each new instance of the image starts with its private directories (/opt/kip,
// /etc/kip, /var/lib/kip-cell, /etc/systemd/system, /var/log) copied from those under dir,
// as an AMI baked with deploy/ami/bake.sh --root dir would have them; the rest of an
// instance's filesystem is the host's, whatever dir holds. Reset keeps no root.
func (s *Server) SetImageRoot(id, dir string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	img := s.images[id]
	if img == nil {
		return fmt.Errorf("setting the root of image %s: no such image", id)
	}
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return fmt.Errorf("setting the root of image %s: %w", id, err)
		}
		if st, err := os.Stat(abs); err != nil || !st.IsDir() {
			return fmt.Errorf("setting the root of image %s: %s is not a directory", id, dir)
		}
		dir = abs
	}
	img.root = dir
	return nil
}

// SetInstanceTypes replaces the instance-type catalog.
func (s *Server) SetInstanceTypes(types []InstanceType) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.types = append([]InstanceType(nil), types...)
}

// InstanceTypes returns the instance-type catalog.
func (s *Server) InstanceTypes() []InstanceType {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]InstanceType(nil), s.types...)
}

// Instance is a snapshot of an instance for assertions.
type Instance struct {
	ID, ImageID, InstanceType, Zone, SubnetID, State string
	PrivateIP, PublicIP, ClientToken, Profile        string
	Spot                                             bool
	UserData                                         string
	SecurityGroups                                   []string
	Tags, VolumeTags                                 map[string]string
	RootVolumeGiB                                    int
	// Metadata is the instance metadata service's settings.
	Metadata MetadataOptions
	// StateReason is why a terminated instance ended ("Code: message"), else "".
	StateReason string
	// CPUCredits is the credit mode of a burstable instance ("standard", "unlimited"), or ""
	// when RunInstances did not say (EC2 then applies the account's default per family).
	CPUCredits string
}

// MetadataOptions are an instance's IMDS settings, with EC2's defaults for what RunInstances
// leaves out: IMDSv1 allowed ("optional"), a hop limit of 1 on most AMIs, the endpoint on.
type MetadataOptions struct {
	HttpTokens   string
	HopLimit     int
	HttpEndpoint string
}

// Instances returns snapshots of all known instances in launch order.
func (s *Server) Instances() []Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clk.Now()
	s.sweepLocked(now)
	out := make([]Instance, 0, len(s.order))
	for _, id := range s.order {
		in := s.instances[id]
		snap := Instance{ID: in.id, ImageID: in.imageID, InstanceType: in.instanceType, Zone: in.zone,
			SubnetID: in.subnetID, State: s.stateOf(in, now), PrivateIP: in.privateIP, PublicIP: in.publicIP,
			ClientToken: in.clientToken, Profile: in.profile, Spot: in.spot, UserData: in.userData,
			SecurityGroups: append([]string(nil), in.groups...), Tags: copyTags(in.tags), VolumeTags: copyTags(in.volumeTags),
			Metadata: in.metadata, CPUCredits: in.cpuCredits, StateReason: in.stateReason}
		if len(in.devices) > 0 {
			snap.RootVolumeGiB = in.devices[0].sizeGiB
		}
		out = append(out, snap)
	}
	return out
}

// SecurityGroup is a snapshot of a security group for assertions.
type SecurityGroup struct {
	ID, Name, VPCID string
	Tags            map[string]string
	// Ingress lists rules as "protocol from-to cidr".
	Ingress []string
}

// SecurityGroups returns snapshots of all security groups.
func (s *Server) SecurityGroups() []SecurityGroup {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []SecurityGroup
	for _, g := range s.groups {
		sg := SecurityGroup{ID: g.id, Name: g.name, VPCID: g.vpcID, Tags: copyTags(g.tags)}
		for _, p := range g.ingress {
			for _, r := range p.ranges {
				sg.Ingress = append(sg.Ingress, fmt.Sprintf("%s %d-%d %s", p.protocol, p.from, p.to, r.cidr))
			}
		}
		out = append(out, sg)
	}
	return out
}

func copyTags(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// seedLocked creates the default VPC, subnets, security group, images and instance types.
func (s *Server) seedLocked() {
	r := s.opts.Region
	cidr, a, b := VPCCIDR, netip.MustParsePrefix("10.0.0.0/20"), netip.MustParsePrefix("10.0.16.0/20")
	if s.cells != nil {
		cidr = s.cells.prefix.String()
		a, b = s.cells.cellSubnets()
	}
	s.vpcs[VPCID] = &vpc{id: VPCID, cidr: cidr, tags: map[string]string{"Name": "kip-fake"}}
	s.subnets[SubnetA] = &subnet{id: SubnetA, vpcID: VPCID, zone: r + "a", prefix: a, mapPublicIP: true, used: map[netip.Addr]bool{}, tags: map[string]string{}}
	s.subnets[SubnetB] = &subnet{id: SubnetB, vpcID: VPCID, zone: r + "b", prefix: b, used: map[netip.Addr]bool{}, tags: map[string]string{}}
	s.groups[DefaultGroupID] = &securityGroup{id: DefaultGroupID, name: "default", desc: "default VPC security group", vpcID: VPCID, tags: map[string]string{}}
	s.seq = 100
	s.addImageLocked("kip-cell-2026.01.0-x86_64", ImageOwner, "x86_64", "2026-01-10T10:00:00.000Z")
	s.addImageLocked("kip-cell-2026.03.1-x86_64", ImageOwner, "x86_64", "2026-03-02T10:00:00.000Z")
	s.addImageLocked("kip-cell-2026.03.1-arm64", ImageOwner, "arm64", "2026-03-02T11:00:00.000Z")
	s.addImageLocked("kip-cell-2026.02.0-x86_64", ImageOwner, "x86_64", "2026-02-01T10:00:00.000Z")
	s.addImageLocked("kip-cell-2027.01.0-x86_64", "210987654321", "x86_64", "2027-01-01T10:00:00.000Z")
	s.types = []InstanceType{
		{Name: "t3.nano", Arch: "x86_64", VCPU: 2, MemoryMiB: 512, Burstable: true, OnDemandPrice: 0.0052, SpotPrice: 0.0016},
		{Name: "t3.micro", Arch: "x86_64", VCPU: 2, MemoryMiB: 1024, Burstable: true, OnDemandPrice: 0.0104, SpotPrice: 0.0031},
		{Name: "t3.medium", Arch: "x86_64", VCPU: 2, MemoryMiB: 4096, Burstable: true, OnDemandPrice: 0.0416, SpotPrice: 0.0125},
		{Name: "c5.large", Arch: "x86_64", VCPU: 2, MemoryMiB: 4096, OnDemandPrice: 0.085, SpotPrice: 0.0324},
		{Name: "m5.large", Arch: "x86_64", VCPU: 2, MemoryMiB: 8192, OnDemandPrice: 0.096, SpotPrice: 0.0354},
		{Name: "c5.xlarge", Arch: "x86_64", VCPU: 4, MemoryMiB: 8192, OnDemandPrice: 0.17, SpotPrice: 0.0648},
		{Name: "m6g.large", Arch: "arm64", VCPU: 2, MemoryMiB: 8192, OnDemandPrice: 0.077, SpotPrice: 0.0298},
		{Name: "g4dn.xlarge", Arch: "x86_64", VCPU: 4, MemoryMiB: 16384, GPUs: 1, GPUName: "T4", Zones: []string{r + "a"}, OnDemandPrice: 0.526, SpotPrice: 0.1578},
		{Name: "g4ad.xlarge", Arch: "x86_64", VCPU: 4, MemoryMiB: 16384, GPUs: 1, GPUName: "Radeon Pro V520", GPUVendor: "AMD", OnDemandPrice: 0.379, SpotPrice: 0.1137},
	}
}

// zones returns the region's zones.
func (s *Server) zones() []string { return []string{s.opts.Region + "a", s.opts.Region + "b"} }

func (s *Server) typeByName(name string) (InstanceType, bool) {
	for _, t := range s.types {
		if t.Name == name {
			return t, true
		}
	}
	return InstanceType{}, false
}

func (t InstanceType) offeredIn(zone string, all []string) bool {
	zs := t.Zones
	if len(zs) == 0 {
		zs = all
	}
	for _, z := range zs {
		if z == zone {
			return true
		}
	}
	return false
}

// Image is a snapshot of an image for assertions.
type Image struct {
	ID, Name, Owner, Arch, Created string
}

// Images returns snapshots of all images, sorted by id.
func (s *Server) Images() []Image {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Image
	for _, id := range sortedKeys(s.images) {
		im := s.images[id]
		out = append(out, Image{ID: im.id, Name: im.name, Owner: im.owner, Arch: im.arch, Created: im.created})
	}
	return out
}
