package podstatus

import "github.com/kip-dev/kip/internal/podstatus/podstatustest"

var (
	testPod = podstatustest.Pod
	running = podstatustest.Running
	exited  = podstatustest.Exited
)
