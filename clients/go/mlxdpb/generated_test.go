package mlxdpb_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/mlxd/mlxd/clients/go/internal/testenv"
)

// The committed Go code is exactly what scripts/gen_proto.sh produces from proto/ (DESIGN.md §4.7).
func TestRegeneratingChangesNothing(t *testing.T) {
	out := t.TempDir()
	root := testenv.RepoRoot()
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "gen_proto.sh"))
	cmd.Env = append(os.Environ(), "MLXD_GO_PROTO_OUT="+out, "PYTHON="+testenv.Python(t))
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen_proto.sh: %v\n%s", err, msg)
	}
	committed := filepath.Join(root, "clients", "go", "mlxdpb")
	generated := goFiles(t, out)
	if want := goFiles(t, committed); !slices.Equal(generated, want) {
		t.Fatalf("generated files %v, committed %v: run scripts/gen_proto.sh", generated, want)
	}
	for _, name := range generated {
		got, _ := os.ReadFile(filepath.Join(out, name))
		want, _ := os.ReadFile(filepath.Join(committed, name))
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run scripts/gen_proto.sh", name)
		}
	}
}

// goFiles lists the generated files of dir: its .pb.go files (the tests beside them are not generated).
func goFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.pb.go"))
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range names {
		names[i] = filepath.Base(name)
	}
	return names
}
