package aws

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/instancetype"
)

// Discover returns cfg with Region, VPCID and SubnetID filled from the instance metadata
// service where they are empty, as New does. Callers that need the region before New (to
// pick the region's instance-type catalog) call it first and hand New the result.
func Discover(ctx context.Context, cfg Config) (Config, error) {
	b := &Backend{cfg: cfg}
	if err := b.discover(ctx); err != nil {
		return cfg, fmt.Errorf("discovering the EC2 network: %w", err)
	}
	return b.cfg, nil
}

// discover fills Region, VPCID and SubnetID from the instance metadata service when they are
// not configured: the region kip runs in, and the VPC and subnet of its primary interface.
func (b *Backend) discover(ctx context.Context) error {
	if b.cfg.Region != "" && (b.cfg.SubnetID != "" || len(b.cfg.SubnetIDs) > 0) {
		return nil
	}
	c := imds.New(imds.Options{Endpoint: b.cfg.IMDSEndpoint})
	get := func(path string) (string, error) {
		out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
		if err != nil {
			return "", fmt.Errorf("reading instance metadata %s: %w", path, err)
		}
		defer out.Content.Close()
		v, err := io.ReadAll(out.Content)
		if err != nil {
			return "", fmt.Errorf("reading instance metadata %s: %w", path, err)
		}
		return strings.TrimSpace(string(v)), nil
	}
	if b.cfg.Region == "" {
		out, err := c.GetRegion(ctx, &imds.GetRegionInput{})
		if err != nil {
			return fmt.Errorf("discovering the region (set region to skip): %w", err)
		}
		b.cfg.Region = out.Region
	}
	if b.cfg.SubnetID == "" && len(b.cfg.SubnetIDs) == 0 {
		mac, err := get("mac")
		if err != nil {
			return fmt.Errorf("discovering the subnet (set subnetID to skip): %w", err)
		}
		if b.cfg.SubnetID, err = get("network/interfaces/macs/" + mac + "/subnet-id"); err != nil {
			return fmt.Errorf("discovering the subnet (set subnetID to skip): %w", err)
		}
		if b.cfg.VPCID == "" {
			if b.cfg.VPCID, err = get("network/interfaces/macs/" + mac + "/vpc-id"); err != nil {
				return fmt.Errorf("discovering the VPC (set vpcID to skip): %w", err)
			}
		}
	}
	return nil
}

// groupName is the name of Kip's security group in the VPC.
func (b *Backend) groupName() string { return "kip-" + b.cfg.ClusterName + "-cells" }

// subnet is one subnet cells launch in.
type subnet struct {
	id, zone string
}

func (s subnet) String() string { return s.id + " (" + s.zone + ")" }

// subnetIDs returns the configured subnets, SubnetID first, without repeats.
func (b *Backend) subnetIDs() []string {
	var ids []string
	for _, id := range append([]string{b.cfg.SubnetID}, b.cfg.SubnetIDs...) {
		if id != "" && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// setUpNetwork reads the subnets (their zones and VPC) and the VPC's CIDR, and makes sure
// Kip's security group exists and allows the agent port and all traffic from inside the VPC.
// The subnets must share one VPC and lie in distinct zones.
func (b *Backend) setUpNetwork(ctx context.Context) error {
	ids := b.subnetIDs()
	var subnets *ec2.DescribeSubnetsOutput
	err := b.call(ctx, "DescribeSubnets", 0, func(ctx context.Context) (err error) {
		subnets, err = b.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: ids})
		return err
	})
	if err != nil {
		return fmt.Errorf("describing subnets %s: %w", strings.Join(ids, ", "), err)
	}
	b.subnets = nil
	for _, id := range ids {
		i := slices.IndexFunc(subnets.Subnets, func(sn types.Subnet) bool { return aws.ToString(sn.SubnetId) == id })
		if i < 0 {
			return fmt.Errorf("describing subnet %s: EC2 did not return it", id)
		}
		sn := subnets.Subnets[i]
		zone := aws.ToString(sn.AvailabilityZone)
		if j := slices.IndexFunc(b.subnets, func(s subnet) bool { return s.zone == zone }); j >= 0 {
			return fmt.Errorf("subnets %s and %s are both in %s: give one subnet per zone", b.subnets[j].id, id, zone)
		}
		b.subnets = append(b.subnets, subnet{id: id, zone: zone})
		switch vpc := aws.ToString(sn.VpcId); {
		case b.cfg.VPCID == "":
			b.cfg.VPCID = vpc
		case b.cfg.VPCID != vpc:
			return fmt.Errorf("subnet %s is in VPC %s, not in the configured VPC %s (or that of the subnets before it)", id, vpc, b.cfg.VPCID)
		}
	}
	var vpcs *ec2.DescribeVpcsOutput
	err = b.call(ctx, "DescribeVpcs", 0, func(ctx context.Context) (err error) {
		vpcs, err = b.ec2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{VpcIds: []string{b.cfg.VPCID}})
		return err
	})
	if err != nil {
		return fmt.Errorf("describing VPC %s: %w", b.cfg.VPCID, err)
	}
	if len(vpcs.Vpcs) != 1 {
		return fmt.Errorf("describing VPC %s: EC2 returned %d VPCs", b.cfg.VPCID, len(vpcs.Vpcs))
	}
	cidr := aws.ToString(vpcs.Vpcs[0].CidrBlock)
	group, err := b.ensureGroup(ctx)
	if err != nil {
		return fmt.Errorf("setting up security group %s: %w", b.groupName(), err)
	}
	b.groupID = aws.ToString(group.GroupId)
	if err := b.ensureRules(ctx, group, cidr); err != nil {
		return fmt.Errorf("setting up security group %s (%s): %w", b.groupName(), b.groupID, err)
	}
	return nil
}

func (b *Backend) findGroup(ctx context.Context) (*types.SecurityGroup, error) {
	var out *ec2.DescribeSecurityGroupsOutput
	err := b.call(ctx, "DescribeSecurityGroups", 0, func(ctx context.Context) (err error) {
		out, err = b.ec2.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{
			{Name: aws.String("group-name"), Values: []string{b.groupName()}},
			{Name: aws.String("vpc-id"), Values: []string{b.cfg.VPCID}},
		}})
		return err
	})
	if err != nil || len(out.SecurityGroups) == 0 {
		return nil, err
	}
	return &out.SecurityGroups[0], nil
}

func (b *Backend) ensureGroup(ctx context.Context) (*types.SecurityGroup, error) {
	if g, err := b.findGroup(ctx); err != nil || g != nil {
		return g, err
	}
	err := b.call(ctx, "CreateSecurityGroup", 0, func(ctx context.Context) error {
		_, err := b.ec2.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName:   aws.String(b.groupName()),
			Description: aws.String("Kip cells of cluster " + b.cfg.ClusterName + ": agent port and traffic from the VPC"),
			VpcId:       aws.String(b.cfg.VPCID),
			TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeSecurityGroup,
				Tags: []types.Tag{{Key: aws.String(cloud.TagCluster), Value: aws.String(b.cfg.ClusterName)}}}},
		})
		return err
	})
	if err != nil && errorCode(err) != "InvalidGroup.Duplicate" { // another kip replica won the race
		return nil, err
	}
	g, err := b.findGroup(ctx)
	if err == nil && g == nil {
		err = errors.New("created, yet DescribeSecurityGroups does not find it")
	}
	return g, err
}

// ensureRules authorizes what is missing of: TCP AgentPort from the VPC (kip → agent) and all
// traffic from the VPC (pods talking to cells, as on a node of the cluster).
func (b *Backend) ensureRules(ctx context.Context, g *types.SecurityGroup, cidr string) error {
	want := []types.IpPermission{
		{IpProtocol: aws.String("tcp"), FromPort: aws.Int32(AgentPort), ToPort: aws.Int32(AgentPort),
			IpRanges: []types.IpRange{{CidrIp: aws.String(cidr), Description: aws.String("kip to cell agent")}}},
		{IpProtocol: aws.String("-1"), IpRanges: []types.IpRange{{CidrIp: aws.String(cidr), Description: aws.String("traffic from the VPC")}}},
	}
	var missing []types.IpPermission
	for _, w := range want {
		found := false
		for _, p := range g.IpPermissions {
			if aws.ToString(p.IpProtocol) == aws.ToString(w.IpProtocol) && aws.ToInt32(p.FromPort) == aws.ToInt32(w.FromPort) && aws.ToInt32(p.ToPort) == aws.ToInt32(w.ToPort) {
				for _, r := range p.IpRanges {
					found = found || aws.ToString(r.CidrIp) == cidr
				}
			}
		}
		if !found {
			missing = append(missing, w)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	err := b.call(ctx, "AuthorizeSecurityGroupIngress", 0, func(ctx context.Context) error {
		_, err := b.ec2.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: g.GroupId, IpPermissions: missing})
		return err
	})
	if err != nil && errorCode(err) != "InvalidPermission.Duplicate" {
		return fmt.Errorf("authorizing ingress from %s: %w", cidr, err)
	}
	return nil
}

// imageFacts is what a launch needs to know of an image.
type imageFacts struct {
	arch, rootDevice string
}

// ec2Arch maps EC2's architecture names to Kubernetes'.
func ec2Arch(a types.ArchitectureValues) string {
	switch a {
	case types.ArchitectureValuesX8664:
		return instancetype.ArchAMD64
	case types.ArchitectureValuesArm64:
		return instancetype.ArchARM64
	}
	return string(a)
}

// setUpImages finds the default cell image per architecture: the configured ImageID, or the
// newest (by CreationDate) available image owned by ImageOwners and matching ImageFilters.
func (b *Backend) setUpImages(ctx context.Context) error {
	if b.cfg.ImageID != "" {
		facts, err := b.image(ctx, b.cfg.ImageID)
		if err != nil {
			return err
		}
		b.images[facts.arch] = b.cfg.ImageID
		return nil
	}
	if len(b.cfg.ImageOwners) == 0 && len(b.cfg.ImageFilters) == 0 {
		return errors.New("looking up the cell image: set imageID, or imageOwners and imageFilters")
	}
	in := &ec2.DescribeImagesInput{Owners: b.cfg.ImageOwners,
		Filters: []types.Filter{{Name: aws.String("state"), Values: []string{"available"}}}}
	names := make([]string, 0, len(b.cfg.ImageFilters))
	for n := range b.cfg.ImageFilters {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		in.Filters = append(in.Filters, types.Filter{Name: aws.String(n), Values: b.cfg.ImageFilters[n]})
	}
	var imgs []types.Image
	err := b.call(ctx, "DescribeImages", 0, func(ctx context.Context) error {
		imgs = nil
		p := ec2.NewDescribeImagesPaginator(b.ec2, in)
		for p.HasMorePages() {
			out, err := p.NextPage(ctx)
			if err != nil {
				return err
			}
			imgs = append(imgs, out.Images...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("looking up the cell image (owners %v, filters %v): %w", b.cfg.ImageOwners, b.cfg.ImageFilters, err)
	}
	newest := map[string]types.Image{}
	for _, im := range imgs {
		arch := ec2Arch(im.Architecture)
		if cur, ok := newest[arch]; !ok || aws.ToString(im.CreationDate) > aws.ToString(cur.CreationDate) {
			newest[arch] = im
		}
	}
	if len(newest) == 0 {
		return fmt.Errorf("looking up the cell image: no available image owned by %v matches %v", b.cfg.ImageOwners, b.cfg.ImageFilters)
	}
	b.imgMu.Lock()
	defer b.imgMu.Unlock()
	for arch, im := range newest {
		id := aws.ToString(im.ImageId)
		b.images[arch] = id
		b.imageInfo[id] = imageFacts{arch: arch, rootDevice: aws.ToString(im.RootDeviceName)}
	}
	return nil
}

// image returns the facts of image id, asking EC2 once per id.
func (b *Backend) image(ctx context.Context, id string) (imageFacts, error) {
	b.imgMu.Lock()
	f, ok := b.imageInfo[id]
	b.imgMu.Unlock()
	if ok {
		return f, nil
	}
	var out *ec2.DescribeImagesOutput
	err := b.call(ctx, "DescribeImages", 0, func(ctx context.Context) (err error) {
		out, err = b.ec2.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{id}})
		return err
	})
	if err == nil && len(out.Images) == 0 {
		err = cloud.NotFound("image %s does not exist", id)
	}
	if err != nil {
		if cloud.IsNotFound(err) {
			return imageFacts{}, cloud.Wrap(cloud.KindInvalidSpec, err, "image %s", id)
		}
		return imageFacts{}, fmt.Errorf("describing image %s: %w", id, err)
	}
	f = imageFacts{arch: ec2Arch(out.Images[0].Architecture), rootDevice: aws.ToString(out.Images[0].RootDeviceName)}
	b.imgMu.Lock()
	b.imageInfo[id] = f
	b.imgMu.Unlock()
	return f, nil
}
