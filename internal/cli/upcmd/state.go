package upcmd

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// stateFile, under --home, records what a running `kip up` made, so `kip down` can remove it
// after a crash.
const stateFile = "up.json"

// state is what `kip up` made; every path is absolute.
type state struct {
	PID             int    `json:"pid"`
	Bridge          string `json:"bridge"`
	Subnet          string `json:"subnet"`
	CellsDir        string `json:"cellsDir"`
	ControlPlaneDir string `json:"controlPlaneDir"`
	RegistryDir     string `json:"registryDir"`
	Kubeconfig      string `json:"kubeconfig"`
	Config          string `json:"config"`
	LogDir          string `json:"logDir"`
	AgentPath       string `json:"agentPath"`
}

// layout returns the state for a run under home.
func layout(home, bridge, subnet, agent string) *state {
	return &state{
		PID:             os.Getpid(),
		Bridge:          bridge,
		Subnet:          subnet,
		CellsDir:        filepath.Join(home, "cells"),
		ControlPlaneDir: filepath.Join(home, "controlplane"),
		RegistryDir:     filepath.Join(home, "registry"),
		Kubeconfig:      filepath.Join(home, "kubeconfig"),
		Config:          filepath.Join(home, "kip.yaml"),
		LogDir:          filepath.Join(home, "logs"),
		AgentPath:       agent,
	}
}

func writeState(home string, s *state) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	tmp := filepath.Join(home, stateFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(home, stateFile)); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	return nil
}

// readState returns the recorded state, or nil when there is none.
func readState(home string) (*state, error) {
	data, err := os.ReadFile(filepath.Join(home, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	s := &state{}
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", filepath.Join(home, stateFile), err)
	}
	return s, nil
}

// alive reports whether the `kip up` that wrote s is still running.
func (s *state) alive() bool {
	if s.PID <= 0 || s.PID == os.Getpid() {
		return false
	}
	if err := syscall.Kill(s.PID, 0); err != nil {
		return false
	}
	exe, err := os.Readlink(filepath.Join("/proc", fmt.Sprint(s.PID), "exe"))
	if err != nil {
		return false
	}
	self, _ := os.Executable()
	return filepath.Base(exe) == filepath.Base(self)
}
