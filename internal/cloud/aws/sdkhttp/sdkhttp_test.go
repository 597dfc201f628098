package sdkhttp_test

import (
	"context"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
	"github.com/kip-dev/kip/internal/cloud/aws/sdkhttp"
)

// TestLargeResponsesOnReusedConnections: many calls with large responses over reused
// connections, none retried, all succeed. Without sdkhttp.Client, a few dozen calls are enough
// for one to fail with "use of closed network connection".
func TestLargeResponsesOnReusedConnections(t *testing.T) {
	f := ec2fake.New(ec2fake.Options{})
	var many []ec2fake.InstanceType
	for i := range 250 {
		many = append(many, ec2fake.InstanceType{Name: "z" + strconv.Itoa(i) + ".large", Arch: "x86_64", VCPU: 2, MemoryMiB: 4096, OnDemandPrice: 0.1, SpotPrice: 0.03})
	}
	f.SetInstanceTypes(many)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c := ec2.New(ec2.Options{Region: f.Region(), BaseEndpoint: aws.String(srv.URL), HTTPClient: sdkhttp.New(), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDKIPTEST", "secret", "")})
	for i := range 300 {
		out, err := c.DescribeInstanceTypes(context.Background(), &ec2.DescribeInstanceTypesInput{MaxResults: aws.Int32(100)})
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if len(out.InstanceTypes) != 100 {
			t.Fatalf("call %d: %d types, want 100", i, len(out.InstanceTypes))
		}
	}
}
