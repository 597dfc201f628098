// Package kipimage builds Kip's two container images in process, reproducibly, with
// go-containerregistry (no container daemon): the kip image a Deployment runs and the
// kip-cell artifact. `make images` (hack/images) builds them from static binaries; the
// end-to-end suite builds the kip image from the binaries under test to run kip in a pod.
//
// The kip image carries what kip serves to booting AWS cells beside kip itself: kip-cell next
// to kip (kip's default cloud.aws.bootstrap.agentPaths) and runc on PATH (its default
// runcPaths), so an installed kip boots cells without extra volumes (docs/install.md).
package kipimage

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/kip-dev/kip/internal/imagebuild"
)

// The images' repository names under a registry.
const (
	KipRepo  = "kip"
	CellRepo = "kip-cell"
)

// NonrootUID is the user kip runs as in its image (distroless's nonroot).
const NonrootUID = 65532

// CABundle is where Debian keeps the CA bundle, on the host and in the kip image.
const CABundle = "/etc/ssl/certs/ca-certificates.crt"

// Paths of the binaries in the kip image. kip serves KipCellPath and the runc it finds on PATH
// to AWS cells unless its config names others.
const (
	KipPath     = "/usr/local/bin/kip"
	KipCellPath = "/usr/local/bin/kip-cell"
	RuncPath    = "/usr/local/bin/runc"
)

// KipInputs are the contents of the kip image.
type KipInputs struct {
	// Kip is the kip binary; KipCell and Runc are the files kip serves to booting cells of
	// the image's architecture (linux, GOARCH Arch). All three are required.
	Kip, KipCell, Runc []byte
	// CABundle is the CA bundle the AWS SDK's TLS trusts.
	CABundle []byte
	// Libraries are the dynamic loader and shared libraries a dynamically linked Kip needs
	// (imagebuild.SharedLibraries), each read from its host file and stored at its Path
	// (a symlink when Path differs from Real). Static binaries (hack/images) need none.
	Libraries []imagebuild.SharedLibrary
	// Version is the image's org.opencontainers.image.version label; Arch its GOARCH
	// (default runtime.GOARCH).
	Version, Arch string
}

// Kip is the kip image: the binary, kip-cell and runc to serve, the CA bundle, a nonroot user
// and kip's directories; it runs `kip run --config /etc/kip/kip.yaml` as NonrootUID.
func Kip(in KipInputs) (v1.Image, error) {
	for _, f := range []struct {
		name string
		data []byte
	}{{"kip", in.Kip}, {"kip-cell", in.KipCell}, {"runc", in.Runc}} {
		if len(f.data) == 0 {
			return nil, fmt.Errorf("building the kip image: no %s binary", f.name)
		}
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonrootUID, NonrootUID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonrootUID)
	l := layer{}
	l.file("etc/passwd", 0o644, []byte(passwd))
	l.file("etc/group", 0o644, []byte(group))
	l.file(CABundle[1:], 0o644, in.CABundle)
	l.dir("home/nonroot/", 0o700, NonrootUID)
	l.dir("tmp/", 0o1777, 0)
	l.file(KipPath[1:], 0o755, in.Kip)
	l.file(KipCellPath[1:], 0o755, in.KipCell)
	l.file(RuncPath[1:], 0o755, in.Runc)
	l.dir("var/lib/kip/", 0o755, NonrootUID)
	for _, lib := range in.Libraries {
		real := strings.TrimPrefix(lib.Real, "/")
		if _, ok := l[real]; !ok {
			data, err := os.ReadFile(lib.Real)
			if err != nil {
				return nil, fmt.Errorf("building the kip image: reading shared library %s: %w", lib.Real, err)
			}
			l.file(real, 0o755, data)
		}
		if p := strings.TrimPrefix(lib.Path, "/"); p != real {
			l.symlink(p, lib.Real)
		}
	}
	tarball, err := l.tar()
	if err != nil {
		return nil, err
	}
	return oneLayer(tarball, v1.Config{
		Entrypoint: []string{KipPath},
		Cmd:        []string{"run", "--config", "/etc/kip/kip.yaml"},
		Env:        []string{imagebuild.DefaultPath, "SSL_CERT_FILE=" + CABundle},
		User:       fmt.Sprintf("%d:%d", NonrootUID, NonrootUID),
		WorkingDir: "/",
		Labels:     labels(in.Version),
	}, "kip hack/images "+in.Version, in.Arch)
}

// Cell is the kip-cell artifact: the agent binary alone.
func Cell(cell []byte, version, arch string) (v1.Image, error) {
	l := layer{}
	l.file(KipCellPath[1:], 0o755, cell)
	tarball, err := l.tar()
	if err != nil {
		return nil, err
	}
	return oneLayer(tarball, v1.Config{
		Entrypoint: []string{KipCellPath},
		Env:        []string{imagebuild.DefaultPath},
		Labels:     labels(version),
	}, "kip-cell hack/images "+version, arch)
}

// labels are the OCI annotations both images carry.
func labels(version string) map[string]string {
	return map[string]string{
		"org.opencontainers.image.source":  "https://github.com/kip-dev/kip",
		"org.opencontainers.image.version": version,
	}
}

// oneLayer is imagebuild.OneLayer for GOARCH arch.
func oneLayer(layer []byte, cfg v1.Config, createdBy, arch string) (v1.Image, error) {
	img, err := imagebuild.OneLayer(layer, cfg, createdBy)
	if err != nil || arch == "" || arch == runtime.GOARCH {
		return img, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture = arch
	return mutate.ConfigFile(img, cf)
}

// layer maps an entry's path (a directory's ends in "/") to its header and data.
type layer map[string]*entry

type entry struct {
	hdr  tar.Header
	data []byte
}

// dir adds directory p (ending in "/") owned by uid, and its missing parents.
func (l layer) dir(p string, mode int64, uid int) {
	l.parents(p)
	l[p] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: p, Mode: mode, Uid: uid, Gid: uid}}
}

// file adds regular file p owned by root, and its missing parents.
func (l layer) file(p string, mode int64, data []byte) {
	l.parents(p)
	l[p] = &entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(data))}, data: data}
}

// symlink adds symlink p → target, and its missing parents.
func (l layer) symlink(p, target string) {
	l.parents(p)
	l[p] = &entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: p, Linkname: target, Mode: 0o777}}
}

// parents adds the missing parent directories of p (0755, root).
func (l layer) parents(p string) {
	for d := path.Dir(strings.TrimSuffix(p, "/")); d != "." && d != "/"; d = path.Dir(d) {
		if _, ok := l[d+"/"]; !ok {
			l[d+"/"] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}}
		}
	}
}

// tar writes the entries sorted by path, each stamped imagebuild.Epoch.
func (l layer) tar() ([]byte, error) {
	names := make([]string, 0, len(l))
	for n := range l {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := l[n]
		e.hdr.ModTime, e.hdr.Format = imagebuild.Epoch, tar.FormatPAX
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, fmt.Errorf("writing layer entry %s: %w", n, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("writing layer entry %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, errors.Join(errors.New("closing the layer"), err)
	}
	return buf.Bytes(), nil
}
