package pod

import (
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kip-dev/kip/internal/cellapi"
)

const cellResolv = "nameserver 192.168.50.1\nsearch cell.example\noptions edns0\n"

func dnsPod(mut func(*corev1.PodSpec)) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "shop", UID: "u1"},
		Spec: corev1.PodSpec{DNSPolicy: corev1.DNSClusterFirst, Containers: []corev1.Container{{Name: "app", Image: "busybox"}}}}
	if mut != nil {
		mut(&p.Spec)
	}
	return p
}

// TestPodEtcFiles: the agent writes resolv.conf, hosts and hostname as kubelet does, in the
// request's cluster domain and with its cluster DNS, the cell's resolv.conf as the host's.
func TestPodEtcFiles(t *testing.T) {
	yes := true
	tests := []struct {
		name                   string
		req                    cellapi.PodRequest
		resolv, host, hostname string
		warnings               []string
	}{{
		name:     "ClusterFirst",
		req:      cellapi.PodRequest{Pod: dnsPod(nil), ClusterDNS: []string{"10.0.0.10"}, ClusterDomain: "cluster.local"},
		resolv:   "search shop.svc.cluster.local svc.cluster.local cluster.local cell.example\nnameserver 10.0.0.10\noptions ndots:5\n",
		host:     "10.1.2.3\tweb-0\n",
		hostname: "web-0\n",
	}, {
		name:     "ClusterFirst without cluster DNS uses the cell's resolv.conf and warns",
		req:      cellapi.PodRequest{Pod: dnsPod(nil)},
		resolv:   "search cell.example\nnameserver 192.168.50.1\noptions edns0\n",
		host:     "10.1.2.3\tweb-0\n",
		hostname: "web-0\n",
		warnings: []string{"MissingClusterDNS"},
	}, {
		name:     "subdomain in the request's cluster domain",
		req:      cellapi.PodRequest{Pod: dnsPod(func(s *corev1.PodSpec) { s.Subdomain = "db" }), ClusterDNS: []string{"10.0.0.10"}, ClusterDomain: "k.example"},
		resolv:   "search shop.svc.k.example svc.k.example k.example cell.example\nnameserver 10.0.0.10\noptions ndots:5\n",
		host:     "10.1.2.3\tweb-0.db.shop.svc.k.example\tweb-0\n",
		hostname: "web-0\n",
	}, {
		name: "setHostnameAsFQDN",
		req: cellapi.PodRequest{Pod: dnsPod(func(s *corev1.PodSpec) {
			s.Subdomain = "db"
			s.SetHostnameAsFQDN = &yes
			s.DNSPolicy = corev1.DNSDefault
		}), ClusterDNS: []string{"10.0.0.10"}, ClusterDomain: "cluster.local"},
		resolv:   "search cell.example\nnameserver 192.168.50.1\noptions edns0\n",
		host:     "10.1.2.3\tweb-0.db.shop.svc.cluster.local\tweb-0\n",
		hostname: "web-0.db.shop.svc.cluster.local\n",
	}, {
		name: "None",
		req: cellapi.PodRequest{Pod: dnsPod(func(s *corev1.PodSpec) {
			s.DNSPolicy = corev1.DNSNone
			s.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"}}
		}), ClusterDNS: []string{"10.0.0.10"}, ClusterDomain: "cluster.local"},
		resolv:   "nameserver 1.1.1.1\nnameserver 1.0.0.1\nnameserver 8.8.8.8\n",
		host:     "10.1.2.3\tweb-0\n",
		hostname: "web-0\n",
		warnings: []string{"DNSConfigForming"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			names, warns, err := writePodFiles(dir, &tt.req, "10.1.2.3", cellResolv, 0)
			if err != nil {
				t.Fatal(err)
			}
			read := func(name string) string {
				b, err := os.ReadFile(filepath.Join(dir, etcDir, name))
				if err != nil {
					t.Fatal(err)
				}
				return string(b)
			}
			if got := read("resolv.conf"); got != tt.resolv {
				t.Errorf("resolv.conf:\n%s\nwant:\n%s", got, tt.resolv)
			}
			if got := read("hosts"); !strings.HasSuffix(got, tt.host) {
				t.Errorf("hosts:\n%s\nwant it to end with %q", got, tt.host)
			}
			if got := read("hostname"); got != tt.hostname {
				t.Errorf("hostname %q, want %q", got, tt.hostname)
			}
			if names.Kernel+"\n" != tt.hostname {
				t.Errorf("kernel hostname %q, want %q", names.Kernel, tt.hostname)
			}
			var reasons []string
			for _, w := range warns {
				reasons = append(reasons, w.Reason)
			}
			if !slices.Equal(reasons, tt.warnings) {
				t.Errorf("warnings %v, want %v", warns, tt.warnings)
			}
		})
	}
}

// TestSetHostnameAsFQDNTooLong: as kubelet, a pod whose FQDN would not fit the kernel's 64
// characters is refused, naming the field.
func TestSetHostnameAsFQDNTooLong(t *testing.T) {
	yes := true
	p := dnsPod(func(s *corev1.PodSpec) {
		s.Hostname = strings.Repeat("h", 50)
		s.Subdomain = "db"
		s.SetHostnameAsFQDN = &yes
	})
	err := Validate(&cellapi.PodRequest{Pod: p, ClusterDomain: "cluster.local"})
	if !cellapi.IsInvalid(err) || !strings.Contains(err.Error(), "pod.spec.setHostnameAsFQDN: FQDN") || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("Validate: %v, want an Invalid error naming pod.spec.setHostnameAsFQDN", err)
	}
	p.Spec.SetHostnameAsFQDN = nil
	if err := Validate(&cellapi.PodRequest{Pod: p, ClusterDomain: "cluster.local"}); err != nil {
		t.Fatalf("without setHostnameAsFQDN: %v", err)
	}
}

// TestContainerGetsKernelHostname: runc's hostname and $HOSTNAME are the FQDN with
// setHostnameAsFQDN, and the pod's DNS warnings reach its status as events.
func TestContainerGetsKernelHostname(t *testing.T) {
	yes := true
	p := dnsPod(func(s *corev1.PodSpec) { s.Subdomain = "db"; s.SetHostnameAsFQDN = &yes })
	rt := newFakeRuntime()
	clk := clocktesting.NewFakeClock(time.Now())
	statuses := make(chan *cellapi.PodStatus, 1000)
	dir := filepath.Join(t.TempDir(), "pod")
	pd, err := Start(Config{
		Dir: dir, Runtime: rt, Images: &fakeImages{}, Cgroups: fakeCgroups{},
		CgroupParent: "kip", NewLog: func(string) (LogWriter, error) { return discardLog{}, nil },
		Clock: clk, Notify: func(s *cellapi.PodStatus) { statuses <- s }, ResolvConf: cellResolv,
	}, &cellapi.PodRequest{Pod: p, ClusterDomain: "cluster.local"}) // no ClusterDNS: MissingClusterDNS
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		done := make(chan error, 1)
		go func() { done <- pd.Stop(context.Background(), 0) }()
		for {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
				clk.Step(time.Hour)
			}
		}
	})
	first := <-statuses
	if len(first.Events) != 1 || first.Events[0].Reason != "MissingClusterDNS" || first.Events[0].Type != corev1.EventTypeWarning {
		t.Errorf("events %+v, want one MissingClusterDNS warning", first.Events)
	}
	select {
	case <-rt.started:
	case <-time.After(10 * time.Second):
		t.Fatal("container never started")
	}
	var cfg struct {
		Hostname string `json:"hostname"`
		Process  struct {
			Env []string `json:"env"`
		} `json:"process"`
	}
	found := false
	_ = filepath.WalkDir(filepath.Join(dir, containersDir), func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "config.json" {
			b, _ := os.ReadFile(path)
			found = json.Unmarshal(b, &cfg) == nil
		}
		return nil
	})
	if !found {
		t.Fatal("no config.json in the container's bundle")
	}
	const fqdn = "web-0.db.shop.svc.cluster.local"
	if cfg.Hostname != fqdn || !slices.Contains(cfg.Process.Env, "HOSTNAME="+fqdn) {
		t.Errorf("hostname %q, env %v; want %s in both", cfg.Hostname, cfg.Process.Env, fqdn)
	}
}
