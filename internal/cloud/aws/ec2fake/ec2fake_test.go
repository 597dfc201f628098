package ec2fake_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2limits"
	"github.com/kip-dev/kip/internal/cloud/aws/sdkhttp"
)

// client returns the real SDK client pointed at a fresh fake.
func client(t *testing.T, opts ec2fake.Options, attempts int) (*ec2.Client, *ec2fake.Server) {
	t.Helper()
	f := ec2fake.New(opts)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c := ec2.New(ec2.Options{Region: f.Region(), BaseEndpoint: aws.String(srv.URL), HTTPClient: sdkhttp.New(),
		Credentials: credentials.NewStaticCredentialsProvider("AKIDFAKE", "secret", ""), RetryMaxAttempts: attempts})
	return c, f
}

func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func run(ctx context.Context, c *ec2.Client, mod func(*ec2.RunInstancesInput)) (*ec2.RunInstancesOutput, error) {
	in := &ec2.RunInstancesInput{MinCount: aws.Int32(1), MaxCount: aws.Int32(1), ImageId: aws.String(newestImage(ctx, c)),
		InstanceType: "t3.nano", SubnetId: aws.String(ec2fake.SubnetA)}
	if mod != nil {
		mod(in)
	}
	return c.RunInstances(ctx, in)
}

func newestImage(ctx context.Context, c *ec2.Client) string {
	out, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{ec2fake.ImageOwner},
		Filters: []types.Filter{{Name: aws.String("name"), Values: []string{"kip-cell-*"}}, {Name: aws.String("architecture"), Values: []string{"x86_64"}}}})
	if err != nil || len(out.Images) == 0 {
		return "ami-none"
	}
	best := out.Images[0]
	for _, im := range out.Images {
		if aws.ToString(im.CreationDate) > aws.ToString(best.CreationDate) {
			best = im
		}
	}
	return aws.ToString(best.ImageId)
}

func TestRunDescribeTerminate(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
	c, f := client(t, ec2fake.Options{Clock: clk, PendingDelay: 5 * time.Second, ShutdownDelay: 3 * time.Second}, 1)
	ctx := context.Background()
	ud := base64.StdEncoding.EncodeToString([]byte("#cloud-config\n"))
	out, err := run(ctx, c, func(in *ec2.RunInstancesInput) {
		in.ClientToken = aws.String("tok-1")
		in.UserData = aws.String(ud)
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: aws.String(ec2fake.InstanceProfile)}
		in.BlockDeviceMappings = []types.BlockDeviceMapping{{DeviceName: aws.String("/dev/xvda"), Ebs: &types.EbsBlockDevice{VolumeSize: aws.Int32(20), VolumeType: types.VolumeTypeGp3}}}
		in.InstanceMarketOptions = &types.InstanceMarketOptionsRequest{MarketType: types.MarketTypeSpot}
		in.TagSpecifications = []types.TagSpecification{
			{ResourceType: types.ResourceTypeInstance, Tags: []types.Tag{{Key: aws.String("kip.dev/cluster"), Value: aws.String("c1")}, {Key: aws.String("Name"), Value: aws.String("cell")}}},
			{ResourceType: types.ResourceTypeVolume, Tags: []types.Tag{{Key: aws.String("kip.dev/cluster"), Value: aws.String("c1")}}},
		}
	})
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	if len(out.Instances) != 1 {
		t.Fatalf("RunInstances returned %d instances", len(out.Instances))
	}
	inst := out.Instances[0]
	id := aws.ToString(inst.InstanceId)
	if inst.State.Name != types.InstanceStateNamePending || inst.InstanceLifecycle != types.InstanceLifecycleTypeSpot ||
		aws.ToString(inst.PrivateIpAddress) == "" || aws.ToString(inst.Placement.AvailabilityZone) != "us-east-1a" || inst.LaunchTime == nil {
		t.Errorf("RunInstances instance = state %s lifecycle %s ip %s zone %s launch %v", inst.State.Name, inst.InstanceLifecycle,
			aws.ToString(inst.PrivateIpAddress), aws.ToString(inst.Placement.AvailabilityZone), inst.LaunchTime)
	}
	snap := f.Instances()[0]
	if snap.UserData != ud || snap.RootVolumeGiB != 20 || snap.Profile != ec2fake.InstanceProfile || snap.VolumeTags["kip.dev/cluster"] != "c1" {
		t.Errorf("fake kept %+v", snap)
	}

	// Same token, same request: the same instance. Same token, other request: mismatch.
	again, err := run(ctx, c, func(in *ec2.RunInstancesInput) {
		in.ClientToken = aws.String("tok-1")
		in.UserData = aws.String(ud)
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: aws.String(ec2fake.InstanceProfile)}
		in.BlockDeviceMappings = []types.BlockDeviceMapping{{DeviceName: aws.String("/dev/xvda"), Ebs: &types.EbsBlockDevice{VolumeSize: aws.Int32(20), VolumeType: types.VolumeTypeGp3}}}
		in.InstanceMarketOptions = &types.InstanceMarketOptionsRequest{MarketType: types.MarketTypeSpot}
		in.TagSpecifications = []types.TagSpecification{
			{ResourceType: types.ResourceTypeInstance, Tags: []types.Tag{{Key: aws.String("kip.dev/cluster"), Value: aws.String("c1")}, {Key: aws.String("Name"), Value: aws.String("cell")}}},
			{ResourceType: types.ResourceTypeVolume, Tags: []types.Tag{{Key: aws.String("kip.dev/cluster"), Value: aws.String("c1")}}},
		}
	})
	if err != nil || aws.ToString(again.Instances[0].InstanceId) != id {
		t.Errorf("replayed RunInstances = %v, %v; want instance %s", again, err, id)
	}
	_, err = run(ctx, c, func(in *ec2.RunInstancesInput) { in.ClientToken = aws.String("tok-1") })
	if code(err) != "IdempotentParameterMismatch" {
		t.Errorf("RunInstances with a reused token and other arguments: %v, want IdempotentParameterMismatch", err)
	}
	if n := len(f.Instances()); n != 1 {
		t.Errorf("fake has %d instances, want 1", n)
	}

	describe := func(filters ...types.Filter) []types.Instance {
		t.Helper()
		var all []types.Instance
		p := ec2.NewDescribeInstancesPaginator(c, &ec2.DescribeInstancesInput{Filters: filters, MaxResults: aws.Int32(5)})
		for p.HasMorePages() {
			out, err := p.NextPage(ctx)
			if err != nil {
				t.Fatalf("DescribeInstances: %v", err)
			}
			for _, r := range out.Reservations {
				all = append(all, r.Instances...)
			}
		}
		return all
	}
	clk.Step(5 * time.Second)
	if got := describe(types.Filter{Name: aws.String("instance-state-name"), Values: []string{"running"}}); len(got) != 1 {
		t.Errorf("running instances after the pending delay: %d, want 1", len(got))
	}
	if got := describe(types.Filter{Name: aws.String("tag:kip.dev/cluster"), Values: []string{"c2"}}); len(got) != 0 {
		t.Errorf("instances tagged c2: %d, want 0", len(got))
	}

	// Pagination over many instances.
	for range 11 {
		if _, err := run(ctx, c, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := describe(); len(got) != 12 {
		t.Errorf("paginated DescribeInstances returned %d instances, want 12", len(got))
	}
	if got := describe(types.Filter{Name: aws.String("tag-key"), Values: []string{"kip.dev/*"}}); len(got) != 1 {
		t.Errorf("tag-key filter returned %d instances, want 1", len(got))
	}

	// Terminate is idempotent; unknown ids fail the whole call.
	for i := range 2 {
		out, err := c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}})
		if err != nil {
			t.Fatalf("TerminateInstances #%d: %v", i, err)
		}
		if s := out.TerminatingInstances[0].CurrentState.Name; s != types.InstanceStateNameShuttingDown {
			t.Errorf("TerminateInstances #%d state %s, want shutting-down", i, s)
		}
	}
	_, err = c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id, "i-0123456789abcdef0"}})
	if code(err) != "InvalidInstanceID.NotFound" || !strings.Contains(err.Error(), "i-0123456789abcdef0") {
		t.Errorf("TerminateInstances with an unknown id: %v", err)
	}
	clk.Step(3 * time.Second)
	if got := describe(types.Filter{Name: aws.String("instance-id"), Values: []string{id}}); len(got) != 1 || got[0].State.Name != types.InstanceStateNameTerminated {
		t.Errorf("terminated instance described as %+v", got)
	}
	clk.Step(ec2fake.TerminatedRetention + time.Second)
	if _, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}}); code(err) != "InvalidInstanceID.NotFound" {
		t.Errorf("DescribeInstances long after termination: %v, want InvalidInstanceID.NotFound", err)
	}
	if f.Calls("RunInstances") != 14 {
		t.Errorf("RunInstances calls = %d, want 14", f.Calls("RunInstances"))
	}
	f.Reset()
	if len(f.Instances()) != 0 || f.Calls("RunInstances") != 0 {
		t.Errorf("Reset left instances or counters")
	}
}

func TestRunInstancesErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		prep func(*ec2fake.Server)
		mod  func(*ec2.RunInstancesInput)
		code string
	}{
		{"user data over 16 KB", nil, func(in *ec2.RunInstancesInput) {
			in.UserData = aws.String(base64.StdEncoding.EncodeToString(make([]byte, 12289)))
		}, "InvalidParameterValue"},
		{"user data not base64", nil, func(in *ec2.RunInstancesInput) { in.UserData = aws.String("!!") }, "InvalidParameterValue"},
		{"unknown type", nil, func(in *ec2.RunInstancesInput) { in.InstanceType = "x9.huge" }, "InvalidParameterValue"},
		{"arm type on x86 image", nil, func(in *ec2.RunInstancesInput) { in.InstanceType = "m6g.large" }, "InvalidParameterValue"},
		{"unknown image", nil, func(in *ec2.RunInstancesInput) { in.ImageId = aws.String("ami-0000000000000dead") }, "InvalidAMIID.NotFound"},
		{"unknown subnet", nil, func(in *ec2.RunInstancesInput) { in.SubnetId = aws.String("subnet-0000000000000dead") }, "InvalidSubnetID.NotFound"},
		{"unknown group", nil, func(in *ec2.RunInstancesInput) { in.SecurityGroupIds = []string{"sg-0000000000000dead"} }, "InvalidGroup.NotFound"},
		{"unknown profile", nil, func(in *ec2.RunInstancesInput) {
			in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: aws.String("nope")}
		}, "InvalidParameterValue"},
		{"subnet and interfaces", nil, func(in *ec2.RunInstancesInput) {
			in.NetworkInterfaces = []types.InstanceNetworkInterfaceSpecification{{DeviceIndex: aws.Int32(0), SubnetId: aws.String(ec2fake.SubnetA)}}
		}, "InvalidParameterCombination"},
		{"volume smaller than image", nil, func(in *ec2.RunInstancesInput) {
			in.BlockDeviceMappings = []types.BlockDeviceMapping{{DeviceName: aws.String("/dev/xvda"), Ebs: &types.EbsBlockDevice{VolumeSize: aws.Int32(1)}}}
		}, "InvalidBlockDeviceMapping"},
		{"capacity", func(f *ec2fake.Server) { f.SetInsufficientCapacity("t3.nano", "", true) }, nil, "InsufficientInstanceCapacity"},
		{"capacity in the zone", func(f *ec2fake.Server) { f.SetInsufficientCapacity("t3.nano", "us-east-1a", true) }, nil, "InsufficientInstanceCapacity"},
		{"type not in zone", nil, func(in *ec2.RunInstancesInput) {
			in.InstanceType = "g4dn.xlarge"
			in.SubnetId = aws.String(ec2fake.SubnetB)
		}, "Unsupported"},
		{"injected", func(f *ec2fake.Server) { f.InjectError("RunInstances", "UnauthorizedOperation", "no", 1) }, nil, "UnauthorizedOperation"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, f := client(t, ec2fake.Options{}, 1)
			if tc.prep != nil {
				tc.prep(f)
			}
			_, err := run(ctx, c, tc.mod)
			if got := code(err); got != tc.code {
				t.Fatalf("RunInstances: %v (code %q), want code %s", err, got, tc.code)
			}
			if n := len(f.Instances()); n != 0 {
				t.Errorf("a refused RunInstances left %d instances", n)
			}
		})
	}
}

func TestPrivateIPOnlyAndZoneCapacity(t *testing.T) {
	ctx := context.Background()
	c, f := client(t, ec2fake.Options{}, 1)
	f.SetInsufficientCapacity("t3.nano", "us-east-1a", true)
	out, err := run(ctx, c, func(in *ec2.RunInstancesInput) {
		in.SubnetId = nil
		in.NetworkInterfaces = []types.InstanceNetworkInterfaceSpecification{{DeviceIndex: aws.Int32(0), SubnetId: aws.String(ec2fake.SubnetB),
			Groups: []string{ec2fake.DefaultGroupID}, AssociatePublicIpAddress: aws.Bool(false)}}
	})
	if err != nil {
		t.Fatalf("RunInstances in the other zone: %v", err)
	}
	if ip := aws.ToString(out.Instances[0].PublicIpAddress); ip != "" {
		t.Errorf("private-ip-only instance has public IP %s", ip)
	}
	out, err = run(ctx, c, func(in *ec2.RunInstancesInput) { in.SubnetId = aws.String(ec2fake.SubnetB) })
	if err != nil {
		t.Fatal(err)
	}
	if ip := aws.ToString(out.Instances[0].PublicIpAddress); ip != "" {
		t.Errorf("subnet B does not map public IPs, yet the instance has %s", ip)
	}
}

func TestSubnetAddressExhaustion(t *testing.T) {
	ctx := context.Background()
	c, f := client(t, ec2fake.Options{}, 1)
	id, err := f.AddSubnet("10.0.64.0/29", "us-east-1a", false) // 8 - 5 reserved = 3 usable
	if err != nil {
		t.Fatal(err)
	}
	out, err := run(ctx, c, func(in *ec2.RunInstancesInput) { in.SubnetId = aws.String(id); in.MaxCount = aws.Int32(10) })
	if err != nil || len(out.Instances) != 3 {
		t.Fatalf("RunInstances MinCount 1 MaxCount 10 in a /29: %v, %d instances; want 3", err, len(out.Instances))
	}
	seen := map[string]bool{}
	for _, in := range out.Instances {
		ip := aws.ToString(in.PrivateIpAddress)
		if seen[ip] || !strings.HasPrefix(ip, "10.0.64.") {
			t.Errorf("bad or duplicate address %s", ip)
		}
		seen[ip] = true
	}
	if _, err := run(ctx, c, func(in *ec2.RunInstancesInput) { in.SubnetId = aws.String(id) }); code(err) != "InsufficientFreeAddressesInSubnet" {
		t.Errorf("RunInstances in a full subnet: %v", err)
	}
}

func TestThrottling(t *testing.T) {
	lim := ec2limits.Published().Scaled(0.01, 0.001) // Describe: burst 1, ~0.02/s
	c, f := client(t, ec2fake.Options{Limits: &lim}, 1)
	ctx := context.Background()
	var throttled int
	for range 5 {
		_, err := c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{})
		if code(err) == "RequestLimitExceeded" {
			throttled++
		} else if err != nil {
			t.Fatalf("DescribeSubnets: %v", err)
		}
	}
	if throttled < 3 || f.Throttled("DescribeSubnets") != throttled {
		t.Errorf("throttled %d of 5 calls (fake counted %d); want at least 3", throttled, f.Throttled("DescribeSubnets"))
	}
	f.Reset()
	if _, err := c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{}); err != nil {
		t.Errorf("DescribeSubnets after Reset refilled the buckets: %v", err)
	}
}

func TestSDKRetriesThrottling(t *testing.T) {
	c, f := client(t, ec2fake.Options{}, 3)
	f.InjectError("DescribeVpcs", "RequestLimitExceeded", "Request limit exceeded.", 1)
	out, err := c.DescribeVpcs(context.Background(), &ec2.DescribeVpcsInput{})
	if err != nil || len(out.Vpcs) != 1 || aws.ToString(out.Vpcs[0].CidrBlock) != ec2fake.VPCCIDR {
		t.Fatalf("DescribeVpcs after one throttle: %v, %+v", err, out)
	}
	if f.Calls("DescribeVpcs") != 2 {
		t.Errorf("DescribeVpcs calls = %d, want 2 (the SDK retried once)", f.Calls("DescribeVpcs"))
	}
}

func TestSecurityGroupsAndImages(t *testing.T) {
	ctx := context.Background()
	c, f := client(t, ec2fake.Options{}, 1)
	cg, err := c.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String("kip-c1-cells"), Description: aws.String("kip cells"), VpcId: aws.String(ec2fake.VPCID),
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeSecurityGroup, Tags: []types.Tag{{Key: aws.String("kip.dev/cluster"), Value: aws.String("c1")}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String("kip-c1-cells"), Description: aws.String("x"), VpcId: aws.String(ec2fake.VPCID)}); code(err) != "InvalidGroup.Duplicate" {
		t.Errorf("duplicate CreateSecurityGroup: %v", err)
	}
	perm := types.IpPermission{IpProtocol: aws.String("tcp"), FromPort: aws.Int32(6421), ToPort: aws.Int32(6421), IpRanges: []types.IpRange{{CidrIp: aws.String(ec2fake.VPCCIDR)}}}
	if _, err := c.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: cg.GroupId, IpPermissions: []types.IpPermission{perm}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: cg.GroupId, IpPermissions: []types.IpPermission{perm}}); code(err) != "InvalidPermission.Duplicate" {
		t.Errorf("duplicate rule: %v", err)
	}
	out, err := c.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{{Name: aws.String("group-name"), Values: []string{"kip-c1-cells"}}, {Name: aws.String("vpc-id"), Values: []string{ec2fake.VPCID}}}})
	if err != nil || len(out.SecurityGroups) != 1 || len(out.SecurityGroups[0].IpPermissions) != 1 || aws.ToInt32(out.SecurityGroups[0].IpPermissions[0].FromPort) != 6421 {
		t.Fatalf("DescribeSecurityGroups: %v %+v", err, out)
	}
	if len(f.SecurityGroups()) != 2 {
		t.Errorf("fake has %d groups, want the default and the new one", len(f.SecurityGroups()))
	}
	img := newestImage(ctx, c)
	im, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{img}})
	if err != nil || aws.ToString(im.Images[0].Name) != "kip-cell-2026.03.1-x86_64" || aws.ToString(im.Images[0].RootDeviceName) != "/dev/xvda" {
		t.Errorf("newest image: %v %+v", err, im)
	}
	if _, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{Filters: []types.Filter{{Name: aws.String("bogus"), Values: []string{"x"}}}}); code(err) != "InvalidParameterValue" {
		t.Errorf("unknown filter: %v", err)
	}
}

func TestCatalogActions(t *testing.T) {
	ctx := context.Background()
	c, _ := client(t, ec2fake.Options{}, 1)
	var names []string
	p := ec2.NewDescribeInstanceTypesPaginator(c, &ec2.DescribeInstanceTypesInput{MaxResults: aws.Int32(5)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range out.InstanceTypes {
			names = append(names, string(it.InstanceType))
			if it.InstanceType == "g4dn.xlarge" && (it.GpuInfo == nil || aws.ToInt32(it.GpuInfo.Gpus[0].Count) != 1 || aws.ToString(it.GpuInfo.Gpus[0].Manufacturer) != "NVIDIA") {
				t.Errorf("g4dn.xlarge GPU info %+v", it.GpuInfo)
			}
			if it.InstanceType == "g4ad.xlarge" && (it.GpuInfo == nil || aws.ToString(it.GpuInfo.Gpus[0].Manufacturer) != "AMD") {
				t.Errorf("g4ad.xlarge GPU info %+v, want an AMD GPU", it.GpuInfo)
			}
			if it.InstanceType == "t3.nano" && (aws.ToInt64(it.MemoryInfo.SizeInMiB) != 512 || aws.ToInt32(it.VCpuInfo.DefaultVCpus) != 2 || !aws.ToBool(it.BurstablePerformanceSupported)) {
				t.Errorf("t3.nano %+v", it)
			}
		}
	}
	if len(names) != 9 {
		t.Errorf("DescribeInstanceTypes pages returned %v", names)
	}
	off, err := c.DescribeInstanceTypeOfferings(ctx, &ec2.DescribeInstanceTypeOfferingsInput{LocationType: types.LocationTypeAvailabilityZone,
		Filters: []types.Filter{{Name: aws.String("instance-type"), Values: []string{"g4dn.xlarge"}}}})
	if err != nil || len(off.InstanceTypeOfferings) != 1 || aws.ToString(off.InstanceTypeOfferings[0].Location) != "us-east-1a" {
		t.Errorf("offerings of g4dn.xlarge: %v %+v", err, off)
	}
	sp, err := c.DescribeSpotPriceHistory(ctx, &ec2.DescribeSpotPriceHistoryInput{InstanceTypes: []types.InstanceType{"t3.nano"}, ProductDescriptions: []string{"Linux/UNIX"}})
	if err != nil || len(sp.SpotPriceHistory) != 2 || aws.ToString(sp.SpotPriceHistory[0].SpotPrice) != "0.001600" {
		t.Errorf("spot prices of t3.nano: %v %+v", err, sp)
	}
}

func TestCreateTags(t *testing.T) {
	ctx := context.Background()
	c, f := client(t, ec2fake.Options{}, 1)
	out, err := run(ctx, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	if _, err := c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id, ec2fake.DefaultGroupID},
		Tags: []types.Tag{{Key: aws.String("team"), Value: aws.String("blue")}}}); err != nil {
		t.Fatal(err)
	}
	if got := f.Instances()[0].Tags["team"]; got != "blue" {
		t.Errorf("instance tag team = %q", got)
	}
	tests := []struct {
		name string
		in   *ec2.CreateTagsInput
		code string
	}{
		{"unknown instance", &ec2.CreateTagsInput{Resources: []string{"i-0000000000000dead"}, Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}}, "InvalidInstanceID.NotFound"},
		{"reserved key", &ec2.CreateTagsInput{Resources: []string{id}, Tags: []types.Tag{{Key: aws.String("aws:x"), Value: aws.String("v")}}}, "InvalidParameterValue"},
		{"unknown resource", &ec2.CreateTagsInput{Resources: []string{"foo-1"}, Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}}, "InvalidID"},
	}
	for _, tc := range tests {
		if _, err := c.CreateTags(ctx, tc.in); code(err) != tc.code {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
	var many []types.Tag
	for i := range 50 {
		many = append(many, types.Tag{Key: aws.String(fmt.Sprint("k", i)), Value: aws.String("v")})
	}
	if _, err := c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id}, Tags: many}); code(err) != "TagLimitExceeded" {
		t.Errorf("51 tags on one instance: %v, want TagLimitExceeded", err)
	}
}

func TestLatency(t *testing.T) {
	c, f := client(t, ec2fake.Options{}, 1)
	f.SetLatency(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("DescribeVpcs with an hour of latency: %v, want the caller's deadline", err)
	}
	f.SetLatency(0)
	if _, err := c.DescribeVpcs(context.Background(), &ec2.DescribeVpcsInput{}); err != nil {
		t.Errorf("DescribeVpcs without latency: %v", err)
	}
}

func TestDescribeDelay(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
	c, _ := client(t, ec2fake.Options{Clock: clk, DescribeDelay: 5 * time.Second}, 1)
	ctx := context.Background()
	out, err := run(ctx, c, func(in *ec2.RunInstancesInput) { in.ClientToken = aws.String("tok-ec") })
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	if _, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}}); code(err) != "InvalidInstanceID.NotFound" {
		t.Errorf("describing a new instance by id: %v, want InvalidInstanceID.NotFound", err)
	}
	all, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	if err != nil || len(all.Reservations) != 0 {
		t.Errorf("listing right after launch: %d reservations (%v), want none", len(all.Reservations), err)
	}
	// The token still finds it, as in EC2.
	again, err := run(ctx, c, func(in *ec2.RunInstancesInput) { in.ClientToken = aws.String("tok-ec") })
	if err != nil || aws.ToString(again.Instances[0].InstanceId) != id {
		t.Errorf("RunInstances with the same token: %v, %v", again, err)
	}
	clk.Step(5 * time.Second)
	if got, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}}); err != nil || len(got.Reservations) != 1 {
		t.Errorf("describing after the delay: %v", err)
	}
}

func TestClientTokenKept24h(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
	c, f := client(t, ec2fake.Options{Clock: clk}, 1)
	ctx := context.Background()
	tok := func(typ types.InstanceType) func(*ec2.RunInstancesInput) {
		return func(in *ec2.RunInstancesInput) { in.ClientToken = aws.String("tok-24h"); in.InstanceType = typ }
	}
	if _, err := run(ctx, c, tok("t3.nano")); err != nil {
		t.Fatal(err)
	}
	clk.Step(ec2fake.ClientTokenTTL - time.Second)
	if _, err := run(ctx, c, tok("t3.micro")); code(err) != "IdempotentParameterMismatch" {
		t.Errorf("other parameters under a token of 24h-1s ago: %v, want IdempotentParameterMismatch", err)
	}
	clk.Step(time.Second)
	if _, err := run(ctx, c, tok("t3.micro")); err != nil {
		t.Errorf("the token of 24h ago is forgotten, yet: %v", err)
	}
	if n := len(f.Instances()); n != 2 {
		t.Errorf("%d instances, want 2", n)
	}
}

func TestInterruptSpot(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
	c, f := client(t, ec2fake.Options{Clock: clk, SpotNotice: 30 * time.Second}, 1)
	ctx := context.Background()
	spot, err := run(ctx, c, func(in *ec2.RunInstancesInput) {
		in.InstanceMarketOptions = &types.InstanceMarketOptionsRequest{MarketType: types.MarketTypeSpot}
	})
	if err != nil {
		t.Fatal(err)
	}
	od, err := run(ctx, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(spot.Instances[0].InstanceId)
	if err := f.InterruptSpot(aws.ToString(od.Instances[0].InstanceId), "terminate", time.Time{}); err == nil {
		t.Error("interrupting an on-demand instance worked")
	}
	if err := f.InterruptSpot(id, "hibernate", time.Time{}); err == nil {
		t.Error("the fake accepted an action it does not take")
	}
	if err := f.InterruptSpot(id, "terminate", time.Time{}); err != nil {
		t.Fatal(err)
	}
	clk.Step(29 * time.Second)
	if in, err := describe(ctx, c, id); err != nil || in.State.Name != types.InstanceStateNameRunning {
		t.Errorf("before the notice's time: %v %v, want running", in.State, err)
	}
	clk.Step(time.Second)
	in, err := describe(ctx, c, id)
	if err != nil || in.State.Name != types.InstanceStateNameTerminated || aws.ToString(in.StateReason.Code) != "Server.SpotInstanceTermination" {
		t.Errorf("at the notice's time: %v %+v %v, want terminated by Server.SpotInstanceTermination", in.State, in.StateReason, err)
	}
}

func TestControlHandler(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
	c, f := client(t, ec2fake.Options{Clock: clk}, 1)
	ctl := httptest.NewServer(f.ControlHandler())
	t.Cleanup(ctl.Close)
	ctx := context.Background()
	out, err := run(ctx, c, func(in *ec2.RunInstancesInput) {
		in.InstanceMarketOptions = &types.InstanceMarketOptionsRequest{MarketType: types.MarketTypeSpot}
	})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	post := func(path string) int {
		resp, err := http.Post(ctl.URL+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("/interrupt-spot?instance=i-00000000000000000"); code != http.StatusBadRequest {
		t.Errorf("interrupting an unknown instance: %d", code)
	}
	at := clk.Now().Add(time.Minute).Format(time.RFC3339)
	if code := post("/interrupt-spot?instance=" + id + "&at=" + at); code != http.StatusNoContent {
		t.Fatalf("interrupt-spot: %d", code)
	}
	if code := post("/capacity?type=t3.micro&on=true"); code != http.StatusNoContent {
		t.Fatalf("capacity: %d", code)
	}
	if _, err := run(ctx, c, func(in *ec2.RunInstancesInput) { in.InstanceType = "t3.micro" }); code(err) != "InsufficientInstanceCapacity" {
		t.Errorf("after POST capacity: %v", err)
	}
	if code := post("/inject-error?action=DescribeVpcs&code=Unavailable"); code != http.StatusNoContent {
		t.Fatalf("inject-error: %d", code)
	}
	if _, err := c.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{}); code(err) != "Unavailable" {
		t.Errorf("after POST inject-error: %v", err)
	}
	clk.Step(time.Minute)
	resp, err := http.Get(ctl.URL + "/instances")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list []ec2fake.Instance
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != id || list[0].State != "terminated" || !strings.HasPrefix(list[0].StateReason, "Server.SpotInstanceTermination") {
		t.Errorf("instances after the interruption's time: %+v", list)
	}
}
