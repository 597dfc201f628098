package controlplane

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
)

// BinDirEnv names the environment variable holding the control plane binary directory; it is
// also where hack/build-control-plane.sh builds to when set.
const BinDirEnv = "KIP_CP_BIN"

// FindBinDir returns the directory of the control plane binaries: $KIP_CP_BIN when set,
// otherwise the newest complete build under $HOME/.cache/kip/cp-bin (where
// hack/build-control-plane.sh puts it by default). The error says how to get one.
func FindBinDir() (string, error) {
	if d := os.Getenv(BinDirEnv); d != "" {
		return d, CheckBinaries(d)
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", errors.New("no control plane binaries: $KIP_CP_BIN is unset and $HOME is unknown; run hack/build-control-plane.sh")
	}
	dirs, _ := filepath.Glob(filepath.Join(home, ".cache", "kip", "cp-bin", "*"))
	type cand struct {
		dir string
		mod int64
	}
	var cands []cand
	for _, d := range dirs {
		st, err := os.Stat(filepath.Join(d, ".stamp"))
		if err != nil || CheckBinaries(d) != nil {
			continue
		}
		cands = append(cands, cand{d, st.ModTime().UnixNano()})
	}
	if len(cands) == 0 {
		return "", errors.New("no control plane binaries: $KIP_CP_BIN is unset and none are built under ~/.cache/kip/cp-bin; run hack/build-control-plane.sh (about 15 minutes the first time)")
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].mod > cands[j].mod })
	return cands[0].dir, nil
}
