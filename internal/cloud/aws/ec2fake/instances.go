package ec2fake

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// MaxUserDataBytes is EC2's limit on the base64-encoded user data of RunInstances.
const MaxUserDataBytes = 16384

var instanceIDRe = regexp.MustCompile(`^i-[0-9a-f]{8}([0-9a-f]{9})?$`)

type instanceXML struct {
	InstanceID       string         `xml:"instanceId"`
	ImageID          string         `xml:"imageId"`
	State            stateXML       `xml:"instanceState"`
	PrivateDNSName   string         `xml:"privateDnsName"`
	InstanceType     string         `xml:"instanceType"`
	LaunchTime       string         `xml:"launchTime"`
	Placement        placementXML   `xml:"placement"`
	SubnetID         string         `xml:"subnetId"`
	VpcID            string         `xml:"vpcId"`
	PrivateIPAddress string         `xml:"privateIpAddress,omitempty"`
	IPAddress        string         `xml:"ipAddress,omitempty"`
	Groups           []groupIDXML   `xml:"groupSet>item"`
	Architecture     string         `xml:"architecture"`
	RootDeviceType   string         `xml:"rootDeviceType"`
	RootDeviceName   string         `xml:"rootDeviceName"`
	BlockDevices     []instBDMXML   `xml:"blockDeviceMapping>item"`
	InstanceLife     string         `xml:"instanceLifecycle,omitempty"`
	SpotRequestID    string         `xml:"spotInstanceRequestId,omitempty"`
	ClientToken      string         `xml:"clientToken,omitempty"`
	Profile          *profileXML    `xml:"iamInstanceProfile,omitempty"`
	Tags             []tagXML       `xml:"tagSet>item"`
	StateReason      *stateReasonXM `xml:"stateReason,omitempty"`
}

type stateXML struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type stateReasonXM struct {
	Code    string `xml:"code"`
	Message string `xml:"message"`
}

type placementXML struct {
	AvailabilityZone string `xml:"availabilityZone"`
	Tenancy          string `xml:"tenancy"`
}

type groupIDXML struct {
	GroupID   string `xml:"groupId"`
	GroupName string `xml:"groupName"`
}

type instBDMXML struct {
	DeviceName string `xml:"deviceName"`
	Ebs        struct {
		VolumeID            string `xml:"volumeId"`
		Status              string `xml:"status"`
		DeleteOnTermination bool   `xml:"deleteOnTermination"`
	} `xml:"ebs"`
}

type profileXML struct {
	Arn string `xml:"arn"`
	ID  string `xml:"id"`
}

type tagXML struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

func tagsXML(m map[string]string) []tagXML {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]tagXML, 0, len(m))
	for _, k := range keys {
		out = append(out, tagXML{Key: k, Value: m[k]})
	}
	return out
}

type reservationXML struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []instanceXML `xml:"instancesSet>item"`
}

type runInstancesResponse struct {
	header
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []instanceXML `xml:"instancesSet>item"`
}

type describeInstancesResponse struct {
	header
	Reservations []reservationXML `xml:"reservationSet>item"`
	NextToken    string           `xml:"nextToken,omitempty"`
}

type stateChangeXML struct {
	InstanceID    string   `xml:"instanceId"`
	CurrentState  stateXML `xml:"currentState"`
	PreviousState stateXML `xml:"previousState"`
}

type terminateInstancesResponse struct {
	header
	Instances []stateChangeXML `xml:"instancesSet>item"`
}

type returnResponse struct {
	header
	Return bool `xml:"return"`
}

func (s *Server) instanceXML(in *instance, now time.Time) instanceXML {
	st := s.stateOf(in, now)
	x := instanceXML{
		InstanceID: in.id, ImageID: in.imageID, State: stateXML{Code: stateCodes[st], Name: st},
		InstanceType: in.instanceType, LaunchTime: in.launched.UTC().Format("2006-01-02T15:04:05.000Z"),
		Placement: placementXML{AvailabilityZone: in.zone, Tenancy: "default"}, SubnetID: in.subnetID, VpcID: in.vpcID,
		PrivateIPAddress: in.privateIP, Architecture: "x86_64", RootDeviceType: "ebs", RootDeviceName: "/dev/xvda",
		ClientToken: in.clientToken, Tags: tagsXML(in.tags),
	}
	if t, ok := s.typeByName(in.instanceType); ok {
		x.Architecture = t.Arch
	}
	x.PrivateDNSName = privateDNSName(in.privateIP)
	if st == "running" || st == "pending" {
		x.IPAddress = in.publicIP
	}
	for _, g := range in.groups {
		name := ""
		if sg := s.groups[g]; sg != nil {
			name = sg.name
		}
		x.Groups = append(x.Groups, groupIDXML{GroupID: g, GroupName: name})
	}
	for _, d := range in.devices {
		var b instBDMXML
		b.DeviceName, b.Ebs.VolumeID, b.Ebs.Status, b.Ebs.DeleteOnTermination = d.device, d.volumeID, "attached", true
		x.BlockDevices = append(x.BlockDevices, b)
	}
	if in.spot {
		x.InstanceLife = "spot"
		x.SpotRequestID = "sir-" + strings.TrimPrefix(in.id, "i-")[:8]
	}
	if in.profile != "" {
		x.Profile = &profileXML{Arn: "arn:aws:iam::" + OwnerID + ":instance-profile/" + in.profile, ID: "AIPA" + strings.ToUpper(in.profile)}
	}
	if (st == "terminated" || st == "shutting-down") && in.stateReason != "" {
		code, _, _ := strings.Cut(in.stateReason, ":")
		x.StateReason = &stateReasonXM{Code: code, Message: in.stateReason}
	}
	return x
}

// canonicalParams is the request minus the idempotency token, for ClientToken comparisons.
func canonicalParams(q query) string {
	keys := make([]string, 0, len(q))
	for k := range q {
		if k != "ClientToken" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s&", k, strings.Join(q[k], ","))
	}
	return b.String()
}

func (s *Server) runInstances(q query) (any, *apiError) {
	now := s.clk.Now()
	s.sweepLocked(now)
	if s.cells != nil && s.cells.closed {
		return nil, errorf("Unavailable", "The EC2 fake is closed.")
	}
	token := q.str("ClientToken")
	if len(token) > 64 {
		return nil, errorf("InvalidParameterValue", "Value (%s) for parameter clientToken is invalid. Length exceeds 64 characters.", token)
	}
	if token != "" {
		if prev, ok := s.tokens[token]; ok {
			if prev.params != canonicalParams(q) {
				return nil, errorf("IdempotentParameterMismatch", "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).")
			}
			resp := &runInstancesResponse{OwnerID: OwnerID}
			for _, id := range prev.ids {
				if in := s.instances[id]; in != nil {
					resp.ReservationID = in.reservationID
					resp.Instances = append(resp.Instances, s.instanceXML(in, now))
				}
			}
			return resp, nil
		}
	}
	minCount, err := q.int("MinCount", 0)
	if err != nil {
		return nil, err
	}
	maxCount, err := q.int("MaxCount", 0)
	if err != nil {
		return nil, err
	}
	if !q.has("MinCount") || !q.has("MaxCount") {
		return nil, errorf("MissingParameter", "The request must contain the parameters MinCount and MaxCount")
	}
	if minCount < 1 || maxCount < minCount {
		return nil, errorf("InvalidParameterValue", "MinCount (%d) must be at least 1 and at most MaxCount (%d)", minCount, maxCount)
	}
	imageID := q.str("ImageId")
	if imageID == "" {
		return nil, errorf("MissingParameter", "The request must contain the parameter ImageId")
	}
	img := s.images[imageID]
	if img == nil {
		if !strings.HasPrefix(imageID, "ami-") {
			return nil, errorf("InvalidAMIID.Malformed", "Invalid id: %q (expecting \"ami-...\")", imageID)
		}
		return nil, errorf("InvalidAMIID.NotFound", "The image id '[%s]' does not exist", imageID)
	}
	typeName := q.str("InstanceType")
	if typeName == "" {
		typeName = "m1.small"
	}
	it, ok := s.typeByName(typeName)
	if !ok {
		return nil, errorf("InvalidParameterValue", "Invalid value '%s' for InstanceType.", typeName)
	}
	if it.Arch != img.arch {
		return nil, errorf("InvalidParameterValue", "The architecture '%s' of the specified instance type does not match the architecture '%s' of the specified AMI. Specify an instance type and an AMI that have matching architectures, and try again.", it.Arch, img.arch)
	}
	userData := q.str("UserData")
	if len(userData) > MaxUserDataBytes {
		return nil, errorf("InvalidParameterValue", "User data is limited to %d bytes", MaxUserDataBytes)
	}
	if _, err := base64.StdEncoding.DecodeString(userData); err != nil {
		return nil, errorf("InvalidParameterValue", "Invalid BASE64 encoding of user data.")
	}

	// Network: instance-level subnet and groups, or one network interface carrying them.
	nics := q.members("NetworkInterface")
	subnetID, groups := q.str("SubnetId"), q.list("SecurityGroupId")
	var assocPublic *bool
	if len(nics) > 0 {
		if subnetID != "" || len(groups) > 0 {
			return nil, errorf("InvalidParameterCombination", "Network interfaces and an instance-level subnet ID or security groups may not be specified on the same request")
		}
		if len(nics) > 1 {
			return nil, errorf("InvalidParameterValue", "the fake supports one network interface per instance")
		}
		nic := nics[0]
		if di := nic.str("DeviceIndex"); di != "0" {
			return nil, errorf("InvalidParameterValue", "Each network interface requires a device index; the primary one is 0, got %q", di)
		}
		subnetID, groups = nic.str("SubnetId"), nic.list("SecurityGroupId")
		if nic.has("AssociatePublicIpAddress") {
			v := nic.bool("AssociatePublicIpAddress")
			assocPublic = &v
		}
	}
	zone := q.str("Placement.AvailabilityZone")
	var sn *subnet
	if subnetID == "" {
		for _, cand := range []string{SubnetA, SubnetB} {
			if c := s.subnets[cand]; c != nil && (zone == "" || c.zone == zone) {
				sn = c
				break
			}
		}
		if sn == nil {
			return nil, errorf("InvalidParameterValue", "No default subnet for availability zone: '%s'.", zone)
		}
	} else if sn = s.subnets[subnetID]; sn == nil {
		return nil, errorf("InvalidSubnetID.NotFound", "The subnet ID '%s' does not exist", subnetID)
	}
	if zone != "" && zone != sn.zone {
		return nil, errorf("InvalidParameterValue", "Value (%s) for parameter availabilityZone is invalid. Subnet %s is in %s.", zone, sn.id, sn.zone)
	}
	if len(groups) == 0 {
		groups = []string{DefaultGroupID}
	}
	if len(groups) > 5 {
		return nil, errorf("SecurityGroupsPerInstanceLimitExceeded", "The maximum number of security groups per interface has been reached.")
	}
	for _, g := range groups {
		sg := s.groups[g]
		if sg == nil {
			return nil, errorf("InvalidGroup.NotFound", "The security group '%s' does not exist", g)
		}
		if sg.vpcID != sn.vpcID {
			return nil, errorf("InvalidParameter", "Security group %s and subnet %s belong to different networks.", g, sn.id)
		}
	}
	profile := q.str("IamInstanceProfile.Name")
	if arn := q.str("IamInstanceProfile.Arn"); arn != "" {
		if profile != "" {
			return nil, errorf("InvalidParameterCombination", "The parameter 'iamInstanceProfile.name' may not be used in combination with 'iamInstanceProfile.arn'")
		}
		i := strings.LastIndex(arn, "/")
		if !strings.HasPrefix(arn, "arn:aws:iam::") || i < 0 {
			return nil, errorf("InvalidParameterValue", "Value (%s) for parameter iamInstanceProfile.arn is invalid. Invalid IAM Instance Profile ARN", arn)
		}
		profile = arn[i+1:]
		if !s.profiles[profile] {
			return nil, errorf("InvalidParameterValue", "Value (%s) for parameter iamInstanceProfile.arn is invalid. Invalid IAM Instance Profile ARN", arn)
		}
	} else if profile != "" && !s.profiles[profile] {
		return nil, errorf("InvalidParameterValue", "Value (%s) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name", profile)
	}
	rootSize, rootType := img.sizeGiB, "gp2"
	for _, m := range q.members("BlockDeviceMapping") {
		dev := m.str("DeviceName")
		if dev == "" {
			return nil, errorf("InvalidBlockDeviceMapping", "A block device mapping must name a device")
		}
		if dev != img.rootDevice {
			return nil, errorf("InvalidBlockDeviceMapping", "the fake only maps the root device %s, not %s", img.rootDevice, dev)
		}
		size, err := m.int("Ebs.VolumeSize", img.sizeGiB)
		if err != nil {
			return nil, err
		}
		if size < img.sizeGiB {
			return nil, errorf("InvalidBlockDeviceMapping", "Volume of size %dGB is smaller than snapshot 'snap-%s', expect size >= %dGB", size, strings.TrimPrefix(img.id, "ami-"), img.sizeGiB)
		}
		if size > 16384 {
			return nil, errorf("InvalidParameterValue", "Volume of %d GiB exceeds the 16384 GiB maximum", size)
		}
		if vt := m.str("Ebs.VolumeType"); vt != "" {
			switch vt {
			case "gp2", "gp3", "io1", "io2", "st1", "sc1", "standard":
			default:
				return nil, errorf("InvalidParameterValue", "Value (%s) for parameter volumeType is invalid.", vt)
			}
			rootType = vt
		}
		rootSize = size
	}
	spot := false
	switch mt := q.str("InstanceMarketOptions.MarketType"); mt {
	case "":
	case "spot":
		spot = true
		if t := q.str("InstanceMarketOptions.SpotOptions.SpotInstanceType"); t != "" && t != "one-time" && t != "persistent" {
			return nil, errorf("InvalidParameterValue", "Value (%s) for parameter SpotInstanceType is invalid.", t)
		}
	default:
		return nil, errorf("InvalidParameterValue", "Value (%s) for parameter MarketType is invalid.", mt)
	}
	md := MetadataOptions{HttpTokens: "optional", HopLimit: 1, HttpEndpoint: "enabled"}
	switch v := q.str("MetadataOptions.HttpTokens"); v {
	case "":
	case "optional", "required":
		md.HttpTokens = v
	default:
		return nil, errorf("InvalidParameterValue", "Value (%s) for parameter HttpTokens is invalid.", v)
	}
	if q.has("MetadataOptions.HttpPutResponseHopLimit") {
		hops, err := q.int("MetadataOptions.HttpPutResponseHopLimit", 1)
		if err != nil {
			return nil, err
		}
		if hops < 1 || hops > 64 {
			return nil, errorf("InvalidParameterValue", "Value (%d) for parameter HttpPutResponseHopLimit is invalid. Valid values are 1 to 64.", hops)
		}
		md.HopLimit = hops
	}
	switch v := q.str("MetadataOptions.HttpEndpoint"); v {
	case "":
	case "enabled", "disabled":
		md.HttpEndpoint = v
	default:
		return nil, errorf("InvalidParameterValue", "Value (%s) for parameter HttpEndpoint is invalid.", v)
	}
	credits := q.str("CreditSpecification.CpuCredits")
	switch {
	case credits == "":
	case credits != "standard" && credits != "unlimited":
		return nil, errorf("InvalidParameterValue", "Value (%s) for parameter cpuCredits is invalid.", credits)
	case !it.Burstable:
		return nil, errorf("InvalidParameterCombination", "The parameter CreditSpecification is not supported for %s instances.", typeName)
	}
	specs, err := q.tagSpecs()
	if err != nil {
		return nil, err
	}
	for rt := range specs {
		switch rt {
		case "instance", "volume", "network-interface", "spot-instances-request":
		default:
			return nil, errorf("InvalidParameterValue", "'%s' is not a valid taggable resource type for this operation.", rt)
		}
	}

	// Capacity.
	if !it.offeredIn(sn.zone, s.zones()) {
		return nil, errorf("Unsupported", "Your requested instance type (%s) is not supported in your requested Availability Zone (%s). Please retry your request by not specifying an Availability Zone or choosing %s.", typeName, sn.zone, strings.Join(it.Zones, ", "))
	}
	if s.ice[typeName] || s.ice[typeName+"/"+sn.zone] || (spot && s.ice["spot:*"]) {
		return nil, errorf("InsufficientInstanceCapacity", "We currently do not have sufficient %s capacity in the Availability Zone you requested (%s). Our system will be working on provisioning additional capacity. You can currently get %s capacity by not specifying an Availability Zone in your request or choosing %s.", typeName, sn.zone, typeName, strings.Join(s.zones(), ", "))
	}
	count := min(maxCount, sn.free())
	if count < minCount {
		return nil, errorf("InsufficientFreeAddressesInSubnet", "There are not enough free addresses in subnet '%s' to satisfy the requested number of instances.", sn.id)
	}
	if !s.buckets.allowResource("RunInstances", count, now) {
		return nil, errorf("RequestResourceCountExceeded", "Request resource count exceeded.")
	}

	resp := &runInstancesResponse{ReservationID: s.nextID("r"), OwnerID: OwnerID}
	var ids []string
	for range count {
		ip, _ := sn.allocate()
		in := &instance{
			id: s.nextID("i"), reservationID: resp.ReservationID, imageID: img.id, instanceType: typeName, zone: sn.zone,
			subnetID: sn.id, vpcID: sn.vpcID, clientToken: token, profile: profile, privateIP: ip.String(), spot: spot,
			userData: userData, metadata: md, cpuCredits: credits, groups: append([]string(nil), groups...), launched: now,
			tags: copyTags(specs["instance"]), volumeTags: copyTags(specs["volume"]),
		}
		in.devices = []blockDevice{{device: img.rootDevice, volumeID: s.nextID("vol"), volumeType: rootType, sizeGiB: rootSize}}
		public := sn.mapPublicIP
		if assocPublic != nil {
			public = *assocPublic
		}
		if public {
			in.publicIP = fmt.Sprintf("198.51.%d.%d", (s.seq/250)%250, s.seq%250+1)
		}
		if s.cells != nil {
			if err := s.newCellLocked(in); err != nil {
				sn.release(ip)
				return nil, err
			}
		}
		s.instances[in.id] = in
		s.order = append(s.order, in.id)
		ids = append(ids, in.id)
		resp.Instances = append(resp.Instances, s.instanceXML(in, now))
	}
	if token != "" {
		s.tokens[token] = tokenEntry{params: canonicalParams(q), ids: ids, at: now}
	}
	return resp, nil
}

// checkInstanceIDs returns an EC2 error for malformed or unknown ids.
func (s *Server) checkInstanceIDs(ids []string) *apiError {
	var missing []string
	for _, id := range ids {
		if !instanceIDRe.MatchString(id) {
			return errorf("InvalidInstanceID.Malformed", "Invalid id: %q", id)
		}
		if s.instances[id] == nil {
			missing = append(missing, id)
		}
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return errorf("InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", missing[0])
	}
	return errorf("InvalidInstanceID.NotFound", "The instance IDs '%s' do not exist", strings.Join(missing, ", "))
}

func (s *Server) describeInstances(q query) (any, *apiError) {
	now := s.clk.Now()
	s.sweepLocked(now)
	ids := q.list("InstanceId")
	if len(ids) > 0 && q.has("MaxResults") {
		return nil, errorf("InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults")
	}
	if err := s.checkInstanceIDs(ids); err != nil {
		return nil, err
	}
	var unseen []string
	for _, id := range ids {
		if !s.visible(s.instances[id], now) {
			unseen = append(unseen, id)
		}
	}
	if len(unseen) > 0 {
		return nil, errorf("InvalidInstanceID.NotFound", "The instance IDs '%s' do not exist", strings.Join(unseen, ", "))
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	filters := q.filters()
	var match []*instance
	for _, id := range s.order {
		in := s.instances[id]
		if len(want) > 0 && !want[id] || !s.visible(in, now) {
			continue
		}
		ok, err := s.instanceMatches(in, filters, now)
		if err != nil {
			return nil, err
		}
		if ok {
			match = append(match, in)
		}
	}
	pg, next, err := page(q, match, 5, 1000)
	if err != nil {
		return nil, err
	}
	resp := &describeInstancesResponse{NextToken: next}
	byRes := map[string]int{}
	for _, in := range pg {
		i, ok := byRes[in.reservationID]
		if !ok {
			i = len(resp.Reservations)
			byRes[in.reservationID] = i
			resp.Reservations = append(resp.Reservations, reservationXML{ReservationID: in.reservationID, OwnerID: OwnerID})
		}
		resp.Reservations[i].Instances = append(resp.Reservations[i].Instances, s.instanceXML(in, now))
	}
	return resp, nil
}

// visible reports whether DescribeInstances shows in at now (Options.DescribeDelay).
func (s *Server) visible(in *instance, now time.Time) bool {
	return !now.Before(in.launched.Add(s.opts.DescribeDelay))
}

func (s *Server) instanceMatches(in *instance, filters []filter, now time.Time) (bool, *apiError) {
	for _, f := range filters {
		if m, handled := matchTags(f, in.tags); handled {
			if !m {
				return false, nil
			}
			continue
		}
		var v string
		switch f.name {
		case "instance-id":
			v = in.id
		case "instance-state-name":
			v = s.stateOf(in, now)
		case "instance-state-code":
			v = fmt.Sprint(stateCodes[s.stateOf(in, now)])
		case "instance-type":
			v = in.instanceType
		case "availability-zone":
			v = in.zone
		case "subnet-id":
			v = in.subnetID
		case "vpc-id":
			v = in.vpcID
		case "client-token":
			v = in.clientToken
		case "image-id":
			v = in.imageID
		case "private-ip-address":
			v = in.privateIP
		case "instance-lifecycle":
			if in.spot {
				v = "spot"
			}
		default:
			return false, errorf("InvalidParameterValue", "The filter '%s' is invalid", f.name)
		}
		if !matchValue(v, f.values) {
			return false, nil
		}
	}
	return true, nil
}

func (s *Server) terminateInstances(q query) (any, *apiError) {
	now := s.clk.Now()
	s.sweepLocked(now)
	ids := q.list("InstanceId")
	if len(ids) == 0 {
		return nil, errorf("MissingParameter", "The request must contain the parameter InstanceId")
	}
	if len(ids) > 1000 {
		return nil, errorf("InvalidParameterValue", "At most 1000 instance ids may be terminated per request, got %d", len(ids))
	}
	if err := s.checkInstanceIDs(ids); err != nil {
		return nil, err
	}
	live := 0
	for _, id := range ids {
		if s.instances[id].terminateAt.IsZero() {
			live++
		}
	}
	if !s.buckets.allowResource("TerminateInstances", live, now) {
		return nil, errorf("RequestLimitExceeded", "Request limit exceeded.")
	}
	resp := &terminateInstancesResponse{}
	for _, id := range ids {
		in := s.instances[id]
		prev := s.stateOf(in, now)
		s.terminateLocked(in, now, reasonUserShutdown)
		cur := s.stateOf(in, now)
		resp.Instances = append(resp.Instances, stateChangeXML{InstanceID: id,
			CurrentState: stateXML{Code: stateCodes[cur], Name: cur}, PreviousState: stateXML{Code: stateCodes[prev], Name: prev}})
	}
	s.sweepLocked(now)
	return resp, nil
}

func (s *Server) createTags(q query) (any, *apiError) {
	ids := q.list("ResourceId")
	if len(ids) == 0 {
		return nil, errorf("MissingParameter", "The request must contain the parameter ResourceId")
	}
	tags, err := q.tags("Tag")
	if err != nil {
		return nil, err
	}
	var targets []map[string]string
	for _, id := range ids {
		switch {
		case strings.HasPrefix(id, "i-"):
			if err := s.checkInstanceIDs([]string{id}); err != nil {
				return nil, err
			}
			targets = append(targets, s.instances[id].tags)
		case strings.HasPrefix(id, "sg-") && s.groups[id] != nil:
			targets = append(targets, s.groups[id].tags)
		case strings.HasPrefix(id, "subnet-") && s.subnets[id] != nil:
			targets = append(targets, s.subnets[id].tags)
		case strings.HasPrefix(id, "vpc-") && s.vpcs[id] != nil:
			targets = append(targets, s.vpcs[id].tags)
		case strings.HasPrefix(id, "ami-") && s.images[id] != nil:
			targets = append(targets, s.images[id].tags)
		default:
			return nil, errorf("InvalidID", "The ID '%s' is not valid", id)
		}
	}
	for _, t := range targets {
		for k, v := range tags {
			t[k] = v
		}
		if len(t) > 50 {
			return nil, errorf("TagLimitExceeded", "The maximum number of Tags for a resource has been reached.")
		}
	}
	return &returnResponse{Return: true}, nil
}
