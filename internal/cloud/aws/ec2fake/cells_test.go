package ec2fake_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
	"github.com/kip-dev/kip/internal/cloud/aws/sdkhttp"
	"github.com/kip-dev/kip/internal/cloud/local"
	"github.com/kip-dev/kip/internal/testenv"
)

const (
	testBridge = "kipec2t12"
	testCIDR   = "10.254.12.0/24"
)

// cellFake starts a fake in cell mode on a test bridge and returns the SDK pointed at it.
func cellFake(t *testing.T, opts ec2fake.Options) (*ec2.Client, *ec2fake.Server) {
	t.Helper()
	testenv.RequireNetns(t)
	f, err := ec2fake.NewWithCells(opts, ec2fake.CellOptions{Bridge: testBridge, CIDR: testCIDR})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
		if _, err := netlink.LinkByName(testBridge); err == nil {
			t.Errorf("bridge %s left behind by Close", testBridge)
		}
	})
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c := ec2.New(ec2.Options{Region: f.Region(), BaseEndpoint: aws.String(srv.URL), HTTPClient: sdkhttp.New(),
		Credentials: credentials.NewStaticCredentialsProvider("AKIDFAKE", "secret", ""), RetryMaxAttempts: 1})
	return c, f
}

func poll(t *testing.T, what string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true,
		func(context.Context) (bool, error) { return cond() })
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func describe(ctx context.Context, c *ec2.Client, id string) (types.Instance, error) {
	out, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return types.Instance{}, err
	}
	if len(out.Reservations) != 1 || len(out.Reservations[0].Instances) != 1 {
		return types.Instance{}, fmt.Errorf("describing %s: %d reservations", id, len(out.Reservations))
	}
	return out.Reservations[0].Instances[0], nil
}

func waitState(t *testing.T, c *ec2.Client, id string, want types.InstanceStateName) types.Instance {
	t.Helper()
	var in types.Instance
	poll(t, fmt.Sprintf("%s to be %s", id, want), time.Minute, func() (bool, error) {
		var err error
		in, err = describe(context.Background(), c, id)
		return err == nil && in.State.Name == want, nil
	})
	return in
}

// get fetches url from the host, "" on any error.
func get(url string) string {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(b)
}

// serveScript is user data that reads the instance's own facts through IMDS, writes them
// under /opt/kip/www and serves that directory on :8080 after the script has exited.
const serveScript = `#!/bin/sh
set -e
IMDS=http://169.254.169.254
TOKEN=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' $IMDS/latest/api/token)
H="X-aws-ec2-metadata-token: $TOKEN"
W=/opt/kip/www
mkdir -p $W
curl -sf -H "$H" $IMDS/latest/meta-data/instance-id > $W/id
curl -sf -H "$H" $IMDS/latest/meta-data/instance-life-cycle > $W/life
curl -sf -H "$H" $IMDS/latest/user-data > $W/user-data
curl -s -o /dev/null -w '%{http_code}' $IMDS/latest/meta-data/instance-id > $W/v1
hostname > $W/hostname
if [ -d /run/systemd/system ]; then echo systemd > $W/init; else echo none > $W/init; fi
# MARKER
(while ! curl -sf -H "$H" $IMDS/latest/meta-data/spot/instance-action > $W/action.tmp; do sleep 0.1; done; mv $W/action.tmp $W/action) &
busybox httpd -f -p 8080 -h $W &
echo $! > $W/pid
echo started
`

func runCell(ctx context.Context, t *testing.T, c *ec2.Client, script string, mod func(*ec2.RunInstancesInput)) string {
	t.Helper()
	out, err := run(ctx, c, func(in *ec2.RunInstancesInput) {
		in.UserData = aws.String(base64.StdEncoding.EncodeToString([]byte(script)))
		if mod != nil {
			mod(in)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.Instances[0].InstanceId)
}

func TestCellsRunUserDataWithIMDS(t *testing.T) {
	c, f := cellFake(t, ec2fake.Options{})
	ctx := context.Background()

	// The subnets the fake reports are the bridge's.
	sn, err := c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{ec2fake.SubnetA, ec2fake.SubnetB}})
	if err != nil {
		t.Fatal(err)
	}
	if got := aws.ToString(sn.Subnets[0].CidrBlock) + " " + aws.ToString(sn.Subnets[1].CidrBlock); got != "10.254.12.0/25 10.254.12.128/25" {
		t.Errorf("subnets %s, want the halves of %s", got, testCIDR)
	}

	a := runCell(ctx, t, c, strings.Replace(serveScript, "MARKER", "instance a", 1), func(in *ec2.RunInstancesInput) {
		in.MetadataOptions = &types.InstanceMetadataOptionsRequest{HttpTokens: types.HttpTokensStateRequired}
	})
	b := runCell(ctx, t, c, strings.Replace(serveScript, "MARKER", "instance b", 1), func(in *ec2.RunInstancesInput) {
		in.SubnetId = aws.String(ec2fake.SubnetB)
		in.InstanceMarketOptions = &types.InstanceMarketOptionsRequest{MarketType: types.MarketTypeSpot}
	})
	ia, ib := waitState(t, c, a, types.InstanceStateNameRunning), waitState(t, c, b, types.InstanceStateNameRunning)
	ipA, ipB := aws.ToString(ia.PrivateIpAddress), aws.ToString(ib.PrivateIpAddress)
	if !f.VPCNetwork().Contains(mustAddr(t, ipB)) || !strings.HasPrefix(ipB, "10.254.12.1") {
		t.Errorf("instance b in %s has address %s", ec2fake.SubnetB, ipB)
	}

	cellA, _ := f.Cell(a)
	urlA, urlB := "http://"+ipA+":8080/", "http://"+ipB+":8080/"
	poll(t, "instance a to serve on "+urlA, 30*time.Second, func() (bool, error) {
		if out, _ := os.ReadFile(cellA.OutputPath); strings.Contains(string(out), "exited with code") && !strings.Contains(string(out), "code 0") {
			return false, fmt.Errorf("the user-data script failed:\n%s", out)
		}
		return get(urlA+"pid") != "", nil
	})
	for file, want := range map[string]string{
		"id": a, "life": "on-demand", "v1": "401", "init": "none",
		"hostname": "ip-" + strings.ReplaceAll(ipA, ".", "-") + ".ec2.internal",
	} {
		if got := strings.TrimSpace(get(urlA + file)); got != want {
			t.Errorf("instance a's %s = %q, want %q", file, got, want)
		}
	}
	if ud := get(urlA + "user-data"); !strings.Contains(ud, "# instance a") {
		t.Errorf("instance a read user data %q, want its own", ud)
	}
	out, err := os.ReadFile(cellA.OutputPath)
	if err != nil || !strings.Contains(string(out), "started") {
		t.Errorf("cloud-init output of a: %q (%v)", out, err)
	}
	if _, err := os.Stat("/opt/kip/www"); err == nil {
		t.Error("the instance's /opt/kip/www is visible on the host: its /opt/kip is not private")
	}

	poll(t, "instance b to serve on "+urlB, 30*time.Second, func() (bool, error) { return get(urlB+"pid") != "", nil })
	for file, want := range map[string]string{"id": b, "life": "spot", "v1": "200"} {
		if got := strings.TrimSpace(get(urlB + file)); got != want {
			t.Errorf("instance b's %s = %q, want %q", file, got, want)
		}
	}
	if ud := get(urlB + "user-data"); !strings.Contains(ud, "# instance b") || strings.Contains(ud, "instance a") {
		t.Errorf("instance b read user data %q, want its own only", ud)
	}
	// The host is no instance: the metadata server answers it nothing.
	if got := get("http://" + f.IMDSAddr().String() + "/latest/user-data"); got != "" {
		t.Errorf("the host read user data %q from the metadata server", got)
	}

	// A spot interruption notice shows in b's metadata, and at its time b is terminated.
	if get(urlB+"action") != "" {
		t.Fatal("instance-action served before any interruption")
	}
	notice := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	if err := f.InterruptSpot(b, "terminate", notice); err != nil {
		t.Fatal(err)
	}
	want := `{"action":"terminate","time":"` + notice.Format("2006-01-02T15:04:05Z") + `"}`
	poll(t, "instance b to see its interruption notice", 30*time.Second, func() (bool, error) { return get(urlB+"action") == want, nil })
	cellB, _ := f.Cell(b)
	pidB := pidOf(urlB)
	if err := f.InterruptSpot(b, "terminate", time.Now()); err != nil {
		t.Fatal(err)
	}
	tb := waitState(t, c, b, types.InstanceStateNameTerminated)
	if r := tb.StateReason; r == nil || aws.ToString(r.Code) != "Server.SpotInstanceTermination" {
		t.Errorf("state reason of the interrupted instance: %+v", r)
	}
	checkGone(t, cellB, pidB)

	// TerminateInstances leaves nothing of a behind.
	pidA := pidOf(urlA)
	if _, err := c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{a}}); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, a, types.InstanceStateNameTerminated)
	checkGone(t, cellA, pidA)
	if get(urlA+"id") != "" {
		t.Error("instance a still serves after it was terminated")
	}
}

// pidOf returns the pid the instance at url serves, -1 if none.
func pidOf(url string) int {
	pid, err := strconv.Atoi(strings.TrimSpace(get(url + "pid")))
	if err != nil || pid <= 0 {
		return -1
	}
	return pid
}

// checkGone fails t if anything of the cell is left: its httpd (pid, unless 0), netns, veth,
// cgroups or directory.
func checkGone(t *testing.T, c ec2fake.CellInfo, pid int) {
	t.Helper()
	if !c.Booted || c.Netns == "" {
		t.Fatalf("cell %+v never booted", c)
	}
	switch {
	case pid < 0:
		t.Errorf("no pid of the cell's httpd")
	case pid > 0:
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmd), "httpd") {
				t.Errorf("the cell's httpd (pid %d) survived its termination", pid)
			}
		}
	}
	if _, err := os.Stat(filepath.Join("/run/netns", c.Netns)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("netns %s left behind (%v)", c.Netns, err)
	}
	if _, err := netlink.LinkByName(c.HostVeth); err == nil {
		t.Errorf("veth %s left behind", c.HostVeth)
	}
	for _, d := range c.Cgroups {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("cgroup %s left behind (%v)", d, err)
		}
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cell directory %s left behind (%v)", c.Dir, err)
	}
}

func TestCellsNonScriptUserDataIsOnlyServed(t *testing.T) {
	c, f := cellFake(t, ec2fake.Options{})
	ctx := context.Background()
	id := runCell(ctx, t, c, `{"kind":"bootstrap"}`, nil)
	waitState(t, c, id, types.InstanceStateNameRunning)
	cell, ok := f.Cell(id)
	if !ok || !cell.Booted {
		t.Fatalf("cell of %s: %+v", id, cell)
	}
	if _, err := os.Stat(cell.OutputPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("JSON user data was run: %s exists (%v)", cell.OutputPath, err)
	}
	// Close removes the running cell.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, cell, 0)
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// runc 1.1 on a hybrid host puts a container's cgroup2 part at the hierarchy's root
// (kip/<pod uid>/...), outside the cell; terminating the cell removes it too. The script
// plays runc: it moves a process there.
func TestCellsRemoveStrayPodCgroups(t *testing.T) {
	const unified = "/sys/fs/cgroup/unified"
	if _, err := os.Stat(filepath.Join(unified, "cgroup.procs")); err != nil {
		t.Skip("not a hybrid cgroup host: runc leaves no strays")
	}
	c, f := cellFake(t, ec2fake.Options{})
	ctx := context.Background()
	uid := fmt.Sprintf("ec2fake-test-%d", time.Now().UnixNano())
	stray := filepath.Join(unified, "kip", uid, "main")
	id := runCell(ctx, t, c, `#!/bin/sh
mkdir -p `+stray+`
sh -c 'echo $$ > `+stray+`/cgroup.procs; exec sleep 1000' &
`, nil)
	waitState(t, c, id, types.InstanceStateNameRunning)
	poll(t, "the stray cgroup to hold a process", 30*time.Second, func() (bool, error) {
		b, _ := os.ReadFile(filepath.Join(stray, "cgroup.procs"))
		return len(strings.TrimSpace(string(b))) > 0, nil
	})
	cell, _ := f.Cell(id)
	if _, err := c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, id, types.InstanceStateNameTerminated)
	checkGone(t, cell, 0)
	if _, err := os.Stat(filepath.Dir(stray)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stray pod cgroup %s left behind (%v)", filepath.Dir(stray), err)
		os.Remove(stray)
		os.Remove(filepath.Dir(stray))
	}
}

func TestNewWithCellsRefusesBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts ec2fake.CellOptions
		want string
	}{
		{"long bridge", ec2fake.CellOptions{Bridge: "a-very-long-bridge"}, "Bridge"},
		{"not a CIDR", ec2fake.CellOptions{Bridge: testBridge, CIDR: "10.254.12.0"}, "CIDR"},
		{"IPv6", ec2fake.CellOptions{Bridge: testBridge, CIDR: "fd00::/64"}, "CIDR"},
		{"too small", ec2fake.CellOptions{Bridge: testBridge, CIDR: "10.254.12.0/29"}, "prefix length"},
		{"state under /run", ec2fake.CellOptions{Bridge: testBridge, CIDR: testCIDR, StateDir: "/run/ec2fake"}, "StateDir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := ec2fake.NewWithCells(ec2fake.Options{}, tc.opts)
			if err == nil {
				f.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %s", err, tc.want)
			}
		})
	}
}

// TestCellsPeers: SetPeers refuses peers that need no peering or cannot have it, turns
// forwarding on for the fake's bridge and the peer's interface only while peered (with the
// table that confines it), and Close undoes it. e2e TestInClusterAWS sends traffic through it.
func TestCellsPeers(t *testing.T) {
	_, f := cellFake(t, ec2fake.Options{})
	const peerBridge = "kipec2tp12"
	addr, _ := netlink.ParseAddr("10.254.13.1/24")
	if err := local.EnsureBridge(peerBridge, addr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := local.DeleteBridge(peerBridge); err != nil {
			t.Error(err)
		}
	})
	forwarding := func(ifc string) string {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + ifc + "/forwarding")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	table := func() bool {
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		tables, err := c.ListTables()
		if err != nil {
			t.Fatal(err)
		}
		for _, tb := range tables {
			if tb.Name == "ec2fake-peers-"+testBridge && tb.Family == nftables.TableFamilyINet {
				return true
			}
		}
		return false
	}
	if forwarding(testBridge) != "0" || forwarding(peerBridge) != "0" {
		t.Skipf("skipping: this host forwards IPv4 already (%s %s, %s %s)", testBridge, forwarding(testBridge), peerBridge, forwarding(peerBridge))
	}
	for _, tt := range []struct {
		peer, want string
	}{
		{"10.254.12.9/32", "overlaps the fake's VPC"},
		{"10.254.13.1/32", "an address of this host"},
		{"fd00::1/128", "not IPv4"},
	} {
		if err := f.SetPeers(netip.MustParsePrefix(tt.peer)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("SetPeers(%s) = %v, want an error saying %q", tt.peer, err, tt.want)
		}
	}
	if table() || forwarding(testBridge) != "0" {
		t.Fatalf("a refused SetPeers left the table (%v) or forwarding (%s)", table(), forwarding(testBridge))
	}
	if err := f.SetPeers(netip.MustParsePrefix("10.254.13.7/32")); err != nil {
		t.Fatal(err)
	}
	if !table() || forwarding(testBridge) != "1" || forwarding(peerBridge) != "1" {
		t.Errorf("peered: table %v, forwarding %s %s; want the table and both on", table(), forwarding(testBridge), forwarding(peerBridge))
	}
	if err := f.SetPeers(); err != nil {
		t.Fatal(err)
	}
	if table() || forwarding(testBridge) != "0" || forwarding(peerBridge) != "0" {
		t.Errorf("unpeered: table %v, forwarding %s %s; want neither", table(), forwarding(testBridge), forwarding(peerBridge))
	}
	if err := f.SetPeers(netip.MustParsePrefix("10.254.13.0/28")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if table() || forwarding(peerBridge) != "0" {
		t.Errorf("after Close: table %v, forwarding of %s %s; want neither", table(), peerBridge, forwarding(peerBridge))
	}
}

// TestCellsBootFromBakedRoot: an image with a baked root (SetImageRoot) starts each instance
// with the root's private directories: its script sees /opt/kip/bin as baked, modes kept, and
// writes to its own copy, never to the root. Other images, and the image after SetImageRoot
// with "", start empty.
func TestCellsBootFromBakedRoot(t *testing.T) {
	c, f := cellFake(t, ec2fake.Options{})
	ctx := context.Background()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "opt/kip/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "opt/kip/bin/kip-cell"), []byte("baked\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := f.Images()[0].ID
	if err := f.SetImageRoot(img, filepath.Join(root, "nope")); err == nil {
		t.Error("SetImageRoot accepted a missing directory")
	}
	if err := f.SetImageRoot("ami-0000000000000000f", root); err == nil {
		t.Error("SetImageRoot accepted an unknown image")
	}
	if err := f.SetImageRoot(img, root); err != nil {
		t.Fatal(err)
	}
	const script = "#!/bin/sh\nstat -c 'mode=%a' /opt/kip/bin/kip-cell\ncat /opt/kip/bin/kip-cell\necho instance >> /opt/kip/bin/kip-cell\n"
	boot := func(image string) string {
		id := runCell(ctx, t, c, script, func(in *ec2.RunInstancesInput) { in.ImageId = aws.String(image) })
		poll(t, "the script's exit", 30*time.Second, func() (bool, error) {
			cell, _ := f.Cell(id)
			return cell.ScriptExited, nil
		})
		cell, _ := f.Cell(id)
		out, _ := os.ReadFile(cell.OutputPath)
		return string(out)
	}
	if out := boot(img); !strings.Contains(out, "mode=755\nbaked\n") || !strings.Contains(out, "exited with code 0") {
		t.Errorf("an instance of the baked image saw:\n%s", out)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "opt/kip/bin/kip-cell")); string(b) != "baked\n" {
		t.Errorf("the instance wrote into the baked root: %q", b)
	}
	if err := f.SetImageRoot(img, ""); err != nil {
		t.Fatal(err)
	}
	if out := boot(img); !strings.Contains(out, "No such file") {
		t.Errorf("an instance of the image without its root saw:\n%s", out)
	}
}
