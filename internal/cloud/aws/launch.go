package aws

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/kip-dev/kip/internal/capacity"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/instancetype"
)

// EC2 limits a launch must respect.
const (
	// MaxUserDataBytes is EC2's limit on user data, base64-encoded as the API carries it.
	MaxUserDataBytes = 16384
	// MaxSecurityGroups is how many security groups an instance's interface may carry.
	MaxSecurityGroups = 5
	maxTags           = 50
	maxClientToken    = 64
)

var groupIDRe = regexp.MustCompile(`^sg-[0-9a-f]{8}([0-9a-f]{9})?$`)

// Launch starts a cell. See cloud.Cloud.
func (b *Backend) Launch(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	in, it, sn, err := b.runInput(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("launching cell %s: %w", spec.CellID, err)
	}
	if b.unavailable.Recent(capacity.Offering{Type: it.Name, Zone: sn.zone, Spot: spec.Spot}) {
		return nil, fmt.Errorf("launching cell %s: %w", spec.CellID, cloud.InsufficientCapacity(
			"%s %s in %s had no capacity recently; not asking again before it expires", market(spec.Spot), it.Name, sn.zone))
	}
	var out *ec2.RunInstancesOutput
	err = b.call(ctx, "RunInstances", 1, func(ctx context.Context) (err error) {
		out, err = b.ec2.RunInstances(ctx, in)
		return err
	})
	if err == nil && len(out.Instances) == 0 {
		err = fmt.Errorf("RunInstances returned no instance")
	}
	if err != nil && errorCode(err) == "IdempotentParameterMismatch" && spec.ClientToken != "" {
		// An earlier Launch with this token (a kip that restarted mid-launch) made the
		// instance with other arguments: the cell's certificate in the user data is issued
		// afresh on every attempt. Either certificate names the cell and chains to kip's CA,
		// so the earlier instance serves as well: return it, as the contract promises.
		if inst, derr := b.byClientToken(ctx, spec); derr != nil {
			err = errors.Join(err, derr)
		} else if inst != nil {
			b.cache.launched(inst, b.clk.Now())
			b.log.Info("adopted the instance an earlier launch made with this client token", "cell", spec.CellID,
				"instance", inst.ID, "type", inst.InstanceType)
			return copyInstance(inst), nil
		}
	}
	if err != nil {
		switch {
		case cloud.IsInsufficientCapacity(err):
			if c := errorCode(err); c != "InsufficientFreeAddressesInSubnet" {
				b.unavailable.Remember(capacity.Offering{Type: it.Name, Zone: sn.zone, Spot: spec.Spot})
			}
		case cloud.IsNotFound(err):
			err = cloud.Wrap(cloud.KindInvalidSpec, err, "a resource the spec names does not exist")
		}
		return nil, fmt.Errorf("launching cell %s as %s in %s: %w", spec.CellID, it.Name, sn.zone, err)
	}
	inst := toInstance(out.Instances[0])
	b.cache.launched(inst, b.clk.Now())
	b.log.Info("launched cell", "cell", spec.CellID, "instance", inst.ID, "type", inst.InstanceType, "spot", inst.Spot, "zone", inst.Zone)
	return copyInstance(inst), nil
}

// byClientToken finds the live instance an earlier RunInstances made with spec's token for
// the same cell, or nil.
func (b *Backend) byClientToken(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	in := &ec2.DescribeInstancesInput{Filters: []types.Filter{
		{Name: aws.String("client-token"), Values: []string{spec.ClientToken}},
		{Name: aws.String("tag:" + cloud.TagCellID), Values: []string{spec.CellID}},
	}}
	var out *ec2.DescribeInstancesOutput
	err := b.call(ctx, "DescribeInstances", 0, func(ctx context.Context) (err error) {
		out, err = b.ec2.DescribeInstances(ctx, in)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("looking up the instance of client token %s: %w", spec.ClientToken, err)
	}
	for _, r := range out.Reservations {
		for _, i := range r.Instances {
			inst := toInstance(i)
			if inst.State != cloud.StateTerminated && inst.State != cloud.StateTerminating {
				return inst, nil
			}
		}
	}
	return nil, nil
}

func subnetList(sns []subnet) string {
	out := make([]string, len(sns))
	for i, sn := range sns {
		out[i] = sn.String()
	}
	return strings.Join(out, ", ")
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

func market(spot bool) string {
	if spot {
		return "spot"
	}
	return "on-demand"
}

// runInput validates spec and builds the RunInstances request for it, in the subnet of the
// spec's zone (the first subnet's when it names none). Every refusal is an InvalidSpec error
// naming the field.
func (b *Backend) runInput(ctx context.Context, spec cloud.LaunchSpec) (*ec2.RunInstancesInput, instancetype.InstanceType, subnet, error) {
	var it instancetype.InstanceType
	sn := b.subnets[0]
	if spec.CellID == "" {
		return nil, it, sn, cloud.InvalidSpec("cellID: must not be empty")
	}
	if len(spec.ClientToken) > maxClientToken {
		return nil, it, sn, cloud.InvalidSpec("clientToken: %d characters, EC2 allows at most %d", len(spec.ClientToken), maxClientToken)
	}
	catalog, err := b.cfg.Catalog.InstanceTypes()
	if err != nil {
		return nil, it, sn, fmt.Errorf("reading the instance-type catalog: %w", err)
	}
	found := false
	for _, t := range catalog {
		if t.Name == spec.InstanceType {
			it, found = t, true
			break
		}
	}
	if !found {
		return nil, it, sn, cloud.InvalidSpec("instanceType: %q is not in the catalog of %s", spec.InstanceType, b.cfg.Region)
	}
	if spec.Zone != "" {
		i := slices.IndexFunc(b.subnets, func(s subnet) bool { return s.zone == spec.Zone })
		if i < 0 {
			return nil, it, sn, cloud.InvalidSpec("zone: cells launch in subnets %s, none in %s", subnetList(b.subnets), spec.Zone)
		}
		sn = b.subnets[i]
	}
	if spec.VolumeSizeGiB < 0 || spec.VolumeSizeGiB > 16384 {
		return nil, it, sn, cloud.InvalidSpec("volumeSizeGiB: %d is outside 0..16384", spec.VolumeSizeGiB)
	}
	raw := spec.BootstrapData
	if b.cfg.UserData != nil {
		// The cell's bootstrap script: it installs the agent on a stock image and carries a
		// one-time enrollment token, never a key (user data is readable on the instance).
		if raw, err = b.cfg.UserData(it.Arch, spec.BootstrapData); err != nil {
			return nil, it, sn, cloud.InvalidSpec("bootstrapData: %v", err)
		}
	}
	userData := base64.StdEncoding.EncodeToString(raw)
	if len(userData) > MaxUserDataBytes {
		return nil, it, sn, cloud.InvalidSpec("bootstrapData: %d bytes are %d base64-encoded; EC2 user data is limited to %d (about %d bytes before encoding)",
			len(raw), len(userData), MaxUserDataBytes, MaxUserDataBytes/4*3)
	}
	tags, err := b.tags(spec)
	if err != nil {
		return nil, it, sn, err
	}
	for _, g := range spec.SecurityGroups {
		if !slices.Contains(b.cfg.SecurityGroups, g) && !slices.Contains(b.cfg.PodSecurityGroups, g) {
			return nil, it, sn, cloud.InvalidSpecField("SecurityGroups", "securityGroups: %s is not one of the groups pods may name (cloud.aws.podSecurityGroups: %s)", g, listOrNone(b.cfg.PodSecurityGroups))
		}
	}
	if p := spec.InstanceProfile; p != "" && p != b.cfg.InstanceProfile && !slices.Contains(b.cfg.PodInstanceProfiles, p) {
		return nil, it, sn, cloud.InvalidSpecField("InstanceProfile", "instanceProfile: %s is not one of the profiles pods may name (cloud.aws.podInstanceProfiles: %s)", p, listOrNone(b.cfg.PodInstanceProfiles))
	}
	groups := []string{b.groupID}
	for _, g := range append(append([]string(nil), b.cfg.SecurityGroups...), spec.SecurityGroups...) {
		if !groupIDRe.MatchString(g) {
			return nil, it, sn, cloud.InvalidSpec("securityGroups: %q is not a security group id (sg-...)", g)
		}
		if !slices.Contains(groups, g) {
			groups = append(groups, g)
		}
	}
	if len(groups) > MaxSecurityGroups {
		return nil, it, sn, cloud.InvalidSpec("securityGroups: %d groups with Kip's own; EC2 allows %d per instance", len(groups), MaxSecurityGroups)
	}
	image := spec.Image
	if image == "" {
		b.imgMu.Lock()
		image = b.images[it.Arch]
		b.imgMu.Unlock()
		if image == "" {
			return nil, it, sn, cloud.InvalidSpec("instanceType: %s is %s and no %s cell image was found", it.Name, it.Arch, it.Arch)
		}
	}
	facts, err := b.image(ctx, image)
	if err != nil {
		return nil, it, sn, err
	}
	if facts.arch != it.Arch {
		return nil, it, sn, cloud.InvalidSpec("image: %s is %s but instance type %s is %s", image, facts.arch, it.Name, it.Arch)
	}

	in := &ec2.RunInstancesInput{
		MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		ImageId:      aws.String(image),
		InstanceType: types.InstanceType(it.Name),
		UserData:     aws.String(userData),
		// IMDSv2 only, and a hop limit of 1: a container behind a bridge or NAT on the cell
		// (one hop more) gets no token, so it cannot read the instance's credentials or
		// user data through the metadata service. Pods, which share the instance's network
		// namespace, are kept out by the agent (kip-cell --guard-metadata, agent/imdsguard).
		MetadataOptions: &types.InstanceMetadataOptionsRequest{HttpTokens: types.HttpTokensStateRequired,
			HttpPutResponseHopLimit: aws.Int32(1), HttpEndpoint: types.InstanceMetadataEndpointStateEnabled},
		TagSpecifications: []types.TagSpecification{
			{ResourceType: types.ResourceTypeInstance, Tags: tags},
			{ResourceType: types.ResourceTypeVolume, Tags: tags},
		},
	}
	if spec.ClientToken != "" {
		in.ClientToken = aws.String(spec.ClientToken)
	}
	if spec.PrivateIPOnly {
		in.NetworkInterfaces = []types.InstanceNetworkInterfaceSpecification{{DeviceIndex: aws.Int32(0),
			SubnetId: aws.String(sn.id), Groups: groups, AssociatePublicIpAddress: aws.Bool(false), DeleteOnTermination: aws.Bool(true)}}
	} else {
		in.SubnetId, in.SecurityGroupIds = aws.String(sn.id), groups
	}
	profile := spec.InstanceProfile
	if profile == "" {
		profile = b.cfg.InstanceProfile
	}
	switch {
	case strings.HasPrefix(profile, "arn:"):
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Arn: aws.String(profile)}
	case profile != "":
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: aws.String(profile)}
	}
	if spec.VolumeSizeGiB > 0 {
		in.BlockDeviceMappings = []types.BlockDeviceMapping{{DeviceName: aws.String(facts.rootDevice), Ebs: &types.EbsBlockDevice{
			VolumeSize: aws.Int32(int32(spec.VolumeSizeGiB)), VolumeType: types.VolumeTypeGp3, DeleteOnTermination: aws.Bool(true)}}}
	}
	if it.Burstable {
		// T-family credit mode is set explicitly: the account default may be unlimited (T3's
		// is), which bills surplus credits the selector did not price in.
		mode := "standard"
		if spec.UnlimitedCredits {
			mode = "unlimited"
		}
		in.CreditSpecification = &types.CreditSpecificationRequest{CpuCredits: aws.String(mode)}
	}
	if spec.Spot {
		in.InstanceMarketOptions = &types.InstanceMarketOptionsRequest{MarketType: types.MarketTypeSpot,
			SpotOptions: &types.SpotMarketOptions{SpotInstanceType: types.SpotInstanceTypeOneTime,
				InstanceInterruptionBehavior: types.InstanceInterruptionBehaviorTerminate}}
	}
	return in, it, sn, nil
}

// tags returns the instance's tags: spec.Tags, the cluster and cell tags and a Name.
func (b *Backend) tags(spec cloud.LaunchSpec) ([]types.Tag, error) {
	m := map[string]string{"Name": "kip-" + spec.CellID}
	for k, v := range spec.Tags {
		switch {
		case k == "" || len(k) > 128:
			return nil, cloud.InvalidSpec("tags: key %q must be 1..128 characters", k)
		case len(v) > 256:
			return nil, cloud.InvalidSpec("tags[%s]: value is %d characters, EC2 allows 256", k, len(v))
		case strings.HasPrefix(strings.ToLower(k), "aws:"):
			return nil, cloud.InvalidSpec("tags: key %q uses the reserved aws: prefix", k)
		case k == cloud.TagCluster && v != b.cfg.ClusterName:
			return nil, cloud.InvalidSpec("tags[%s]: %q, but this backend serves cluster %q", k, v, b.cfg.ClusterName)
		case k == cloud.TagCellID && v != spec.CellID:
			return nil, cloud.InvalidSpec("tags[%s]: %q differs from cellID %q", k, v, spec.CellID)
		}
		m[k] = v
	}
	m[cloud.TagCluster] = b.cfg.ClusterName
	m[cloud.TagCellID] = spec.CellID
	if len(m) > maxTags {
		return nil, cloud.InvalidSpec("tags: %d tags with Kip's own; EC2 allows %d per resource", len(m), maxTags)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]types.Tag, 0, len(m))
	for _, k := range keys {
		out = append(out, types.Tag{Key: aws.String(k), Value: aws.String(m[k])})
	}
	return out, nil
}

// toInstance converts an EC2 instance.
func toInstance(in types.Instance) *cloud.Instance {
	out := &cloud.Instance{
		ID:           aws.ToString(in.InstanceId),
		InstanceType: string(in.InstanceType),
		Spot:         in.InstanceLifecycle == types.InstanceLifecycleTypeSpot,
		PrivateIP:    aws.ToString(in.PrivateIpAddress),
		PublicIP:     aws.ToString(in.PublicIpAddress),
		LaunchTime:   aws.ToTime(in.LaunchTime),
		Tags:         map[string]string{},
	}
	if in.Placement != nil {
		out.Zone = aws.ToString(in.Placement.AvailabilityZone)
	}
	if in.State != nil {
		switch in.State.Name {
		case types.InstanceStateNamePending:
			out.State = cloud.StatePending
		case types.InstanceStateNameRunning:
			out.State = cloud.StateRunning
		case types.InstanceStateNameTerminated:
			out.State = cloud.StateTerminated
		default: // shutting-down, stopping, stopped: on its way out; cells are never stopped.
			out.State = cloud.StateTerminating
		}
	}
	for _, t := range in.Tags {
		out.Tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	out.CellID = out.Tags[cloud.TagCellID]
	return out
}
