package imdsguard

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/testenv"
)

// TestRules checks the rules each match builds: the metadata address of each family, then
// the cgroup match (cgroup v2: socket cgroupv2 at the parent's level, its id in host byte
// order, as nft encodes it; cgroup v1: meta cgroup = the net_cls class), a counter, reject.
func TestRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    Match
		want []expr.Any
	}{
		{"cgroup v2", Match{CgroupID: 0x1234, Level: 2}, []expr.Any{
			&expr.Socket{Key: expr.SocketKeyCgroupv2, Level: 2, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint64(0x1234)},
		}},
		{"cgroup v1 net_cls", Match{ClassID: ClassID}, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyCGROUP, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0x4b490001)},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rules := Rules(tc.m)
			if len(rules) != 2 {
				t.Fatalf("%d rules, want 2 (IPv4 and IPv6)", len(rules))
			}
			for i, want := range []struct {
				proto byte
				off   uint32
				addr  []byte
			}{{unix.NFPROTO_IPV4, 16, []byte{169, 254, 169, 254}}, {unix.NFPROTO_IPV6, 24, MetadataIPv6.AsSlice()}} {
				r := rules[i]
				if len(r) != 8 {
					t.Fatalf("rule %d has %d expressions, want 8: %#v", i, len(r), r)
				}
				if c, ok := r[1].(*expr.Cmp); !ok || !bytes.Equal(c.Data, []byte{want.proto}) {
					t.Errorf("rule %d: family %#v", i, r[1])
				}
				if p, ok := r[2].(*expr.Payload); !ok || p.Base != expr.PayloadBaseNetworkHeader || p.Offset != want.off || int(p.Len) != len(want.addr) {
					t.Errorf("rule %d: payload %#v, want the destination address", i, r[2])
				}
				if c, ok := r[3].(*expr.Cmp); !ok || !bytes.Equal(c.Data, want.addr) {
					t.Errorf("rule %d: address %#v, want %v", i, r[3], want.addr)
				}
				if fmt.Sprintf("%#v %#v", r[4], r[5]) != fmt.Sprintf("%#v %#v", tc.want[0], tc.want[1]) {
					t.Errorf("rule %d: cgroup match %#v %#v, want %#v %#v", i, r[4], r[5], tc.want[0], tc.want[1])
				}
				if rj, ok := r[7].(*expr.Reject); !ok || rj.Code != unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED {
					t.Errorf("rule %d ends with %#v, want a reject", i, r[7])
				}
			}
		})
	}
}

// TestGuardBlocksPodCgroup runs the guard for real (root, network namespaces) on this host's
// cgroups: in a new network namespace with 169.254.169.254 served on its loopback, a process
// in the pod's cgroup cannot connect while the guard is on; a process of the same namespace
// outside it (the agent) can; after Release both can.
func TestGuardBlocksPodCgroup(t *testing.T) {
	testenv.RequireNetns(t)
	cg, err := cgroups.Open("/sys/fs/cgroup", "/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	rand.Read(b[:])
	parent, uid := "kip-imdsguard-test-"+hex.EncodeToString(b[:]), "pod-1"
	ns := newNetns(t)
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	addr := listen(t, ns)
	g := New(cg, parent, conn)
	if err := g.Guard(uid); err != nil {
		t.Fatal(err)
	}
	podDirs := podCgroupDirs(t, cg, cgroups.PodPath(parent, uid))
	t.Cleanup(func() {
		for _, d := range podDirs {
			cgroups.RemoveTree(d, 5e9)
			os.Remove(filepath.Dir(d))
		}
	})
	if err := connect(t, ns, podDirs, addr); err == nil {
		t.Error("a process in the pod's cgroup reached the metadata address")
	} else {
		t.Logf("the pod's process: %v", err)
	}
	if err := connect(t, ns, nil, addr); err != nil {
		t.Errorf("the agent's process could not reach the metadata address: %v", err)
	}
	if err := g.Release(uid); err != nil {
		t.Fatal(err)
	}
	if tables, _ := conn.ListTablesOfFamily(nftables.TableFamilyINet); len(tables) != 0 {
		t.Errorf("tables left after Release: %v", tables)
	}
	if cg.Mode() == cgroups.Hybrid {
		if _, err := os.Stat(podDirs[0]); err == nil {
			t.Errorf("Release left the pod's cgroup2 part %s", podDirs[0])
		}
	}
}

// podCgroupDirs returns where the guard's match finds the pod: its cgroup2 directory, or its
// net_cls one.
func podCgroupDirs(t *testing.T, cg *cgroups.FS, rel string) []string {
	t.Helper()
	if d, _, ok, err := cg.V2Dir(rel); err != nil {
		t.Fatal(err)
	} else if ok {
		return []string{d}
	}
	return []string{cg.Dir("net_cls", rel)}
}

// newNetns makes an unnamed network namespace with lo up and 169.254.169.254/32 on it.
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Set(orig)
	t.Cleanup(func() { ns.Close() })
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err == nil {
		a, _ := netlink.ParseAddr("169.254.169.254/32")
		err = netlink.AddrAdd(lo, a)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// listen serves TCP on 169.254.169.254 in ns, accepting and closing.
func listen(t *testing.T, ns netns.NsHandle) string {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, _ := netns.Get()
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "169.254.169.254:0")
	netns.Set(orig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// connect runs a child in ns, moved into cgroup dirs (none: stays in ours) before it
// connects to addr, and returns its failure.
func connect(t *testing.T, ns netns.NsHandle, dirs []string, addr string) error {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperConnect$")
	cmd.Env = append(os.Environ(), "IMDSGUARD_HELPER_ADDR="+addr)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends in ns, and is discarded
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- cmd.Start()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal(err)
		}
	}
	in.Write([]byte("go\n"))
	in.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// TestHelperConnect is the child of connect: it waits for a line on stdin, then dials.
func TestHelperConnect(t *testing.T) {
	addr := os.Getenv("IMDSGUARD_HELPER_ADDR")
	if addr == "" {
		t.Skip("a helper process of TestGuardBlocksPodCgroup")
	}
	var b [1]byte
	os.Stdin.Read(b[:])
	c, err := net.DialTimeout("tcp", addr, 3e9)
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	c.Close()
	os.Exit(0)
}
