package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

// FuzzParse parses any file as a ProviderConfig (seeded with testdata/*.yaml). Properties: no
// panic; an error is either a decoding error or a list of field errors, each naming its
// field; a config that parses is a fixed point: filling defaults again changes nothing, and
// it encodes to a file that parses to the same config.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed files in testdata: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			var agg utilerrors.Aggregate
			if errors.As(err, &agg) {
				for _, e := range agg.Errors() {
					var fe *field.Error
					if !errors.As(e, &fe) || fe.Field == "" {
						t.Fatalf("validation error %q names no field", e)
					}
				}
			} else if !bytes.HasPrefix([]byte(err.Error()), []byte("decoding config: ")) {
				t.Fatalf("error %q is neither a decoding error nor field errors", err)
			}
			return
		}
		first, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("encoding a parsed config: %v", err)
		}
		c.Default()
		if again, _ := json.Marshal(c); !bytes.Equal(first, again) {
			t.Fatalf("Default changed a parsed config:\n%s\n%s", first, again)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("encoding a parsed config as YAML: %v", err)
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("a parsed config, written back, does not parse: %v\n%s", err, out)
		}
		if second, _ := json.Marshal(c2); !bytes.Equal(first, second) {
			t.Fatalf("round trip changed the config:\n%s\n%s", first, second)
		}
	})
}
