// Command conformance-images builds, offline, the container images that Kubernetes' own e2e
// suite (e2e.test) runs in the conformance specs, and pushes them to a registry (the one `kip
// up` runs) under the names e2e.test asks for. hack/conformance.sh runs it; see
// docs/conformance.md.
//
// Only the base userland is substituted; what the specs exercise is the real thing:
//
//   - busybox: busybox built from the source of Debian's package without Debian's patches
//     (hack/build-busybox.sh: one of them reverts upstream ash's keeping of environment
//     variables whose names are not identifiers), dynamically linked, its applets as
//     symlinks, with the libraries ldd resolves for it.
//   - agnhost (every tag): k8s.io/kubernetes/test/images/agnhost built from the pinned
//     Kubernetes sources (CGO_ENABLED=0) at /agnhost and /agnhost-2, on the busybox userland
//     plus the Debian tools upstream's alpine base provides and the specs run (curl in exec
//     hooks, nc -u in the UDP checks, dig and getent in the DNS specs, with an nsswitch.conf
//     that reads /etc/hosts before DNS, as musl does), with the user and group the upstream
//     image defines and the porter certificates.
//   - pause: agnhost's pause subcommand, alone in its image.
//   - nonewprivs: test/images/nonewprivs (nnp) setuid root on the busybox userland.
//   - glibc-dns-testing: the busybox userland plus Debian's dig and glibc's getent (libc-bin)
//     and Debian's nsswitch.conf, for the DNS specs' glibc querier (upstream: bookworm-slim
//     with dnsutils).
//   - nginx (every tag): Debian's nginx with its libraries and mime.types, serving
//     /usr/share/nginx/html on port 80 in the foreground, logs to stdout/stderr, as the
//     upstream image does.
//
// Images e2e.test lists that none of these cover are reported and not pushed.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path"
	"sort"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kip-dev/kip/internal/registry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance-images:", err)
		os.Exit(1)
	}
}

// inputs are the files the images are made of, all prepared by hack/conformance.sh.
type inputs struct {
	registry   string   // host:port of the registry to push to
	images     string   // file with e2e.test --list-images output
	busybox    string   // Debian's dynamic busybox binary
	agnhost    string   // agnhost binary
	agnhostSrc string   // directory of k8s.io/kubernetes/test/images/agnhost (porter certificates)
	tools      toolList // Debian binaries agnhost's userland carries (curl, dig, nc)
	nnp        string   // nonewprivs binary
	glibcTools toolList // Debian binaries glibc-dns-testing carries (dig, getent)
	nginxRoot  string   // Debian's nginx and nginx-common extracted (dpkg-deb -x)
	private    string   // repository prefix that needs credentials: nothing is pushed under it
}

func run(ctx context.Context, args []string, out io.Writer) error {
	var in inputs
	fs := flag.NewFlagSet("conformance-images", flag.ContinueOnError)
	fs.StringVar(&in.registry, "registry", "", "registry host:port to push to (required)")
	fs.StringVar(&in.images, "images", "", "file holding `e2e.test --list-images` (required)")
	fs.StringVar(&in.busybox, "busybox", "", "busybox binary, dynamically linked (hack/build-busybox.sh)")
	fs.StringVar(&in.agnhost, "agnhost", "", "agnhost binary (CGO_ENABLED=0)")
	fs.StringVar(&in.agnhostSrc, "agnhost-src", "", "source directory of test/images/agnhost (porter certificates)")
	fs.Var(&in.tools, "agnhost-tool", "ROOT=PATH[=DEST]: a Debian binary for agnhost's userland, extracted under ROOT (with any libraries this host lacks) at ROOT/PATH; it goes to DEST, default /PATH (repeatable)")
	fs.Var(&in.glibcTools, "glibc-dns-tool", "ROOT=PATH[=DEST]: a Debian binary for glibc-dns-testing's userland, as -agnhost-tool (repeatable)")
	fs.StringVar(&in.nnp, "nonewprivs", "", "nonewprivs (nnp) binary (CGO_ENABLED=0)")
	fs.StringVar(&in.nginxRoot, "nginx-root", "", "directory where Debian's nginx and nginx-common are extracted")
	fs.StringVar(&in.private, "private", "", "image prefix standing for a registry that needs credentials (the repo list's privateRegistry); nothing is pushed under it, so pulls without credentials fail as they should")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if in.registry == "" || in.images == "" {
		return errors.New("-registry and -images are required")
	}
	refs, err := readRefs(in.images)
	if err != nil {
		return err
	}

	// kip up's registry takes pushes only with its credentials: found, as by docker and
	// crane, in $DOCKER_CONFIG/config.json (kip up prints the directory).
	regName, err := name.NewRegistry(in.registry, name.Insecure)
	if err != nil {
		return fmt.Errorf("-registry %q: %w", in.registry, err)
	}
	auth, err := authn.DefaultKeychain.Resolve(regName)
	if err != nil {
		return fmt.Errorf("finding credentials for %s: %w", in.registry, err)
	}
	b := &builder{in: in, built: map[string]v1.Image{}}
	var skipped []string
	pushed := 0
	for _, r := range refs {
		if r.Context().RegistryStr() != in.registry {
			continue // e.g. the invalid registry, which must stay unreachable
		}
		if in.private != "" && strings.HasPrefix(r.String(), strings.TrimSuffix(in.private, "/")+"/") {
			continue
		}
		kind := path.Base(r.Context().RepositoryStr())
		img, err := b.image(kind)
		if errors.Is(err, errNoBuilder) {
			skipped = append(skipped, r.String())
			continue
		}
		if err != nil {
			return fmt.Errorf("building %s: %w", r, err)
		}
		repo := strings.TrimPrefix(r.String(), in.registry+"/")
		digest, err := registry.Push(ctx, in.registry, repo, img, auth)
		if err != nil {
			return fmt.Errorf("pushing %s: %w", r, err)
		}
		fmt.Fprintf(out, "pushed %s (%s)\n", r, digest)
		pushed++
	}
	sort.Strings(skipped)
	for _, s := range skipped {
		fmt.Fprintf(out, "not built (no offline recipe; specs that need it fail to pull): %s\n", s)
	}
	fmt.Fprintf(out, "%d images pushed, %d not built\n", pushed, len(skipped))
	return nil
}

// tool is a binary extracted from a Debian package: root/path on this host, dest (default
// /path) in the image.
type tool struct{ root, path, dest string }

// toolList is the repeatable -agnhost-tool flag.
type toolList []tool

func (t *toolList) String() string { return fmt.Sprint(*t) }

func (t *toolList) Set(v string) error {
	parts := strings.Split(v, "=")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return fmt.Errorf("want ROOT=PATH or ROOT=PATH=DEST, got %q", v)
	}
	tl := tool{root: parts[0], path: strings.TrimPrefix(path.Clean("/"+parts[1]), "/")}
	tl.dest = "/" + tl.path
	if len(parts) == 3 {
		tl.dest = path.Clean("/" + parts[2])
	}
	*t = append(*t, tl)
	return nil
}

// readRefs parses one image reference per line, ignoring blank lines.
func readRefs(file string) ([]name.Reference, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("reading the image list: %w", err)
	}
	defer f.Close()
	var refs []name.Reference
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		r, err := name.ParseReference(line, name.Insecure)
		if err != nil {
			return nil, fmt.Errorf("image list line %q: %w", line, err)
		}
		refs = append(refs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the image list: %w", err)
	}
	return refs, nil
}
