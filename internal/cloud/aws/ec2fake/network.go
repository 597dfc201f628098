package ec2fake

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
)

type vpcXML struct {
	VpcID     string   `xml:"vpcId"`
	State     string   `xml:"state"`
	CidrBlock string   `xml:"cidrBlock"`
	IsDefault bool     `xml:"isDefault"`
	OwnerID   string   `xml:"ownerId"`
	Tags      []tagXML `xml:"tagSet>item"`
}

type describeVpcsResponse struct {
	header
	Vpcs []vpcXML `xml:"vpcSet>item"`
}

type subnetXML struct {
	SubnetID                string   `xml:"subnetId"`
	State                   string   `xml:"state"`
	VpcID                   string   `xml:"vpcId"`
	CidrBlock               string   `xml:"cidrBlock"`
	AvailableIPAddressCount int      `xml:"availableIpAddressCount"`
	AvailabilityZone        string   `xml:"availabilityZone"`
	DefaultForAz            bool     `xml:"defaultForAz"`
	MapPublicIPOnLaunch     bool     `xml:"mapPublicIpOnLaunch"`
	Tags                    []tagXML `xml:"tagSet>item"`
}

type describeSubnetsResponse struct {
	header
	Subnets []subnetXML `xml:"subnetSet>item"`
}

type ipRangeXML struct {
	CidrIP      string `xml:"cidrIp"`
	Description string `xml:"description,omitempty"`
}

type permissionXML struct {
	IPProtocol string       `xml:"ipProtocol"`
	FromPort   *int         `xml:"fromPort,omitempty"`
	ToPort     *int         `xml:"toPort,omitempty"`
	IPRanges   []ipRangeXML `xml:"ipRanges>item"`
}

type securityGroupXML struct {
	OwnerID     string          `xml:"ownerId"`
	GroupID     string          `xml:"groupId"`
	GroupName   string          `xml:"groupName"`
	Description string          `xml:"groupDescription"`
	VpcID       string          `xml:"vpcId"`
	Ingress     []permissionXML `xml:"ipPermissions>item"`
	Tags        []tagXML        `xml:"tagSet>item"`
}

type describeSecurityGroupsResponse struct {
	header
	Groups    []securityGroupXML `xml:"securityGroupInfo>item"`
	NextToken string             `xml:"nextToken,omitempty"`
}

type createSecurityGroupResponse struct {
	header
	Return  bool     `xml:"return"`
	GroupID string   `xml:"groupId"`
	Tags    []tagXML `xml:"tagSet>item"`
}

func (s *Server) describeVpcs(q query) (any, *apiError) {
	ids := q.list("VpcId")
	for _, id := range ids {
		if s.vpcs[id] == nil {
			return nil, errorf("InvalidVpcID.NotFound", "The vpc ID '%s' does not exist", id)
		}
	}
	resp := &describeVpcsResponse{}
	for _, id := range sortedKeys(s.vpcs) {
		v := s.vpcs[id]
		if len(ids) > 0 && !slices.Contains(ids, id) {
			continue
		}
		ok, err := matchAll(q.filters(), v.tags, map[string]string{"vpc-id": v.id, "cidr": v.cidr, "cidr-block": v.cidr, "state": "available", "is-default": "false"})
		if err != nil {
			return nil, err
		}
		if ok {
			resp.Vpcs = append(resp.Vpcs, vpcXML{VpcID: v.id, State: "available", CidrBlock: v.cidr, OwnerID: OwnerID, Tags: tagsXML(v.tags)})
		}
	}
	return resp, nil
}

func (s *Server) describeSubnets(q query) (any, *apiError) {
	s.sweepLocked(s.clk.Now())
	ids := q.list("SubnetId")
	for _, id := range ids {
		if s.subnets[id] == nil {
			return nil, errorf("InvalidSubnetID.NotFound", "The subnet ID '%s' does not exist", id)
		}
	}
	resp := &describeSubnetsResponse{}
	for _, id := range sortedKeys(s.subnets) {
		sn := s.subnets[id]
		if len(ids) > 0 && !slices.Contains(ids, id) {
			continue
		}
		ok, err := matchAll(q.filters(), sn.tags, map[string]string{"subnet-id": sn.id, "vpc-id": sn.vpcID,
			"availability-zone": sn.zone, "cidr-block": sn.prefix.String(), "state": "available"})
		if err != nil {
			return nil, err
		}
		if ok {
			resp.Subnets = append(resp.Subnets, subnetXML{SubnetID: sn.id, State: "available", VpcID: sn.vpcID,
				CidrBlock: sn.prefix.String(), AvailableIPAddressCount: sn.free(), AvailabilityZone: sn.zone,
				MapPublicIPOnLaunch: sn.mapPublicIP, Tags: tagsXML(sn.tags)})
		}
	}
	return resp, nil
}

func (s *Server) describeSecurityGroups(q query) (any, *apiError) {
	ids, names := q.list("GroupId"), q.list("GroupName")
	for _, id := range ids {
		if s.groups[id] == nil {
			return nil, errorf("InvalidGroup.NotFound", "The security group '%s' does not exist", id)
		}
	}
	var match []securityGroupXML
	for _, id := range sortedKeys(s.groups) {
		g := s.groups[id]
		if len(ids) > 0 && !slices.Contains(ids, id) || len(names) > 0 && !slices.Contains(names, g.name) {
			continue
		}
		ok, err := matchAll(q.filters(), g.tags, map[string]string{"group-id": g.id, "group-name": g.name, "vpc-id": g.vpcID, "description": g.desc})
		if err != nil {
			return nil, err
		}
		if ok {
			match = append(match, groupXML(g))
		}
	}
	pg, next, err := page(q, match, 5, 1000)
	if err != nil {
		return nil, err
	}
	return &describeSecurityGroupsResponse{Groups: pg, NextToken: next}, nil
}

func groupXML(g *securityGroup) securityGroupXML {
	x := securityGroupXML{OwnerID: OwnerID, GroupID: g.id, GroupName: g.name, Description: g.desc, VpcID: g.vpcID, Tags: tagsXML(g.tags)}
	for _, p := range g.ingress {
		px := permissionXML{IPProtocol: p.protocol}
		if p.protocol != "-1" {
			from, to := p.from, p.to
			px.FromPort, px.ToPort = &from, &to
		}
		for _, r := range p.ranges {
			px.IPRanges = append(px.IPRanges, ipRangeXML{CidrIP: r.cidr, Description: r.desc})
		}
		x.Ingress = append(x.Ingress, px)
	}
	return x
}

func (s *Server) createSecurityGroup(q query) (any, *apiError) {
	name, desc, vpcID := q.str("GroupName"), q.str("GroupDescription"), q.str("VpcId")
	if name == "" || desc == "" {
		return nil, errorf("MissingParameter", "The request must contain the parameters GroupName and GroupDescription")
	}
	if len(name) > 255 || strings.HasPrefix(name, "sg-") {
		return nil, errorf("InvalidParameterValue", "Value (%s) for parameter GroupName is invalid.", name)
	}
	if vpcID == "" {
		vpcID = VPCID
	}
	if s.vpcs[vpcID] == nil {
		return nil, errorf("InvalidVpcID.NotFound", "The vpc ID '%s' does not exist", vpcID)
	}
	for _, g := range s.groups {
		if g.vpcID == vpcID && g.name == name {
			return nil, errorf("InvalidGroup.Duplicate", "The security group '%s' already exists for VPC '%s'", name, vpcID)
		}
	}
	specs, err := q.tagSpecs()
	if err != nil {
		return nil, err
	}
	for rt := range specs {
		if rt != "security-group" {
			return nil, errorf("InvalidParameterValue", "'%s' is not a valid taggable resource type for this operation.", rt)
		}
	}
	g := &securityGroup{id: s.nextID("sg"), name: name, desc: desc, vpcID: vpcID, tags: copyTags(specs["security-group"])}
	s.groups[g.id] = g
	return &createSecurityGroupResponse{Return: true, GroupID: g.id, Tags: tagsXML(g.tags)}, nil
}

func (s *Server) authorizeSecurityGroupIngress(q query) (any, *apiError) {
	id := q.str("GroupId")
	g := s.groups[id]
	if g == nil {
		return nil, errorf("InvalidGroup.NotFound", "The security group '%s' does not exist", id)
	}
	var add []permission
	for _, m := range q.members("IpPermissions") {
		p := permission{protocol: strings.ToLower(m.str("IpProtocol"))}
		switch p.protocol {
		case "-1", "all":
			p.protocol = "-1"
		case "tcp", "udp", "icmp", "6", "17", "1":
			var err *apiError
			if p.from, err = m.int("FromPort", -1); err != nil {
				return nil, err
			}
			if p.to, err = m.int("ToPort", -1); err != nil {
				return nil, err
			}
			if p.protocol != "icmp" && p.protocol != "1" && (p.from < 0 || p.to > 65535 || p.from > p.to) {
				return nil, errorf("InvalidParameterValue", "Invalid port range %d-%d", p.from, p.to)
			}
		default:
			return nil, errorf("InvalidParameterValue", "Invalid value '%s' for IP protocol. Unknown protocol.", p.protocol)
		}
		for _, r := range m.members("IpRanges") {
			c := r.str("CidrIp")
			if _, err := netip.ParsePrefix(c); err != nil {
				return nil, errorf("InvalidParameterValue", "CIDR block %s is malformed", c)
			}
			p.ranges = append(p.ranges, ipRange{cidr: c, desc: r.str("Description")})
		}
		if len(p.ranges) == 0 {
			return nil, errorf("MissingParameter", "IpPermissions must name at least one IpRanges.CidrIp (the fake supports CIDR sources only)")
		}
		add = append(add, p)
	}
	if len(add) == 0 {
		return nil, errorf("MissingParameter", "The request must contain the parameter IpPermissions")
	}
	for _, p := range add {
		for _, r := range p.ranges {
			for _, e := range g.ingress {
				if e.protocol == p.protocol && e.from == p.from && e.to == p.to {
					for _, er := range e.ranges {
						if er.cidr == r.cidr {
							return nil, errorf("InvalidPermission.Duplicate", "the specified rule \"peer: %s, %s, from port: %d, to port: %d, ALLOW\" already exists", r.cidr, strings.ToUpper(p.protocol), p.from, p.to)
						}
					}
				}
			}
		}
	}
	g.ingress = append(g.ingress, add...)
	return &returnResponse{Return: true}, nil
}

// matchAll applies filters to a resource with tags and named attributes; an unknown filter
// name is an InvalidParameterValue error as in EC2.
func matchAll(filters []filter, tags map[string]string, attrs map[string]string) (bool, *apiError) {
	for _, f := range filters {
		if m, handled := matchTags(f, tags); handled {
			if !m {
				return false, nil
			}
			continue
		}
		v, ok := attrs[f.name]
		if !ok {
			return false, errorf("InvalidParameterValue", "The filter '%s' is invalid", f.name)
		}
		if !matchValue(v, f.values) {
			return false, nil
		}
	}
	return true, nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
