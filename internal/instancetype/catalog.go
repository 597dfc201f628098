package instancetype

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
	"time"
)

// The embedded catalogs, one file per cloud: catalog/<cloud>.json or catalog/<cloud>.json.gz.
// hack/gen-catalog writes them; do not edit the compressed ones by hand.
//
//go:embed catalog
var embedded embed.FS

// ErrUnknownCloud and ErrUnknownRegion are wrapped by Load and Regions for a cloud or region
// the catalog does not have.
var (
	ErrUnknownCloud  = errors.New("unknown cloud")
	ErrUnknownRegion = errors.New("unknown region")
)

// File is the catalog file format: the instance types of one cloud, per region.
type File struct {
	// Cloud names the cloud: "aws", "azure", "local".
	Cloud string `json:"cloud"`
	// Source says where the figures came from (a data set, or the APIs that were asked).
	Source string `json:"source"`
	// Fetched is when the figures were fetched, if known.
	Fetched time.Time `json:"fetched,omitzero"`
	// Regions maps a region's canonical name (see CanonicalRegion) to its instance types.
	Regions map[string][]InstanceType `json:"regions"`
}

// Validate checks every region's types.
func (f *File) Validate() error {
	if f.Cloud == "" {
		return errors.New("cloud: must not be empty")
	}
	if len(f.Regions) == 0 {
		return errors.New("regions: must not be empty")
	}
	var errs []error
	for _, r := range sortedKeys(f.Regions) {
		if r != CanonicalRegion(f.Cloud, r) {
			errs = append(errs, fmt.Errorf("regions[%s]: not canonical (want %q)", r, CanonicalRegion(f.Cloud, r)))
		}
		if err := Validate(f.Regions[r]); err != nil {
			errs = append(errs, fmt.Errorf("regions[%s]: %w", r, err))
		}
	}
	return errors.Join(errs...)
}

// Encode writes f as JSON with each region's types sorted by name (in place), so regenerating
// unchanged data gives an identical file: indented, or compact and gzip-compressed when
// compress is set.
func (f *File) Encode(w io.Writer, compress bool) error {
	for _, types := range f.Regions {
		sort.Slice(types, func(i, j int) bool { return types[i].Name < types[j].Name })
	}
	var raw []byte
	var err error
	if compress {
		raw, err = json.Marshal(f)
	} else {
		raw, err = json.MarshalIndent(f, "", " ")
	}
	if err != nil {
		return fmt.Errorf("encoding %s catalog: %w", f.Cloud, err)
	}
	if !compress {
		_, err = w.Write(append(raw, '\n'))
		return err
	}
	zw, _ := gzip.NewWriterLevel(w, gzip.BestCompression)
	// A fixed header (no name, no time) keeps the output reproducible.
	if _, err := zw.Write(raw); err != nil {
		return fmt.Errorf("compressing %s catalog: %w", f.Cloud, err)
	}
	return zw.Close()
}

// DecodeFile reads a catalog file, gzip-compressed or not, strictly: unknown fields are errors.
// The file is validated.
func DecodeFile(r io.Reader) (*File, error) {
	br := bufio.NewReader(r)
	var in io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("decompressing catalog: %w", err)
		}
		defer zr.Close()
		in = zr
	}
	dec := json.NewDecoder(in)
	dec.DisallowUnknownFields()
	var f File
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("decoding catalog: %w", err)
	}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("validating %s catalog: %w", f.Cloud, err)
	}
	return &f, nil
}

// CanonicalRegion spells a region the way the catalog keys it: as given for AWS and local,
// and for Azure the ARM name ("East US" and "eastus" are both "eastus").
func CanonicalRegion(cloud, region string) string {
	if cloud == "azure" {
		return strings.ToLower(strings.ReplaceAll(region, " ", ""))
	}
	return region
}

var cache struct {
	mu    sync.Mutex
	files map[string]*File
}

// embeddedFile parses (once) and returns the embedded catalog of cloud.
func embeddedFile(cloud string) (*File, error) {
	cache.mu.Lock()
	defer cache.mu.Unlock()
	if f, ok := cache.files[cloud]; ok {
		return f, nil
	}
	unknown := fmt.Errorf("%w %q (known: %s)", ErrUnknownCloud, cloud, strings.Join(Clouds(), ", "))
	if cloud == "" || strings.ContainsAny(cloud, `/.\`) {
		return nil, unknown
	}
	var data []byte
	var err error
	for _, name := range []string{cloud + ".json.gz", cloud + ".json"} {
		if data, err = embedded.ReadFile(path.Join("catalog", name)); err == nil {
			break
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, unknown
	}
	if err != nil {
		return nil, fmt.Errorf("reading embedded %s catalog: %w", cloud, err)
	}
	f, err := DecodeFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("loading embedded %s catalog: %w", cloud, err)
	}
	if f.Cloud != cloud {
		return nil, fmt.Errorf("loading embedded %s catalog: file says cloud %q", cloud, f.Cloud)
	}
	if cache.files == nil {
		cache.files = make(map[string]*File)
	}
	cache.files[cloud] = f
	return f, nil
}

// Clouds lists the clouds with an embedded catalog.
func Clouds() []string {
	entries, _ := embedded.ReadDir("catalog")
	var out []string
	for _, e := range entries {
		name, _, _ := strings.Cut(e.Name(), ".")
		if len(out) == 0 || out[len(out)-1] != name {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Regions lists the regions of cloud's embedded catalog, sorted.
func Regions(cloud string) ([]string, error) {
	f, err := embeddedFile(cloud)
	if err != nil {
		return nil, err
	}
	return sortedKeys(f.Regions), nil
}

// Load returns the embedded instance types of cloud in region (see CanonicalRegion for how
// regions are spelled). The catalog is parsed once; every call returns a fresh deep copy the
// caller may change.
func Load(cloud, region string) ([]InstanceType, error) {
	f, err := embeddedFile(cloud)
	if err != nil {
		return nil, err
	}
	types, ok := f.Regions[CanonicalRegion(cloud, region)]
	if !ok {
		return nil, fmt.Errorf("loading %s catalog: %w %q (known: %s)", cloud, ErrUnknownRegion, region,
			strings.Join(sortedKeys(f.Regions), ", "))
	}
	return Clone(types), nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
