package registry

import (
	"context"
	"fmt"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kip-dev/kip/internal/imagebuild"
)

// LongRunningCmd is the default command of seeded images other than nginx: it keeps running
// until it gets SIGTERM or SIGINT, then stops its child and exits 0 (PID 1 needs its own
// trap for that).
var LongRunningCmd = []string{"sh", "-c", "trap 'kill $!; exit 0' TERM INT; sleep 2147483647 & wait $!"}

// NginxCmd is the default command of a seeded "nginx" image: busybox httpd serving /www on
// port 80 in the foreground, stopping with exit 0 on SIGTERM or SIGINT.
var NginxCmd = []string{"sh", "-c", "trap 'kill $!; exit 0' TERM INT; httpd -f -p 80 -h /www & wait $!"}

// NginxIndex is the page the seeded nginx image serves at "/".
const NginxIndex = "<html><body><h1>Welcome to kip's busybox nginx</h1></body></html>\n"

// BusyboxImage returns the image SeedBusybox pushes for repo ("library/nginx:latest"): the
// plain busybox image (command "sh") for repos named busybox, busybox httpd on port 80 for
// repos named nginx, and LongRunningCmd for every other name.
func BusyboxImage(repo string) (v1.Image, error) {
	base := repo
	if i := strings.IndexAny(base, ":@"); i >= 0 {
		base = base[:i]
	}
	base = path.Base(base)
	opts := imagebuild.Options{}
	switch base {
	case "busybox":
	case "nginx":
		opts.Cmd = NginxCmd
		opts.ExposedPorts = []string{"80/tcp"}
		opts.Files = []imagebuild.File{{Path: "/www/index.html", Data: []byte(NginxIndex)}}
	default:
		opts.Cmd = LongRunningCmd
	}
	img, err := imagebuild.Busybox(opts)
	if err != nil {
		return nil, fmt.Errorf("building image for %s: %w", repo, err)
	}
	return img, nil
}

// SeedBusybox pushes a busybox image under each repo name ("library/busybox:latest",
// "library/nginx:latest", "library/foo"), choosing the command as BusyboxImage does. Plain
// names like "nginx" resolve to "library/nginx" against a default registry (see
// internal/agent/image), so seed those under "library/". auth is the registry's Auth().
func SeedBusybox(ctx context.Context, host string, auth authn.Authenticator, names ...string) error {
	for _, n := range names {
		img, err := BusyboxImage(n)
		if err != nil {
			return fmt.Errorf("seeding %s/%s: %w", host, n, err)
		}
		if _, err := Push(ctx, host, n, img, auth); err != nil {
			return fmt.Errorf("seeding %s/%s: %w", host, n, err)
		}
	}
	return nil
}
