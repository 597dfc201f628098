package aws

import (
	"errors"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/smithy-go"

	"github.com/kip-dev/kip/internal/cloud"
)

// Error codes by kind (docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
var (
	capacityCodes = map[string]bool{
		"InsufficientInstanceCapacity": true, "InsufficientCapacity": true, "InsufficientHostCapacity": true,
		"Unsupported": true, "MaxSpotInstanceCountExceeded": true, "SpotMaxPriceTooLow": true,
		"InsufficientFreeAddressesInSubnet": true, "InstanceLimitExceeded": true, "VcpuLimitExceeded": true,
	}
	throttleCodes = map[string]bool{
		"RequestLimitExceeded": true, "RequestResourceCountExceeded": true, "Throttling": true, "ThrottlingException": true,
	}
	invalidCodes = map[string]bool{
		"InvalidParameterValue": true, "InvalidParameter": true, "InvalidParameterCombination": true, "MissingParameter": true,
		"IdempotentParameterMismatch": true, "InvalidBlockDeviceMapping": true, "InvalidUserData.Malformed": true,
		"SecurityGroupsPerInstanceLimitExceeded": true, "TagLimitExceeded": true, "InvalidInstanceType": true,
		"UnsupportedOperation": true, "InvalidAMIID.Malformed": true, "InvalidAMIID.Unavailable": true,
		"InvalidAMIID.NotFound": true, "InvalidGroup.NotFound": true, "InvalidSubnetID.NotFound": true,
	}
)

// classify turns an SDK error into a cloud.Error of the right kind; errors that are not EC2
// API errors (network, context) stay as they are.
func classify(err error) error {
	var ae smithy.APIError
	if err == nil || !errors.As(err, &ae) {
		return err
	}
	code := ae.ErrorCode()
	switch {
	case capacityCodes[code]:
		return cloud.Wrap(cloud.KindInsufficientCapacity, err, "EC2 %s", code)
	case throttleCodes[code]:
		return cloud.Wrap(cloud.KindThrottled, err, "EC2 %s", code)
	case invalidCodes[code]:
		return cloud.Wrap(cloud.KindInvalidSpec, err, "EC2 %s", code)
	case strings.HasSuffix(code, ".NotFound") || strings.HasSuffix(code, ".Malformed"):
		return cloud.Wrap(cloud.KindNotFound, err, "EC2 %s", code)
	}
	return err
}

// errorCode returns the EC2 error code in err's chain, or "".
func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// noRetryCapacity stops the SDK from retrying capacity errors, which EC2 sends with status
// 500: retrying at once cannot help, another instance type can.
type noRetryCapacity struct{}

func (noRetryCapacity) IsErrorRetryable(err error) aws.Ternary {
	if capacityCodes[errorCode(err)] {
		return aws.FalseTernary
	}
	return aws.UnknownTernary
}
