package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mlxd/mlxd/clients/go/internal/testenv"
	"github.com/mlxd/mlxd/clients/go/runner"
)

// lines is the probe's stdout; seen is closed once "streaming" is written.
type lines struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	seen chan struct{}
	once sync.Once
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if strings.Contains(string(p), "streaming") {
		l.once.Do(func() { close(l.seen) })
	}
	return l.buf.Write(p)
}

// The plain generated client, not the runner: a daemon killed under its stream gives UNAVAILABLE, no hang.
// (How fast is measured by bench/process_faults.py.)
func TestDaemonKilledMidStreamGivesUnavailable(t *testing.T) {
	r, err := runner.Start(context.Background(), runner.Options{Python: testenv.Python(t), Model: testenv.Model(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out := &lines{seen: make(chan struct{})}
	code := make(chan int, 1)
	go func() { code <- run(context.Background(), []string{"--addr", r.Ready().Addr}, out, &bytes.Buffer{}) }()
	select {
	case <-out.seen:
	case <-time.After(30 * time.Second):
		t.Fatal("no chunk within 30 s")
	}
	_ = syscall.Kill(r.PID(), syscall.SIGKILL)
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit %d", c)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the stream hangs after the daemon was killed")
	}
	out.mu.Lock()
	defer out.mu.Unlock()
	if got := out.buf.String(); got != "streaming\nend Unavailable\n" {
		t.Fatalf("probe output %q", got)
	}
}
