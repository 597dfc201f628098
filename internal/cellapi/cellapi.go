// Package cellapi is the versioned contract between kip and the cell agent (kip-cell): the
// request and status types, the Agent interface, an HTTP handler that serves an Agent and a
// client that implements Agent over HTTPS with mutual TLS. Both sides import it; nothing else
// defines the wire format.
package cellapi

import (
	"context"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Version is the API version, the first path element of every route.
const Version = "v1"

// DefaultPort is the port the agent listens on inside a cell.
const DefaultPort = 6421

// Routes served by Handler. All but HealthPath require a client certificate signed by the
// cell's CA.
const (
	HealthPath = "/healthz"      // GET: Health; no client certificate needed
	PodPath    = "/v1/pod"       // PUT: PodRequest → PodStatus; GET → PodStatus; DELETE ?grace=<duration>
	WatchPath  = "/v1/pod/watch" // GET ?heartbeat=<duration>: newline-delimited JSON PodStatus, current first, then every change, and HeartbeatLines when asked (see HeartbeatWatcher)
	LogsPath   = "/v1/logs/"     // GET /v1/logs/<container>?tail=&follow=&since=&sinceTime=&timestamps=&previous=&limitBytes=
	StatsPath  = "/v1/stats"     // GET: Stats
	ExecPath   = "/v1/exec/"     // POST /v1/exec/<container>?command=&stdin=&tty=, upgraded (see Streamer)
	AttachPath = "/v1/attach/"   // POST /v1/attach/<container>?stdin=&tty=, upgraded (see Attacher)
)

// Agent is what runs inside a cell. The agent implements it; Client implements it over the
// wire, so kip's code and its tests program against this interface.
type Agent interface {
	// PutPod makes the given pod the cell's desired pod. It is idempotent per pod UID: putting
	// the same UID again returns the current status without restarting anything. Putting a
	// different UID while a pod runs is an error of kind Conflict.
	PutPod(ctx context.Context, req *PodRequest) (*PodStatus, error)
	// GetPod returns the current status; an error of kind NotFound when no pod was put.
	GetPod(ctx context.Context) (*PodStatus, error)
	// WatchPod streams the status: the current one first (if any pod was put), then each
	// change, until ctx ends or the connection drops (the channel is then closed).
	WatchPod(ctx context.Context) (<-chan *PodStatus, error)
	// DeletePod stops every container: preStop hooks, SIGTERM, up to grace, then SIGKILL,
	// and cleans up. It returns when all containers have stopped.
	DeletePod(ctx context.Context, grace time.Duration) error
	// Logs streams one container's log as kubelet serves it.
	Logs(ctx context.Context, container string, opts LogOptions) (io.ReadCloser, error)
	// Stats returns resource usage read from the cgroups.
	Stats(ctx context.Context) (*Stats, error)
	// Health reports that the agent is up.
	Health(ctx context.Context) (*Health, error)
}

// SameAgent reports whether a and b are the same agent client: the push controllers compare
// the agent they last reached a cell through with the current one, a new client meaning an
// adopted cell that may hold anything. Values that cannot be compared are not the same.
func SameAgent(a, b Agent) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// PodRequest is everything the agent needs to run a pod, already resolved by kip: env values
// from Secrets/ConfigMaps/field refs are filled in, volume contents are carried in Volumes,
// registry credentials in PullSecrets. The agent never talks to the API server.
type PodRequest struct {
	Pod *corev1.Pod `json:"pod"`
	// PullSecrets are the contents of the pod's imagePullSecrets.
	PullSecrets []RegistryAuth `json:"pullSecrets,omitempty"`
	// Volumes holds the files of configMap, secret, projected and downwardAPI volumes by
	// volume name. emptyDir volumes need no entry.
	Volumes map[string]VolumeFiles `json:"volumes,omitempty"`
	// ClusterDNS and ClusterDomain are kubelet's settings of the same names: the cluster DNS
	// servers and domain the agent writes into resolv.conf (and /etc/hosts) per the pod's
	// dnsPolicy. With no ClusterDNS, ClusterFirst falls back to the cell's own resolv.conf,
	// as kubelet does.
	ClusterDNS    []string `json:"clusterDNS,omitempty"`
	ClusterDomain string   `json:"clusterDomain,omitempty"`
	// SeccompProfiles are the Localhost seccomp profiles the pod names, keyed by
	// localhostProfile: the files kip read under its node.seccompProfileRoot, each the OCI
	// runtime spec's linux.seccomp object in JSON.
	SeccompProfiles map[string][]byte `json:"seccompProfiles,omitempty"`
}

// RegistryAuth is one registry's credentials, as in a docker config.json "auths" entry.
type RegistryAuth struct {
	Registry      string `json:"registry"`
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	Auth          string `json:"auth,omitempty"`
	IdentityToken string `json:"identityToken,omitempty"`
}

// VolumeFiles are the files of one volume, keyed by relative path.
type VolumeFiles struct {
	Files map[string]File `json:"files"`
}

// File is one file of a volume.
type File struct {
	Data []byte `json:"data"`
	Mode int32  `json:"mode"`
}

// PodStatus is the agent's view of the pod, in kubelet's terms.
type PodStatus struct {
	UID string `json:"uid"`
	// Seq increases with every change; watchers use it to drop stale updates.
	Seq     uint64          `json:"seq"`
	Phase   corev1.PodPhase `json:"phase"`
	Reason  string          `json:"reason,omitempty"`
	Message string          `json:"message,omitempty"`
	// StartTime is when the agent accepted the pod.
	StartTime             time.Time                `json:"startTime"`
	InitContainerStatuses []corev1.ContainerStatus `json:"initContainerStatuses,omitempty"`
	ContainerStatuses     []corev1.ContainerStatus `json:"containerStatuses,omitempty"`
	// EphemeralContainerStatuses are those of the ephemeral containers put with
	// EphemeralRunner, in the order they were first put.
	EphemeralContainerStatuses []corev1.ContainerStatus `json:"ephemeralContainerStatuses,omitempty"`
	// Conditions the agent knows (Initialized, ContainersReady, Ready).
	Conditions []corev1.PodCondition `json:"conditions,omitempty"`
	// Events are the latest events only the agent sees (probe failures, probe kills), oldest
	// first, at most MaxEvents; kip records each once, by ID.
	Events []Event `json:"events,omitempty"`
	// SpotInterruption is the cloud's notice that the cell's spot instance is about to be
	// interrupted, as the agent read it from the instance metadata service; nil while none
	// was seen. It is the cell's, not the pod's: once seen, every status carries it.
	SpotInterruption *SpotInterruption `json:"spotInterruption,omitempty"`
}

// SpotInterruption is a spot interruption notice (EC2's spot/instance-action).
type SpotInterruption struct {
	// Action is what the cloud will do to the instance: terminate, stop or hibernate.
	Action string `json:"action"`
	// Time is when it will; the pod must be gone by then.
	Time time.Time `json:"time"`
}

// MaxEvents bounds PodStatus.Events.
const MaxEvents = 20

// Event is one Kubernetes event about a container, as kubelet would record it.
type Event struct {
	// ID increases with every event of the pod.
	ID        uint64 `json:"id"`
	Container string `json:"container"`
	// Type is Normal or Warning.
	Type    string `json:"type"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// LogOptions mirror corev1.PodLogOptions.
type LogOptions struct {
	Follow     bool       `json:"follow,omitempty"`
	Previous   bool       `json:"previous,omitempty"`
	Timestamps bool       `json:"timestamps,omitempty"`
	TailLines  *int64     `json:"tailLines,omitempty"`
	LimitBytes *int64     `json:"limitBytes,omitempty"`
	SinceTime  *time.Time `json:"sinceTime,omitempty"`
	// SinceSeconds is relative to the agent's clock.
	SinceSeconds *int64 `json:"sinceSeconds,omitempty"`
}

// Stats are cumulative CPU and current memory figures read from the cgroups.
type Stats struct {
	Time time.Time `json:"time"`
	// Cell holds the totals of the whole cell (agent included).
	Cell       Usage            `json:"cell"`
	Containers []ContainerStats `json:"containers,omitempty"`
}

// ContainerStats is one container's usage.
type ContainerStats struct {
	Name      string    `json:"name"`
	StartTime time.Time `json:"startTime"`
	Usage     Usage     `json:"usage"`
}

// Usage is a point-in-time resource reading.
type Usage struct {
	// CPUUsageNanoSeconds is cumulative CPU time.
	CPUUsageNanoSeconds uint64 `json:"cpuUsageNanoSeconds"`
	// MemoryWorkingSetBytes is usage minus inactive file pages, as kubelet computes it.
	MemoryWorkingSetBytes uint64 `json:"memoryWorkingSetBytes"`
	MemoryUsageBytes      uint64 `json:"memoryUsageBytes"`
}

// Health is the agent's health answer.
type Health struct {
	CellID  string `json:"cellID"`
	Version string `json:"version"`
}

// Bootstrap is what a cell agent receives at boot (user data on a cloud, a file locally).
type Bootstrap struct {
	CellID string `json:"cellID"`
	// CACert (PEM) signs both the agent's certificate and kip's client certificate.
	CACert []byte `json:"caCert"`
	// Cert and Key (PEM) are the agent's serving certificate, naming CellID.
	Cert []byte `json:"cert"`
	Key  []byte `json:"key"`
	// ListenAddr defaults to ":6421".
	ListenAddr string `json:"listenAddr,omitempty"`
	// Registry configures image pulls.
	Registry RegistryConfig `json:"registry,omitempty"`
	// Instance is what kip knows of the cloud instance the cell runs on; nil on a local cell.
	Instance *InstanceBootstrap `json:"instance,omitempty"`
}

// InstanceBootstrap describes a cloud cell's instance to its agent.
type InstanceBootstrap struct {
	// Spot says kip launched the cell as a spot instance: the agent watches the instance
	// metadata service for interruption notices. Without it the agent asks the metadata
	// service once (instance-life-cycle) and watches only if the instance is spot.
	Spot bool `json:"spot,omitempty"`
	// MetadataURL is the base URL of the instance metadata service (IMDSv2);
	// DefaultMetadataURL when empty.
	MetadataURL string `json:"metadataURL,omitempty"`
}

// DefaultMetadataURL is EC2's instance metadata service.
const DefaultMetadataURL = "http://169.254.169.254"

// RegistryConfig configures where images come from.
type RegistryConfig struct {
	// DefaultRegistry replaces docker.io for unqualified names like "nginx".
	DefaultRegistry string `json:"defaultRegistry,omitempty"`
	// Insecure lists registries (host:port) reached over plain HTTP.
	Insecure []string `json:"insecure,omitempty"`
	// MaxUnpackedBytes caps the sum of an image's file sizes once unpacked; 0 is no cap.
	MaxUnpackedBytes int64 `json:"maxUnpackedBytes,omitempty"`
}
