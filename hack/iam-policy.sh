#!/usr/bin/env bash
# hack/iam-policy.sh                 regenerates the IAM policy block in docs/aws.md from the calls
#                                    the code makes (internal/cloud/aws.IAMPolicy); TestIAMPolicy
#                                    fails while the two disagree. That block lets kip pass no role.
# hack/iam-policy.sh ROLE_ARN...     prints the policy for your account, with iam:PassRole scoped
#                                    to these roles: those of cloud.aws.instanceProfile and of the
#                                    profiles in cloud.aws.podInstanceProfiles.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
	exec go run ./internal/cloud/aws/iampolicy "$@"
fi
go test ./internal/cloud/aws -run '^TestIAMPolicy$' -count=1 -args -update-iam-policy
