// Package controlplane runs a real Kubernetes control plane — etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler built from upstream sources by
// hack/build-control-plane.sh — on 127.0.0.1 (or a given host address cells can reach) with
// certificates made in Go, for end-to-end tests
// and `kip up`. Everything it makes lives under one directory; Stop ends every process it
// started, by PID.
package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"

	"github.com/kip-dev/kip/internal/pki"
)

// Binaries the control plane needs in Options.BinDir.
var Binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// ServiceCIDR is the service cluster IP range; the apiserver's certificate names its first
// address (the `kubernetes` Service).
const ServiceCIDR = "10.0.0.0/24"

// Options configure Start.
type Options struct {
	// BinDir holds the binaries listed in Binaries (and kubectl, for Kubectl).
	BinDir string
	// Dir receives the PKI, etcd's data, kubeconfigs and one log file per process. It is
	// created if missing. Each Start makes a fresh cluster there: processes a crashed run
	// left are stopped, and old etcd data and certificates are replaced.
	Dir string
	// Log receives one progress line per step; nil discards them.
	Log io.Writer
	// InsecureKubeletTLS makes the apiserver skip verifying the kubelet API's serving
	// certificate. By default it must be signed by the cluster CA (kip gets it through a CSR
	// the controller-manager signs with that CA).
	InsecureKubeletTLS bool
	// Address is where the apiserver listens and what it advertises as the endpoint of the
	// `kubernetes` Service. Cells cannot reach the host's loopback, so for pods to reach the
	// API server it must be a non-loopback address of this host (kip up and the end-to-end
	// suites give the local backend's bridge address, which must exist before Start). Nil
	// means 127.0.0.1, with no endpoints for `kubernetes`.
	Address net.IP
	// ReadyTimeout bounds the wait for every component to report healthy; default 2 minutes.
	ReadyTimeout time.Duration
	// ExtraArgs are more flags per component, by binary name (e.g. "kube-scheduler":
	// {"--kube-api-qps=500"}), appended after the defaults, so a repeated flag wins. The
	// scale benchmark sizes the scheduler's client for 10,000 pods with it.
	ExtraArgs map[string][]string
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	opts      Options
	ca        *pki.CA
	admin     credentials
	server    string
	procs     []*process
	spawner   *spawner
	stopped   bool
	restCfg   *rest.Config
	adminPath string
}

// Start brings up etcd, the apiserver, the controller-manager and the scheduler and returns
// once all of them report healthy. On error nothing it started is left running.
func Start(ctx context.Context, o Options) (cp *ControlPlane, err error) {
	if o.BinDir == "" {
		return nil, errors.New("starting control plane: Options.BinDir is empty (run hack/build-control-plane.sh, or set KIP_CP_BIN)")
	}
	if o.Dir == "" {
		return nil, errors.New("starting control plane: Options.Dir is empty")
	}
	if err := CheckBinaries(o.BinDir); err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 2 * time.Minute
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", o.Dir, err)
	}
	o.Dir = dir
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o700); err != nil {
		return nil, fmt.Errorf("creating control plane dir: %w", err)
	}
	if _, err := StopLeftovers(dir, 5*time.Second); err != nil {
		return nil, fmt.Errorf("clearing leftovers in %s: %w", dir, err)
	}
	// Every Start is a fresh cluster: new certificates would not match old etcd contents.
	if err := os.RemoveAll(filepath.Join(dir, "etcd")); err != nil {
		return nil, fmt.Errorf("removing old etcd data: %w", err)
	}

	started := time.Now()
	step := func(format string, args ...any) {
		fmt.Fprintf(o.Log, "[control-plane %5.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
	}

	step("making certificates in %s", filepath.Join(dir, "pki"))
	apiIP := net.IPv4(127, 0, 0, 1)
	if o.Address != nil {
		apiIP = o.Address
	}
	ca, creds, err := writePKI(filepath.Join(dir, "pki"), apiIP)
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	etcdPort, peerPort, apiPort, kcmPort, schedPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	cp = &ControlPlane{
		opts:      o,
		ca:        ca,
		admin:     creds["admin"],
		server:    "https://" + net.JoinHostPort(apiIP.String(), strconv.Itoa(apiPort)),
		spawner:   newSpawner(),
		adminPath: filepath.Join(dir, "admin.kubeconfig"),
	}
	defer func() {
		if err != nil {
			cp.Stop()
			cp = nil
		}
	}()
	for _, k := range []struct{ file, user, cred string }{
		{"admin.kubeconfig", "kubernetes-admin", "admin"},
		{"controller-manager.kubeconfig", "system:kube-controller-manager", "controller-manager"},
		{"scheduler.kubeconfig", "system:kube-scheduler", "scheduler"},
	} {
		if err := writeKubeconfig(filepath.Join(dir, k.file), cp.server, ca.CertPEM, k.user, creds[k.cred]); err != nil {
			return cp, err
		}
	}
	cp.restCfg = &rest.Config{
		Host: cp.server,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: ca.CertPEM, CertData: cp.admin.certPEM, KeyData: cp.admin.keyPEM,
		},
		QPS:   100,
		Burst: 200,
	}

	p := filepath.Join(dir, "pki")
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)

	step("starting etcd on %s", etcdURL)
	if err := cp.run("etcd", []string{
		"--name=kip", "--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=" + etcdURL, "--advertise-client-urls=" + etcdURL,
		"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=kip=" + peerURL,
		"--unsafe-no-fsync", "--log-level=warn",
	}); err != nil {
		return cp, err
	}
	if err := cp.waitHealthy(ctx, "etcd", etcdURL+"/health", nil); err != nil {
		return cp, err
	}

	step("starting kube-apiserver on %s", cp.server)
	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + apiIP.String(), "--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(dir, "apiserver"),
		"--tls-cert-file=" + filepath.Join(p, "apiserver.crt"), "--tls-private-key-file=" + filepath.Join(p, "apiserver.key"),
		"--client-ca-file=" + filepath.Join(p, "ca.crt"),
		"--kubelet-client-certificate=" + filepath.Join(p, "apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + filepath.Join(p, "apiserver-kubelet-client.key"),
		// The virtual node publishes its bridge address as InternalIP; never try a hostname.
		"--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + filepath.Join(p, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(p, "sa.key"),
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--authorization-mode=Node,RBAC", "--allow-privileged=true",
		"--requestheader-client-ca-file=" + filepath.Join(p, "ca.crt"),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + filepath.Join(p, "front-proxy-client.crt"),
		"--proxy-client-key-file=" + filepath.Join(p, "front-proxy-client.key"),
		// The API server runs on the host, which has no route to ClusterIPs (cells program
		// Services in their own namespaces, not the host's): webhooks, conversion webhooks
		// and aggregated APIs served by pods are dialled at an endpoint's pod IP, which the
		// host reaches over the bridge, instead of at the Service's ClusterIP.
		"--enable-aggregator-routing=true",
	}
	if apiIP.IsLoopback() {
		// The lease reconciler refuses a loopback address; `kubernetes` then has no endpoints.
		apiArgs = append(apiArgs, "--advertise-address="+apiIP.String(), "--endpoint-reconciler-type=none")
	} else {
		apiArgs = append(apiArgs, "--advertise-address="+apiIP.String(), "--endpoint-reconciler-type=lease")
	}
	if !o.InsecureKubeletTLS {
		apiArgs = append(apiArgs, "--kubelet-certificate-authority="+filepath.Join(p, "ca.crt"))
	}
	if err := cp.run("kube-apiserver", apiArgs); err != nil {
		return cp, err
	}
	adminTLS, err := pki.ClientTLS(ca.CertPEM, cp.admin.certPEM, cp.admin.keyPEM, apiIP.String())
	if err != nil {
		return cp, err
	}
	if err := cp.waitHealthy(ctx, "kube-apiserver", cp.server+"/readyz", adminTLS); err != nil {
		return cp, err
	}

	step("starting kube-controller-manager and kube-scheduler")
	kcm := filepath.Join(dir, "controller-manager.kubeconfig")
	if err := cp.run("kube-controller-manager", []string{
		"--kubeconfig=" + kcm, "--authentication-kubeconfig=" + kcm, "--authorization-kubeconfig=" + kcm,
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(kcmPort), "--leader-elect=false",
		"--tls-cert-file=" + filepath.Join(p, "controller-manager-serving.crt"),
		"--tls-private-key-file=" + filepath.Join(p, "controller-manager-serving.key"),
		"--use-service-account-credentials=true", "--root-ca-file=" + filepath.Join(p, "ca.crt"),
		"--service-account-private-key-file=" + filepath.Join(p, "sa.key"),
		"--cluster-signing-cert-file=" + filepath.Join(p, "ca.crt"),
		"--cluster-signing-key-file=" + filepath.Join(p, "ca.key"),
		"--cluster-name=kip", "--controllers=*",
	}); err != nil {
		return cp, err
	}
	sched := filepath.Join(dir, "scheduler.kubeconfig")
	if err := cp.run("kube-scheduler", []string{
		"--kubeconfig=" + sched, "--authentication-kubeconfig=" + sched, "--authorization-kubeconfig=" + sched,
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(schedPort), "--leader-elect=false",
		"--tls-cert-file=" + filepath.Join(p, "scheduler-serving.crt"),
		"--tls-private-key-file=" + filepath.Join(p, "scheduler-serving.key"),
	}); err != nil {
		return cp, err
	}
	localTLS := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if err := cp.waitHealthy(ctx, "kube-controller-manager", "https://127.0.0.1:"+strconv.Itoa(kcmPort)+"/healthz", localTLS); err != nil {
		return cp, err
	}
	if err := cp.waitHealthy(ctx, "kube-scheduler", "https://127.0.0.1:"+strconv.Itoa(schedPort)+"/healthz", localTLS); err != nil {
		return cp, err
	}
	step("ready: %s (admin kubeconfig %s)", cp.server, cp.adminPath)
	return cp, nil
}

// run starts one component and records it in the state file.
func (cp *ControlPlane) run(name string, args []string) error {
	args = append(args, cp.opts.ExtraArgs[name]...)
	proc, err := startProcess(cp.spawner, name, filepath.Join(cp.opts.BinDir, name), args,
		filepath.Join(cp.opts.Dir, "logs", name+".log"))
	if err != nil {
		return err
	}
	cp.procs = append(cp.procs, proc)
	return writeState(cp.opts.Dir, cp.procs)
}

// waitHealthy polls url until it answers 200, the component exits, ctx ends or the ready
// timeout passes. Polling is the only way to learn when a freshly started server is ready.
func (cp *ControlPlane) waitHealthy(ctx context.Context, name, url string, tlsCfg *tls.Config) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer client.CloseIdleConnections()
	proc := cp.procs[len(cp.procs)-1]
	for _, p := range cp.procs {
		if p.name == name {
			proc = p
		}
	}
	var last string
	healthy := func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, fmt.Errorf("checking %s health: %w", name, err)
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true, nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		if proc.exited() {
			return false, fmt.Errorf("waiting for %s: %w", name, proc.exitError())
		}
		return false, nil
	}
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, cp.opts.ReadyTimeout, true, healthy)
	if wait.Interrupted(err) {
		return fmt.Errorf("waiting for %s at %s: %w (last answer: %s); log %s:\n%s",
			name, url, err, last, proc.log, LogTail(proc.log, 15))
	}
	return err
}

// Stop ends every component, newest first: SIGTERM, then SIGKILL after a grace period, and
// waits for each to exit. It is safe to call more than once. The Dir is kept (logs); remove it
// yourself if you want it gone.
func (cp *ControlPlane) Stop() {
	if cp == nil || cp.stopped {
		return
	}
	cp.stopped = true
	for i := len(cp.procs) - 1; i >= 0; i-- {
		cp.procs[i].stop(10 * time.Second)
	}
	cp.spawner.close()
	_ = os.Remove(filepath.Join(cp.opts.Dir, stateFile))
}

// Exited returns an error naming the first component that is no longer running, or nil.
func (cp *ControlPlane) Exited() error {
	for _, p := range cp.procs {
		if p.exited() {
			return p.exitError()
		}
	}
	return nil
}

// PIDs returns the process IDs of the components by name.
func (cp *ControlPlane) PIDs() map[string]int {
	m := make(map[string]int, len(cp.procs))
	for _, p := range cp.procs {
		m[p.name] = p.cmd.Process.Pid
	}
	return m
}

// AdminKubeconfig is the path of a kubeconfig with cluster-admin (system:masters) rights.
func (cp *ControlPlane) AdminKubeconfig() string { return cp.adminPath }

// RESTConfig returns a fresh copy of the admin client configuration.
func (cp *ControlPlane) RESTConfig() *rest.Config { return rest.CopyConfig(cp.restCfg) }

// CA is the cluster CA: it signs every control plane certificate, client certificates the
// apiserver accepts, and the certificates the controller-manager issues for CSRs.
func (cp *ControlPlane) CA() *pki.CA { return cp.ca }

// Server is the apiserver URL.
func (cp *ControlPlane) Server() string { return cp.server }

// Dir is the directory holding everything this control plane made.
func (cp *ControlPlane) Dir() string { return cp.opts.Dir }

// Kubectl returns the path of the kubectl built alongside the control plane.
func (cp *ControlPlane) Kubectl() string { return filepath.Join(cp.opts.BinDir, "kubectl") }

// CheckBinaries reports which of Binaries are missing from dir, with a hint on how to build them.
func CheckBinaries(dir string) error {
	var missing []string
	for _, b := range Binaries {
		if st, err := os.Stat(filepath.Join(dir, b)); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("control plane binaries %v missing from %s: run hack/build-control-plane.sh and set KIP_CP_BIN to the directory it prints", missing, dir)
	}
	return nil
}

// freePorts reserves n distinct free TCP ports on 127.0.0.1 by binding and releasing them.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
