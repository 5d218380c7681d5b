// Package runner spawns an mlxd daemon, supervises it and streams generations from it.
//
// Start launches `python -m mlxd serve`, waits for its ready line and for health SERVING, and returns a
// Runner with a gRPC connection to it. Close stops the daemon (SIGTERM, then SIGKILL after a grace period).
// The daemon never outlives this process: it polls its parent pid and exits when that changes.
package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mlxd/mlxd/clients/go/mlxdpb"
)

// maxMessageBytes matches the daemon's default --max-message-mb, so large prompt logprobs still arrive.
const maxMessageBytes = 64 << 20

// stderrLines is how much of the daemon's stderr an ExitError quotes.
const stderrLines = 20

// Ready is the daemon's ready line: where it listens and what it serves.
type Ready struct {
	Addr   string `json:"addr"`
	PID    int    `json:"pid"`
	Model  string `json:"model"`
	Digest string `json:"digest"`
}

// Runner is a started daemon and a connection to it. Its methods are safe for concurrent use.
type Runner struct {
	opts    Options
	cmd     *exec.Cmd
	stderr  *tail
	sockDir string // the private directory of the default socket, removed by Close

	exited  context.Context // done once the process has been reaped
	exitErr *ExitError      // set before exited is done

	ready     Ready
	conn      *grpc.ClientConn
	inference mlxdpb.InferenceClient
	health    healthpb.HealthClient

	closeOnce sync.Once
	closeErr  error
}

// Start spawns the daemon and returns once it serves. ctx bounds start-up only; the daemon runs until
// Close. When the daemon exits during start-up the error is an *ExitError with its exit code and stderr.
func Start(ctx context.Context, opts Options) (*Runner, error) {
	if opts.Model == "" {
		return nil, errors.New("runner: Options.Model is required")
	}
	opts = opts.withDefaults()
	r := &Runner{opts: opts, stderr: &tail{}}
	addr := opts.Addr
	if addr == "" {
		dir, err := os.MkdirTemp("", "mlxd-")
		if err != nil {
			return nil, fmt.Errorf("runner: socket directory: %w", err)
		}
		r.sockDir = dir
		addr = "unix:" + filepath.Join(dir, "mlxd.sock")
	}
	readyLine := make(chan []byte, 1)
	if err := r.spawn(addr, readyLine); err != nil {
		r.removeSockDir()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	if err := r.awaitServing(ctx, readyLine); err != nil {
		r.kill()
		r.removeSockDir()
		return nil, err
	}
	return r, nil
}

func (r *Runner) spawn(addr string, readyLine chan<- []byte) error {
	args := []string{"-m", "mlxd", "serve", "--model", r.opts.Model, "--addr", addr}
	cmd := exec.Command(r.opts.Python, append(args, r.opts.Args...)...)
	cmd.Env = append(os.Environ(), r.opts.Env...)
	cmd.Stdout = &firstLine{lines: readyLine}
	cmd.Stderr = logSink{tail: r.stderr, copy: r.opts.Stderr}
	// Its own process group: a terminal's Ctrl-C reaches this program, which decides when the daemon stops.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A descendant that kept the daemon's stdout or stderr open must not hold up Wait.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("runner: start %s: %w", r.opts.Python, err)
	}
	r.cmd = cmd
	exited, markExited := context.WithCancel(context.Background())
	r.exited = exited
	go func() {
		r.exitErr = exitError(cmd.Wait(), r.stderr.lines(stderrLines))
		markExited()
	}()
	return nil
}

func exitError(waitErr error, stderr string) *ExitError {
	e := &ExitError{Stderr: stderr}
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) {
		e.ExitCode = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal()
		}
	}
	return e
}

func (r *Runner) awaitServing(ctx context.Context, readyLine <-chan []byte) error {
	select {
	case line := <-readyLine:
		if err := json.Unmarshal(line, &r.ready); err != nil || r.ready.Addr == "" {
			return fmt.Errorf("runner: mlxd printed %q, not a ready line", line)
		}
	case <-r.exited.Done():
		return fmt.Errorf("runner: mlxd did not start: %w", r.exitErr)
	case <-ctx.Done():
		return fmt.Errorf("runner: gave up waiting for mlxd to serve (start timeout %v): %w; last stderr:\n%s",
			r.opts.StartTimeout, ctx.Err(), r.stderr.lines(stderrLines))
	}
	conn, err := grpc.NewClient(r.ready.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)))
	if err != nil {
		return fmt.Errorf("runner: connect to %s: %w", r.ready.Addr, err)
	}
	r.conn = conn
	r.inference = mlxdpb.NewInferenceClient(conn)
	r.health = healthpb.NewHealthClient(conn)
	if err := r.watchUntilServing(ctx); err != nil {
		conn.Close()
		return err
	}
	return nil
}

// watchUntilServing follows health Watch: the ready line comes after SERVING today, but the health
// service is the contract a parent can rely on.
func (r *Runner) watchUntilServing(ctx context.Context) error {
	callCtx, cancel := r.callContext(ctx)
	defer cancel()
	stream, err := r.health.Watch(callCtx, &healthpb.HealthCheckRequest{})
	for err == nil {
		var resp *healthpb.HealthCheckResponse
		if resp, err = stream.Recv(); err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
	}
	return fmt.Errorf("runner: waiting for SERVING: %w", r.callError(ctx, err))
}

// Ready returns the daemon's ready line.
func (r *Runner) Ready() Ready { return r.ready }

// PID returns the daemon's process id.
func (r *Runner) PID() int { return r.cmd.Process.Pid }

// Conn returns the gRPC connection, for calls this package does not wrap (Detokenize, Cancel, ...).
func (r *Runner) Conn() *grpc.ClientConn { return r.conn }

// Wait blocks until the daemon exits. It returns nil for a clean exit (code 0), else an *ExitError.
func (r *Runner) Wait() error {
	<-r.exited.Done()
	if r.exitErr.clean() {
		return nil
	}
	return r.exitErr
}

// Close stops the daemon: SIGTERM (it refuses new work and lets in-flight streams finish within its
// --grace-period), then SIGKILL after Options.StopTimeout. It then closes the connection and removes the
// default socket's directory. It returns what Wait returns; calling it again returns the same.
func (r *Runner) Close() error {
	r.closeOnce.Do(func() {
		_ = r.cmd.Process.Signal(syscall.SIGTERM) // fails only when the daemon is gone already
		select {
		case <-r.exited.Done():
		case <-time.After(r.opts.StopTimeout):
			r.kill()
		}
		r.conn.Close()
		r.removeSockDir()
		r.closeErr = r.Wait()
	})
	return r.closeErr
}

func (r *Runner) kill() {
	_ = r.cmd.Process.Kill()
	<-r.exited.Done()
}

func (r *Runner) removeSockDir() {
	if r.sockDir != "" {
		_ = os.RemoveAll(r.sockDir)
	}
}
