#!/usr/bin/env bash
# Regenerates the IAM policy block in docs/aws.md from the calls the code makes
# (internal/cloud/aws.IAMPolicy). TestIAMPolicy fails while the two disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
go test ./internal/cloud/aws -run '^TestIAMPolicy$' -count=1 -args -update-iam-policy
