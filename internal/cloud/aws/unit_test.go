package aws_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/kip-dev/kip/internal/cloud"
	kipaws "github.com/kip-dev/kip/internal/cloud/aws"
)

// stubEC2 answers the set-up calls with one subnet, VPC, group and image; RunInstances fails
// with the queued errors first. Calls it does not define panic (the nil embedded interface).
type stubEC2 struct {
	kipaws.EC2API
	runErrs []error
	runs    atomic.Int32
}

func (s *stubEC2) DescribeSubnets(context.Context, *ec2.DescribeSubnetsInput, ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error) {
	return &ec2.DescribeSubnetsOutput{Subnets: []types.Subnet{{SubnetId: aws.String("subnet-00000001"), VpcId: aws.String("vpc-00000001"), AvailabilityZone: aws.String("eu-west-1a")}}}, nil
}

func (s *stubEC2) DescribeVpcs(context.Context, *ec2.DescribeVpcsInput, ...func(*ec2.Options)) (*ec2.DescribeVpcsOutput, error) {
	return &ec2.DescribeVpcsOutput{Vpcs: []types.Vpc{{VpcId: aws.String("vpc-00000001"), CidrBlock: aws.String("10.1.0.0/16")}}}, nil
}

func (s *stubEC2) DescribeSecurityGroups(context.Context, *ec2.DescribeSecurityGroupsInput, ...func(*ec2.Options)) (*ec2.DescribeSecurityGroupsOutput, error) {
	all := []types.IpRange{{CidrIp: aws.String("10.1.0.0/16")}}
	return &ec2.DescribeSecurityGroupsOutput{SecurityGroups: []types.SecurityGroup{{GroupId: aws.String("sg-00000001"), IpPermissions: []types.IpPermission{
		{IpProtocol: aws.String("tcp"), FromPort: aws.Int32(6421), ToPort: aws.Int32(6421), IpRanges: all},
		{IpProtocol: aws.String("-1"), IpRanges: all},
	}}}}, nil
}

func (s *stubEC2) DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	return &ec2.DescribeImagesOutput{Images: []types.Image{{ImageId: aws.String("ami-00000001"), Architecture: types.ArchitectureValuesX8664,
		RootDeviceName: aws.String("/dev/xvda"), CreationDate: aws.String("2026-01-01T00:00:00.000Z")}}}, nil
}

// DescribeInstances knows no instance (an IdempotentParameterMismatch then has nothing to adopt).
func (s *stubEC2) DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	return &ec2.DescribeInstancesOutput{}, nil
}

func (s *stubEC2) RunInstances(_ context.Context, in *ec2.RunInstancesInput, _ ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error) {
	n := int(s.runs.Add(1))
	if n <= len(s.runErrs) {
		return nil, s.runErrs[n-1]
	}
	return &ec2.RunInstancesOutput{Instances: []types.Instance{{InstanceId: aws.String(fmt.Sprintf("i-%08x", n)), InstanceType: in.InstanceType,
		State: &types.InstanceState{Name: types.InstanceStateNamePending}, LaunchTime: aws.Time(time.Now()),
		Placement: &types.Placement{AvailabilityZone: aws.String("eu-west-1a")}, Tags: in.TagSpecifications[0].Tags}}}, nil
}

func stubBackend(t *testing.T, stub *stubEC2) *kipaws.Backend {
	t.Helper()
	b, err := kipaws.New(context.Background(), kipaws.Config{Region: "eu-west-1", SubnetID: "subnet-00000001", ClusterName: cluster,
		ImageID: "ami-00000001", EC2: stub, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("New with a stub EC2API: %v", err)
	}
	return b
}

func apiErr(code string) error {
	return &smithy.GenericAPIError{Code: code, Message: code + " for the test"}
}

// TestThrottlingNeverReachesCallers: the backend retries throttling with back-off above the
// SDK, and only a caller's own deadline ends the wait (with a Throttled error).
func TestThrottlingNeverReachesCallers(t *testing.T) {
	stub := &stubEC2{runErrs: []error{apiErr("RequestLimitExceeded"), apiErr("RequestResourceCountExceeded"), apiErr("RequestLimitExceeded")}}
	b := stubBackend(t, stub)
	inst, err := b.Launch(ctxT(t, 30*time.Second), spec("thr"))
	if err != nil {
		t.Fatalf("Launch through three throttles: %v", err)
	}
	if stub.runs.Load() != 4 || b.Throttled() != 3 || inst.ID == "" {
		t.Errorf("RunInstances tried %d times, %d back-offs; want 4 and 3", stub.runs.Load(), b.Throttled())
	}

	stub = &stubEC2{runErrs: make([]error, 1000)}
	for i := range stub.runErrs {
		stub.runErrs[i] = apiErr("RequestLimitExceeded")
	}
	b = stubBackend(t, stub)
	_, err = b.Launch(ctxT(t, 300*time.Millisecond), spec("thr2"))
	if !cloud.IsThrottled(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Launch throttled past the caller's deadline: %v, want a Throttled error wrapping the deadline", err)
	}
}

func TestErrorClassification(t *testing.T) {
	tests := []struct {
		code string
		want cloud.Kind
	}{
		{"InsufficientInstanceCapacity", cloud.KindInsufficientCapacity},
		{"Unsupported", cloud.KindInsufficientCapacity},
		{"MaxSpotInstanceCountExceeded", cloud.KindInsufficientCapacity},
		{"InvalidParameterValue", cloud.KindInvalidSpec},
		{"IdempotentParameterMismatch", cloud.KindInvalidSpec},
		{"InvalidAMIID.NotFound", cloud.KindInvalidSpec},
		{"InvalidGroup.NotFound", cloud.KindInvalidSpec},
		{"UnauthorizedOperation", cloud.KindUnknown},
		{"InternalError", cloud.KindUnknown},
	}
	for _, tc := range tests {
		t.Run(tc.code, func(t *testing.T) {
			stub := &stubEC2{runErrs: []error{apiErr(tc.code)}}
			_, err := stubBackend(t, stub).Launch(ctxT(t, 10*time.Second), spec("cls"))
			if err == nil {
				t.Fatal("Launch succeeded")
			}
			if got := cloud.KindOf(err); got != tc.want {
				t.Errorf("EC2 %s classified as %v, want %v (%v)", tc.code, got, tc.want, err)
			}
			var ae smithy.APIError
			if !errors.As(err, &ae) || ae.ErrorCode() != tc.code {
				t.Errorf("the classified error lost the EC2 error: %v", err)
			}
		})
	}
}

// laggingTags is an EC2 whose DescribeInstances shows the instance it launched with its
// launch tags only: tags CreateTags wrote are not visible yet (EC2's eventual consistency).
type laggingTags struct {
	stubEC2
	mu      sync.Mutex
	run     *types.Instance
	tagged  []string
	created int
}

func (l *laggingTags) RunInstances(ctx context.Context, in *ec2.RunInstancesInput, opts ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error) {
	out, err := l.stubEC2.RunInstances(ctx, in, opts...)
	if err == nil {
		l.mu.Lock()
		l.run = &out.Instances[0]
		l.mu.Unlock()
	}
	return out, err
}

func (l *laggingTags) DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.run == nil {
		return &ec2.DescribeInstancesOutput{}, nil
	}
	i := *l.run
	i.State = &types.InstanceState{Name: types.InstanceStateNameRunning}
	return &ec2.DescribeInstancesOutput{Reservations: []types.Reservation{{Instances: []types.Instance{i}}}}, nil
}

func (l *laggingTags) CreateTags(_ context.Context, in *ec2.CreateTagsInput, _ ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.created++
	for _, t := range in.Tags {
		l.tagged = append(l.tagged, aws.ToString(t.Key)+"="+aws.ToString(t.Value))
	}
	return &ec2.CreateTagsOutput{}, nil
}

// TestSetTagsOutlastsStaleDescribes: tags SetTags wrote are listed at once and stay listed
// while DescribeInstances does not show them yet, so a bound standby cell is never seen as
// unbound by kip's own listings; they are sent in one CreateTags.
func TestSetTagsOutlastsStaleDescribes(t *testing.T) {
	stub := &laggingTags{}
	b, err := kipaws.New(context.Background(), kipaws.Config{Region: "eu-west-1", SubnetID: "subnet-00000001", ClusterName: cluster,
		ImageID: "ami-00000001", EC2: stub, PollInterval: time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 10*time.Second)
	inst, err := b.Launch(ctx, spec("bind"))
	if err != nil {
		t.Fatal(err)
	}
	bound := map[string]string{cloud.TagPodUID: "uid-1", "kip.dev/pod-name": "web"}
	if err := b.SetTags(ctx, inst.ID, bound); err != nil {
		t.Fatal(err)
	}
	if stub.created != 1 || len(stub.tagged) != 2 {
		t.Errorf("CreateTags calls %d with %v, want one with both tags", stub.created, stub.tagged)
	}
	for range 5 {
		time.Sleep(5 * time.Millisecond) // past PollInterval: the next List refreshes
		list, err := b.List(ctx, bound)
		if err != nil || len(list) != 1 || list[0].ID != inst.ID {
			t.Fatalf("List by the tags SetTags wrote, with DescribeInstances not showing them yet: %v, %v; want %s", list, err, inst.ID)
		}
	}
}
