package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/mlxd/mlxd/clients/go/internal/testenv"
)

func TestStreamsAGenerationAndStopsTheDaemon(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"--verbose", "--python", testenv.Python(t), "--model", testenv.Model(t), "--max-tokens", "12",
		"--temperature", "0", "--ignore-eos", "Once upon a time"}
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	usage := regexp.MustCompile(`\[\d+ prompt \(0 cached\) \+ 12 generated tokens, finish FINISH_REASON_LENGTH; .* decode [0-9.]+ tok/s`)
	if !usage.MatchString(stderr.String()) {
		t.Errorf("stderr has no usage line:\n%s", stderr.String())
	}
	if !strings.HasSuffix(stdout.String(), "\n") {
		t.Errorf("stdout %q does not end the answer with a newline", stdout.String())
	}
}

func TestBadCommandLine(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"just a prompt"}, &stdout, &stderr); code != 2 {
		t.Fatalf("no --model: exit %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), "usage: mlxd-run") {
		t.Errorf("no usage on stderr: %q", stderr.String())
	}
}

func TestDaemonFailureIsReported(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"--python", testenv.Python(t), "--model", t.TempDir(), "hi"}
	if code := run(context.Background(), args, &stdout, &stderr); code != 1 {
		t.Fatalf("a folder without a model: exit %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "mlxd: cannot load model") {
		t.Errorf("stderr does not carry the daemon's reason: %q", stderr.String())
	}
}
