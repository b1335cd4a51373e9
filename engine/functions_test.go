package engine

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/zclconf/go-cty/cty"
)

// pathexpand expands a leading ~ (and only that) to the home directory.
func TestPathexpand(t *testing.T) {
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatalf("no home directory to expand to: %v", err)
	}
	fn := functions(t.TempDir(), nil)["pathexpand"]
	for in, want := range map[string]string{
		"~/.kube/config": filepath.Join(home, ".kube/config"),
		"~":              home,
		"/etc/kube":      "/etc/kube",
		"rel/~/x":        "rel/~/x",
		"~alice/x":       "~alice/x",
	} {
		got, err := fn.Call([]cty.Value{cty.StringVal(in)})
		if err != nil || got.AsString() != want {
			t.Errorf("pathexpand(%q) = %v, %v; want %q", in, got, err, want)
		}
	}
}
