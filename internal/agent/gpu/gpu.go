// Package gpu gives containers the cell's GPUs. It finds the instance's NVIDIA and AMD
// device nodes and the NVIDIA driver's user-space files, hands each container that asks for
// nvidia.com/gpu or amd.com/gpu its own devices (disjoint between the pod's containers that
// run together), and applies them to the container's OCI spec: device nodes, device cgroup
// rules, NVIDIA_VISIBLE_DEVICES and read-only binds of the driver's libraries and tools. An
// NVIDIA GPU named in a CDI spec on the instance (nvidia-ctk cdi generate) is applied
// through the CDI library instead, as the vendor describes it.
package gpu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// The extended resources a pod asks GPUs with.
const (
	ResourceNVIDIA corev1.ResourceName = "nvidia.com/gpu"
	ResourceAMD    corev1.ResourceName = "amd.com/gpu"
)

// Where the NVIDIA driver's files appear in a container, as GKE mounts them: binaries on
// PATH, libraries on LD_LIBRARY_PATH (a container's own ld.so cache does not know them).
const (
	ContainerLibDir = "/usr/local/nvidia/lib64"
	ContainerBinDir = "/usr/local/nvidia/bin"
)

// Config says where to look for GPUs; the zero value looks where a real instance has them.
type Config struct {
	// DevRoot is the instance's /dev ("/dev" when empty). Nodes under it appear in the
	// container at the same path under /dev.
	DevRoot string
	// LibDirs hold the NVIDIA driver's libraries (libcuda*, libnvidia-*); when empty they
	// are found with `ldconfig -p`.
	LibDirs []string
	// BinDirs hold its tools (nvidia-smi...); /usr/bin and /usr/local/nvidia/bin when empty.
	BinDirs []string
	// CDIDirs hold CDI specs (/etc/cdi and /var/run/cdi when nil; empty but not nil: none).
	CDIDirs []string
}

// Device is one device node of the instance.
type Device struct {
	// Path is the node's path in the container ("/dev/nvidia0").
	Path string
	// HostPath is where it is on the instance.
	HostPath     string
	Major, Minor int64
	Type         string // "c" or "b"
	Mode         fs.FileMode
}

// Inventory is what the instance has.
type Inventory struct {
	// NVIDIA are /dev/nvidia<N> by N; NVIDIAIndex their N.
	NVIDIA      []Device
	NVIDIAIndex []int
	// NVIDIAControl are the nodes every NVIDIA container needs (nvidiactl, nvidia-uvm,
	// nvidia-uvm-tools, nvidia-modeset), those present.
	NVIDIAControl []Device
	// NVIDIAFiles are the driver's libraries and tools: host path → path in the container.
	NVIDIAFiles map[string]string
	// AMDRender are /dev/dri/renderD<N>, one per AMD GPU; AMDKFD is /dev/kfd.
	AMDRender []Device
	AMDKFD    *Device
	// cdi is the CDI cache when a spec names nvidia.com/gpu devices.
	cdi *cdi.Cache
}

var (
	nvidiaNode = regexp.MustCompile(`^nvidia([0-9]+)$`)
	renderNode = regexp.MustCompile(`^renderD([0-9]+)$`)
	// The driver's libraries, not the CUDA toolkit's (libcudart is the application's own).
	nvidiaLib    = regexp.MustCompile(`^(libcuda|libcudadebugger|libnvidia-[^/]*|libnvcuvid|libnvoptix)\.so(\.[0-9.]+)?$`)
	nvidiaTools  = []string{"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control", "nvidia-cuda-mps-server"}
	controlNodes = []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"}
)

// Discover reads what the instance has. Missing directories mean no such devices.
func Discover(cfg Config) (*Inventory, error) {
	dev := cfg.DevRoot
	if dev == "" {
		dev = "/dev"
	}
	inv := &Inventory{NVIDIAFiles: map[string]string{}}
	entries, err := os.ReadDir(dev)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("listing %s: %w", dev, err)
	}
	type indexed struct {
		d Device
		n int
	}
	var nv []indexed
	for _, e := range entries {
		if m := nvidiaNode.FindStringSubmatch(e.Name()); m != nil {
			d, err := node(dev, e.Name())
			if err != nil {
				return nil, err
			}
			n, _ := strconv.Atoi(m[1])
			nv = append(nv, indexed{d, n})
		}
	}
	slices.SortFunc(nv, func(a, b indexed) int { return a.n - b.n })
	for _, x := range nv {
		inv.NVIDIA, inv.NVIDIAIndex = append(inv.NVIDIA, x.d), append(inv.NVIDIAIndex, x.n)
	}
	for _, name := range controlNodes {
		if d, err := node(dev, name); err == nil {
			inv.NVIDIAControl = append(inv.NVIDIAControl, d)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	if d, err := node(dev, "kfd"); err == nil {
		inv.AMDKFD = &d
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	dri, _ := os.ReadDir(filepath.Join(dev, "dri"))
	var rd []indexed
	for _, e := range dri {
		if m := renderNode.FindStringSubmatch(e.Name()); m != nil {
			d, err := node(dev, filepath.Join("dri", e.Name()))
			if err != nil {
				return nil, err
			}
			n, _ := strconv.Atoi(m[1])
			rd = append(rd, indexed{d, n})
		}
	}
	slices.SortFunc(rd, func(a, b indexed) int { return a.n - b.n })
	for _, x := range rd {
		inv.AMDRender = append(inv.AMDRender, x.d)
	}
	if len(inv.NVIDIA) > 0 {
		if err := inv.findDriverFiles(cfg); err != nil {
			return nil, err
		}
		if err := inv.loadCDI(cfg.CDIDirs); err != nil {
			return nil, err
		}
	}
	return inv, nil
}

// node stats the device node rel under dev.
func node(dev, rel string) (Device, error) {
	p := filepath.Join(dev, rel)
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Device{}, fs.ErrNotExist
		}
		return Device{}, fmt.Errorf("reading device node %s: %w", p, err)
	}
	d := Device{Path: filepath.Join("/dev", rel), HostPath: p, Major: int64(unix.Major(uint64(st.Rdev))), Minor: int64(unix.Minor(uint64(st.Rdev))), Mode: fs.FileMode(st.Mode & 0o777)}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		d.Type = "c"
	case unix.S_IFBLK:
		d.Type = "b"
	default:
		return Device{}, fmt.Errorf("%s is not a device node", p)
	}
	return d, nil
}

// findDriverFiles lists the NVIDIA driver's libraries (in LibDirs, else those `ldconfig -p`
// knows) and tools.
func (inv *Inventory) findDriverFiles(cfg Config) error {
	if len(cfg.LibDirs) > 0 {
		for _, dir := range cfg.LibDirs {
			entries, err := os.ReadDir(dir)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("listing driver libraries in %s: %w", dir, err)
			}
			for _, e := range entries {
				if nvidiaLib.MatchString(e.Name()) && !e.IsDir() {
					inv.addFile(filepath.Join(dir, e.Name()), filepath.Join(ContainerLibDir, e.Name()))
				}
			}
		}
	} else if out, err := exec.Command("ldconfig", "-p").Output(); err == nil {
		for _, lib := range ldconfigLibs(out) {
			inv.addFile(lib, filepath.Join(ContainerLibDir, filepath.Base(lib)))
		}
	}
	bins := cfg.BinDirs
	if len(bins) == 0 {
		bins = []string{"/usr/bin", "/usr/local/nvidia/bin"}
	}
	for _, dir := range bins {
		for _, tool := range nvidiaTools {
			p := filepath.Join(dir, tool)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
				inv.addFile(p, filepath.Join(ContainerBinDir, tool))
			}
		}
	}
	return nil
}

// addFile keeps the first host file for each container path.
func (inv *Inventory) addFile(host, ctr string) {
	for _, c := range inv.NVIDIAFiles {
		if c == ctr {
			return
		}
	}
	inv.NVIDIAFiles[host] = ctr
}

// ldconfigLibs picks the NVIDIA driver's 64-bit libraries out of `ldconfig -p`'s lines
// ("\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1").
func ldconfigLibs(out []byte) []string {
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		name, rest, ok := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		if !ok || !nvidiaLib.MatchString(name) {
			continue
		}
		_, path, ok := strings.Cut(rest, "=> ")
		if !ok || (strings.Contains(rest, "(libc6)") && !strings.Contains(rest, "64")) {
			continue // a 32-bit library
		}
		libs = append(libs, strings.TrimSpace(path))
	}
	return libs
}

// loadCDI keeps a CDI cache of dirs when a spec there names NVIDIA GPUs.
func (inv *Inventory) loadCDI(dirs []string) error {
	if dirs == nil {
		dirs = cdi.DefaultSpecDirs
	}
	if len(dirs) == 0 {
		return nil
	}
	cache, err := cdi.NewCache(cdi.WithSpecDirs(dirs...), cdi.WithAutoRefresh(false))
	if err != nil && cache == nil {
		return fmt.Errorf("reading CDI specs in %s: %w", strings.Join(dirs, ", "), err)
	}
	for _, name := range cache.ListDevices() {
		if strings.HasPrefix(name, string(ResourceNVIDIA)+"=") {
			inv.cdi = cache
			return nil
		}
	}
	return nil
}
