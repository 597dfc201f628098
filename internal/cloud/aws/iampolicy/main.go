// Command iam-policy prints the IAM policy kip needs on AWS (internal/cloud/aws.IAMPolicy),
// with iam:PassRole scoped to the role ARNs given: the roles of cloud.aws.instanceProfile and
// of the profiles in cloud.aws.podInstanceProfiles. With none, the policy lets kip pass no
// role. hack/iam-policy.sh runs it. It lives beside the backend because elsewhere only cmd,
// internal/cli and internal/kipnode may name a concrete backend (hack/verify.sh).
//
// Usage: iam-policy [ROLE_ARN...]
package main

import (
	"fmt"
	"os"

	kipaws "github.com/kip-dev/kip/internal/cloud/aws"
)

func main() {
	p, err := kipaws.IAMPolicy(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "iam-policy:", err)
		os.Exit(2)
	}
	fmt.Printf("%s\n", p.JSON())
}
