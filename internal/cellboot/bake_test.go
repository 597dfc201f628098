package cellboot

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// bakeScript is the image-bake recipe that installs what the user data would download.
const bakeScript = "../../deploy/ami/bake.sh"

func sha256Of(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestBakeIntoRoot runs deploy/ami/bake.sh into a scratch root: kip-cell and runc land in
// /opt/kip/bin with the hashes of the files given (what the user data pins), the unit is
// written and starts nothing without a bootstrap, and baked.txt records the hashes. A wrong
// pinned hash, or a root holding a cell's identity, is refused.
func TestBakeIntoRoot(t *testing.T) {
	src := t.TempDir()
	agent, runc := filepath.Join(src, "kip-cell"), filepath.Join(src, "runc")
	if err := os.WriteFile(agent, []byte("#!/bin/sh\necho agent\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(runc, []byte("#!/bin/sh\necho runc\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	wantAgent, wantRunc := sha256Of(t, agent), sha256Of(t, runc)
	bake := func(root string, args ...string) (string, error) {
		cmd := exec.Command("sh", append([]string{bakeScript, "--root", root}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	root := t.TempDir()
	out, err := bake(root, "--kip-cell", agent, "--kip-cell-sha256", wantAgent, "--runc", runc)
	if err != nil {
		t.Fatalf("bake.sh: %v\n%s", err, out)
	}
	for name, want := range map[string]string{"kip-cell": wantAgent, "runc": wantRunc} {
		p := filepath.Join(root, "opt/kip/bin", name)
		if got := sha256Of(t, p); got != want {
			t.Errorf("%s has SHA-256 %s, want %s", p, got, want)
		}
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v, mode %v; want 0755", p, err, st.Mode())
		}
	}
	unit, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/kip-cell.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ConditionPathExists=/etc/kip/bootstrap.json", "ExecStart=/opt/kip/bin/kip-cell --bootstrap /etc/kip/bootstrap.json --state-dir /var/lib/kip-cell --runc /opt/kip/bin/runc --guard-metadata"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit has no %q:\n%s", want, unit)
		}
	}
	if st, err := os.Stat(filepath.Join(root, "var/lib/kip-cell")); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("state dir: %v, want mode 0700", err)
	}
	baked, err := os.ReadFile(filepath.Join(root, "opt/kip/baked.txt"))
	if err != nil || !strings.Contains(string(baked), "kip-cell "+wantAgent) || !strings.Contains(string(baked), "runc "+wantRunc) {
		t.Errorf("baked.txt (%v):\n%s", err, baked)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/kip")); err == nil {
		t.Error("bake.sh made /etc/kip: a cell's bootstrap and CA are written at boot, never baked")
	}

	t.Run("wrong pinned hash", func(t *testing.T) {
		root := t.TempDir()
		out, err := bake(root, "--kip-cell", agent, "--runc", runc, "--runc-sha256", wantAgent)
		if err == nil || !strings.Contains(out, "runc from "+runc+" has SHA-256 "+wantRunc+", not "+wantAgent) {
			t.Errorf("bake.sh = %v, want a refusal naming both hashes:\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(root, "opt/kip/bin/runc")); err == nil {
			t.Error("the refused runc was installed")
		}
	})
	t.Run("a cell identity in the root", func(t *testing.T) {
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, "var/lib/kip-cell"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "var/lib/kip-cell/agent-key.pem"), []byte("k"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := bake(root, "--kip-cell", agent, "--runc", runc)
		if err == nil || !strings.Contains(out, "holds a cell's identity") {
			t.Errorf("bake.sh = %v, want a refusal:\n%s", err, out)
		}
	})
	t.Run("missing flag", func(t *testing.T) {
		out, err := bake(t.TempDir(), "--kip-cell", agent)
		if err == nil || !strings.Contains(out, "flag --runc is required") {
			t.Errorf("bake.sh = %v:\n%s", err, out)
		}
	})
}
