package local

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"

	"github.com/vishvananda/netns"

	"github.com/kip-dev/kip/internal/cgroups"
)

// Capabilities is what this machine allows the local backend to do. A nil error field means
// the capability is there.
type Capabilities struct {
	// Root: the process runs as root (euid 0).
	Root error
	// Netns: it can create network namespaces.
	Netns error
	// Cgroups: it can create a cgroup in every hierarchy under the cgroup root.
	Cgroups error
	// Runc: a runc binary is on PATH (the agent needs it to run containers).
	Runc error
}

// Isolated reports whether full cells (netns + cgroups) can be made.
func (c Capabilities) Isolated() error {
	for _, err := range []error{c.Root, c.Netns, c.Cgroups} {
		if err != nil {
			return err
		}
	}
	return nil
}

// Probe checks what this machine allows, with cgroupRoot as the cgroup mount root
// ("" means /sys/fs/cgroup). It changes nothing that outlives it.
func Probe(cgroupRoot string) Capabilities {
	if cgroupRoot == "" {
		cgroupRoot = defaultCgroupRoot
	}
	var c Capabilities
	if runtime.GOOS != "linux" {
		err := fmt.Errorf("the local backend needs Linux, this is %s", runtime.GOOS)
		return Capabilities{Root: err, Netns: err, Cgroups: err, Runc: err}
	}
	if os.Geteuid() != 0 {
		c.Root = fmt.Errorf("not running as root (euid %d)", os.Geteuid())
	}
	c.Netns = probeNetns()
	c.Cgroups = probeCgroups(cgroupRoot)
	if _, err := exec.LookPath("runc"); err != nil {
		c.Runc = fmt.Errorf("runc is not installed (apt-get install runc): %w", err)
	}
	return c
}

func probeNetns() error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("reading this thread's network namespace: %w", err)
	}
	defer orig.Close()
	ns, nerr := netns.New()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("returning to the host network namespace: %w", err) // thread stays locked, discarded
	}
	runtime.UnlockOSThread()
	if nerr != nil {
		return fmt.Errorf("creating a network namespace: %w", nerr)
	}
	ns.Close()
	return nil
}

func probeCgroups(root string) error {
	cg, err := cgroups.Open(root, "/proc/self/cgroup")
	if err != nil {
		return err
	}
	return cg.Probe()
}
