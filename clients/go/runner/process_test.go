package runner

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlxd/mlxd/clients/go/internal/testenv"
)

func TestBadModelPathReportsTheDaemonsReason(t *testing.T) {
	opts := testOptions(t)
	opts.Model = filepath.Join(t.TempDir(), "no-such-model")
	_, err := Start(context.Background(), opts)
	var exitErr *ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode != 1 {
		t.Fatalf("Start with a bad model path: %v, want an *ExitError with code 1", err)
	}
	if !strings.Contains(err.Error(), "mlxd: cannot load model: "+opts.Model) {
		t.Fatalf("the error does not carry the daemon's reason: %v", err)
	}
}

func TestStartTimeoutKillsTheDaemon(t *testing.T) {
	opts := testOptions(t)
	opts.Python = slowLoadingPython(t, 60)
	opts.StartTimeout = 2 * time.Second
	opts.Addr = "unix:" + filepath.Join(t.TempDir(), "mlxd.sock") // marks the daemon's command line
	_, err := Start(context.Background(), opts)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start of a daemon that loads for 60 s: %v, want a deadline error", err)
	}
	// Start returns only after the daemon it gave up on was killed and reaped.
	if pids := processesWith(opts.Addr); len(pids) > 0 {
		t.Fatalf("daemon %v still runs after Start gave up", pids)
	}
}

// processesWith lists the running processes that have arg on their command line.
func processesWith(arg string) []int {
	var pids []int
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, path := range cmdlines {
		cmdline, err := os.ReadFile(path)
		if err != nil || !slices.Contains(strings.Split(string(cmdline), "\x00"), arg) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(path))); err == nil && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestCloseStopsTheDaemonCleanly(t *testing.T) {
	r := startRunner(t, testOptions(t))
	sock := strings.TrimPrefix(r.Ready().Addr, "unix:")
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := r.Wait(); err != nil {
		t.Fatalf("Wait after Close: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(sock)); !os.IsNotExist(err) {
		t.Errorf("the private socket directory is still there: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
}

func TestDaemonKilledMidStreamGivesExitError(t *testing.T) {
	opts := testOptions(t)
	opts.Addr = "127.0.0.1:0"
	r := startRunner(t, opts)
	if !strings.HasPrefix(r.Ready().Addr, "127.0.0.1:") || strings.HasSuffix(r.Ready().Addr, ":0") {
		t.Fatalf("ready line address %q", r.Ready().Addr)
	}
	chunks := 0
	var streamErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for resp, err := range r.Generate(context.Background(), tokensRequest([]int32{1, 90}, greedy(0))) {
			if err != nil {
				streamErr = err
				return
			}
			if resp.GetFinal() != nil {
				return
			}
			if chunks++; chunks == 3 {
				_ = syscall.Kill(r.PID(), syscall.SIGKILL)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the stream hangs after the daemon was killed")
	}
	var exitErr *ExitError
	if !errors.As(streamErr, &exitErr) || exitErr.Signal != syscall.SIGKILL || exitErr.Err == nil {
		t.Fatalf("the stream ended with %v, want an *ExitError for SIGKILL wrapping the RPC error", streamErr)
	}
	if code := status.Code(streamErr); code != codes.Unavailable {
		t.Fatalf("status.Code of the stream's error: %v, want Unavailable", code)
	}
	if err := r.Wait(); !errors.As(err, &exitErr) || exitErr.Signal != syscall.SIGKILL {
		t.Fatalf("Wait: %v", err)
	}
	if _, err := r.ModelInfo(context.Background()); !errors.As(err, &exitErr) {
		t.Fatalf("a call after the daemon died: %v, want an *ExitError", err)
	}
}

// A parent that is SIGKILLed runs no cleanup; the daemon must notice its parent is gone and exit by itself.
func TestNoOrphanWhenParentIsKilled(t *testing.T) {
	parent := exec.Command(os.Args[0])
	parent.Env = append(os.Environ(), orphanHelperEnv+"=1", "MLXD_PYTHON="+testenv.Python(t),
		"MLXD_TEST_MODEL="+testenv.Model(t))
	stdout, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	pid, convErr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || convErr != nil {
		_ = parent.Process.Kill()
		_ = parent.Wait()
		t.Fatalf("the helper parent printed %q (%v)", line, err)
	}
	_ = parent.Process.Kill()
	_ = parent.Wait()
	killed := time.Now()
	for alive(pid) {
		if time.Since(killed) > 5*time.Second {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("daemon %d is still running 5 s after its parent was killed", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the daemon exited %v after its parent was killed", time.Since(killed).Round(time.Millisecond))
}

// alive reports whether pid runs: an exited orphan stays a zombie (state Z) until PID 1 reaps it.
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}
