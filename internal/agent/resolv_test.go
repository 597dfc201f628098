package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// TestHostResolvConf: a resolv.conf naming only loopback servers (systemd-resolved's stub,
// unreachable from a cell's namespace) gives way to systemd-resolved's upstream list when it
// exists; any other is kept.
func TestHostResolvConf(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stub := write("stub", "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n")
	real := write("real", "nameserver 10.0.2.3\nnameserver 127.0.0.53\n")
	upstream := write("upstream", "nameserver 192.0.2.1\n")
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct{ name, def, upstream, want string }{
		{"stub with upstream", stub, upstream, upstream},
		{"stub without upstream", stub, missing, stub},
		{"a routable server", real, upstream, real},
		{"no file", missing, upstream, missing},
	} {
		if got := hostResolvConf(tc.def, tc.upstream); got != tc.want {
			t.Errorf("%s: hostResolvConf = %s, want %s", tc.name, got, tc.want)
		}
	}
}
