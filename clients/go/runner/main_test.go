package runner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlxd/mlxd/clients/go/internal/testenv"
	"github.com/mlxd/mlxd/clients/go/mlxdpb"
)

// orphanHelperEnv makes the test binary a parent that starts a daemon, prints its pid and waits to be
// killed (TestNoOrphanWhenParentIsKilled).
const orphanHelperEnv = "MLXD_RUNNER_ORPHAN_HELPER"

var shared struct {
	once   sync.Once
	runner *Runner
	err    error
}

func TestMain(m *testing.M) {
	if os.Getenv(orphanHelperEnv) != "" {
		runOrphanHelper()
		return
	}
	code := m.Run()
	if shared.runner != nil {
		if err := shared.runner.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "closing the shared daemon:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func runOrphanHelper() {
	r, err := Start(context.Background(), Options{Python: os.Getenv("MLXD_PYTHON"), Model: os.Getenv("MLXD_TEST_MODEL")})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println(r.PID())
	select {}
}

// testOptions starts the test model with the test Python, logging to the test's output on failure.
// slowLoadingPython is an interpreter for Options.Python whose daemon holds the loading state for `seconds`
// first: it serves through the Python tests' entry point tests.helpers.fault_daemon (mlxd itself has no such
// hook), given the `-m mlxd serve ...` command line the runner builds.
func slowLoadingPython(t *testing.T, seconds int) string {
	t.Helper()
	script := filepath.Join(t.TempDir(), "python")
	body := fmt.Sprintf("#!/bin/sh\nshift 2 # -m mlxd\ncd %q && exec %q -m tests.helpers.fault_daemon --load-delay %d \"$@\"\n",
		testenv.RepoRoot(), testenv.Python(t), seconds)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script
}

func testOptions(t *testing.T) Options {
	return Options{Python: testenv.Python(t), Model: testenv.Model(t), StartTimeout: time.Minute,
		Stderr: testLog{t}}
}

// testLog forwards the daemon's log to t.Log. The daemon has exited, and its log is drained, before the
// test ends: Start reaps a daemon that failed, and Close (in a cleanup) reaps the others.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// sharedRunner is one daemon for the tests that leave it serving; TestMain closes it.
func sharedRunner(t *testing.T) *Runner {
	t.Helper()
	shared.once.Do(func() {
		opts := testOptions(t)
		opts.Stderr = nil
		shared.runner, shared.err = Start(context.Background(), opts)
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.runner
}

// startRunner starts a daemon of the test's own, closed when the test ends.
func startRunner(t *testing.T, opts Options) *Runner {
	t.Helper()
	r, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

type completion struct {
	text      string
	reasoning string
	toolCalls []*mlxdpb.ToolCall
	tokenIDs  []int32
	final     *mlxdpb.Final
}

func collect(t *testing.T, r *Runner, ctx context.Context, req *mlxdpb.GenerateRequest) (completion, error) {
	t.Helper()
	var c completion
	var parts, reasoning strings.Builder
	for resp, err := range r.Generate(ctx, req) {
		if err != nil {
			return c, err
		}
		if chunk := resp.GetChunk(); chunk != nil {
			parts.WriteString(chunk.GetText())
			reasoning.WriteString(chunk.GetReasoning())
			c.toolCalls = append(c.toolCalls, chunk.GetToolCalls()...)
			c.tokenIDs = append(c.tokenIDs, chunk.GetTokenIds()...)
		} else {
			c.final = resp.GetFinal()
		}
	}
	c.text, c.reasoning = parts.String(), reasoning.String()
	return c, nil
}

func greedy(maxTokens uint32) *mlxdpb.GenerationOptions {
	temperature := float32(0)
	return &mlxdpb.GenerationOptions{MaxTokens: maxTokens, Temperature: &temperature, IgnoreEos: true}
}

func tokensRequest(ids []int32, options *mlxdpb.GenerationOptions) *mlxdpb.GenerateRequest {
	return &mlxdpb.GenerateRequest{Input: &mlxdpb.GenerateRequest_Tokens{Tokens: &mlxdpb.TokenIds{Ids: ids}},
		Options: options}
}
