package cellapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// VolumesPath is served by agents that implement VolumeUpdater.
//
//	PUT: VolumeUpdate → VolumeUpdateStatus
const VolumesPath = "/v1/pod/volumes"

// VolumeUpdater is implemented by agents that update a running pod's configMap, secret,
// downwardAPI and projected volumes in place, as kubelet does when their sources change (and
// when projected service account tokens are refreshed). kip resolves the files and pushes
// them; the agent never talks to the API server. Agents without it answer KindBadVersion
// (501), and their pods keep the files they started with.
type VolumeUpdater interface {
	// UpdateVolumes replaces the files of each volume named in u with exactly the files given
	// (a file not given disappears), atomically per volume: a reader sees the old files or
	// the new ones, never a mix. A volume whose files are unchanged is not rewritten. Volumes
	// not named keep their files. Errors: NotFound when the cell does not run pod u.UID;
	// Invalid when a volume is not a configMap, secret, downwardAPI or projected volume of
	// the pod, or a path is not a valid volume path; Conflict while the pod stops.
	UpdateVolumes(ctx context.Context, u *VolumeUpdate) (*VolumeUpdateStatus, error)
}

// VolumeUpdate is the new content of some of a running pod's volumes.
type VolumeUpdate struct {
	// UID is the pod's UID; the update applies only to that pod.
	UID string `json:"uid"`
	// Volumes holds the complete new files of each volume to update, by volume name.
	Volumes map[string]VolumeFiles `json:"volumes"`
}

// VolumeUpdateStatus is the agent's answer to UpdateVolumes.
type VolumeUpdateStatus struct {
	// Updated names the volumes whose files changed on disk, sorted.
	Updated []string `json:"updated,omitempty"`
}

// UpdateVolumes implements VolumeUpdater over the wire.
func (c *Client) UpdateVolumes(ctx context.Context, u *VolumeUpdate) (*VolumeUpdateStatus, error) {
	body, err := json.Marshal(u)
	if err != nil {
		return nil, fmt.Errorf("encoding volume update: %w", err)
	}
	var st VolumeUpdateStatus
	if err := c.doJSON(ctx, http.MethodPut, VolumesPath, bytes.NewReader(body), &st); err != nil {
		return nil, fmt.Errorf("updating volumes of pod %s: %w", u.UID, err)
	}
	return &st, nil
}

var _ VolumeUpdater = (*Client)(nil)

func (h *handler) updateVolumes(w http.ResponseWriter, r *http.Request) {
	vu, ok := h.agent.(VolumeUpdater)
	if !ok {
		h.fail(w, r, Errorf(KindBadVersion, "%s %s is not implemented by this agent", r.Method, r.URL.Path))
		return
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	dec.DisallowUnknownFields()
	var u VolumeUpdate
	if err := dec.Decode(&u); err != nil {
		h.fail(w, r, Errorf(KindInvalid, "decoding volume update: %v", err))
		return
	}
	if dec.More() {
		h.fail(w, r, Errorf(KindInvalid, "decoding volume update: trailing data after the JSON object"))
		return
	}
	if u.UID == "" {
		h.fail(w, r, Errorf(KindInvalid, "volume update: field uid is required"))
		return
	}
	st, err := vu.UpdateVolumes(r.Context(), &u)
	h.reply(w, r, st, err)
}
