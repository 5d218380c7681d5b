package runner

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// grpcHealthProbeNotServing is grpc_health_probe's exit code for a NOT_SERVING answer.
const grpcHealthProbeNotServing = 4

// tool finds a third-party client on PATH; scripts/test_go.sh installs the pinned ones there.
func tool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%v: run scripts/test_go.sh, which installs the versions pinned in clients/go/tools/go.mod", err)
	}
	return path
}

func run(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(out), 0
}

// Third-party clients need no proto files: health through grpc.health.v1, the rest through reflection.
func TestThirdPartyClients(t *testing.T) {
	probe, grpcurl := tool(t, "grpc-health-probe"), tool(t, "grpcurl")
	sock := filepath.Join(t.TempDir(), "mlxd.sock")
	opts := testOptions(t)
	opts.Addr = "unix:" + sock
	opts.Python = slowLoadingPython(t, 3) // the daemon listens but holds the loading state
	started := make(chan error, 1)
	var r *Runner
	go func() {
		var err error
		r, err = Start(context.Background(), opts)
		started <- err
	}()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the daemon did not create its socket within 30 s")
		}
	}
	if out, code := run(t, probe, "-addr", "unix://"+sock); code != grpcHealthProbeNotServing {
		t.Errorf("grpc_health_probe while loading: exit %d, want %d (NOT_SERVING)\n%s", code, grpcHealthProbeNotServing, out)
	}
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })

	if out, code := run(t, probe, "-addr", "unix://"+sock); code != 0 {
		t.Errorf("grpc_health_probe when serving: exit %d\n%s", code, out)
	}
	out, code := run(t, grpcurl, "-plaintext", "-unix", sock, "list")
	for _, service := range []string{"mlxd.v1.Inference", "grpc.health.v1.Health"} {
		if code != 0 || !strings.Contains(out, service) {
			t.Errorf("grpcurl list: exit %d, %q does not list %s", code, out, service)
		}
	}
	out, code = run(t, grpcurl, "-plaintext", "-unix", sock, "mlxd.v1.Inference/GetModelInfo")
	var info struct{ Architecture, Digest string }
	if err := json.Unmarshal([]byte(out), &info); code != 0 || err != nil || info.Architecture != "llama" ||
		info.Digest != r.Ready().Digest {
		t.Errorf("grpcurl GetModelInfo: exit %d, %q (%v)", code, out, err)
	}
	out, code = run(t, grpcurl, "-plaintext", "-unix", "-d",
		`{"tokens": {"ids": [1, 72, 105]}, "options": {"max_tokens": 5, "temperature": 0, "ignore_eos": true}}`,
		sock, "mlxd.v1.Inference/Generate")
	if code != 0 || !strings.Contains(out, `"completion_tokens": 5`) {
		t.Errorf("grpcurl Generate: exit %d\n%s", code, out)
	}
}
