package cellapi

import (
	"context"
	"time"
)

// Heartbeats on the status stream. A client that wants them asks with the query parameter
// HeartbeatParam (a duration) on WatchPath; an agent that sends them answers with the header
// HeartbeatHeader naming the interval it uses, and then writes a HeartbeatLine whenever the
// stream has been quiet that long. Old agents ignore the parameter and send no header; old
// clients never ask, so they never see a heartbeat line.
const (
	HeartbeatParam  = "heartbeat"
	HeartbeatHeader = "Kip-Heartbeat"
	// MinHeartbeat and MaxHeartbeat bound the interval an agent accepts.
	MinHeartbeat = 50 * time.Millisecond
	MaxHeartbeat = time.Minute
)

// HeartbeatLine is a heartbeat on the wire: one JSON object per line like the statuses, told
// apart by its "heartbeat" member, which no PodStatus has.
type HeartbeatLine struct {
	// Heartbeat is the agent's clock when it was sent.
	Heartbeat time.Time `json:"heartbeat"`
}

// WatchMessage is one message of a status stream with heartbeats: a status, or, with Status
// nil, a heartbeat.
type WatchMessage struct {
	Status *PodStatus
}

// HeartbeatWatcher is implemented by agents whose status stream can carry heartbeats
// (Client). It is separate from Agent so that existing Agent fakes stay valid.
type HeartbeatWatcher interface {
	// WatchPodHeartbeats is WatchPod with a heartbeat whenever the stream has been quiet for
	// every. beats is false when the agent is older and sends none: the channel then carries
	// only statuses, and silence on it says nothing about the agent's health.
	WatchPodHeartbeats(ctx context.Context, every time.Duration) (ch <-chan WatchMessage, beats bool, err error)
}
