package runner

import (
	"strings"
	"sync"
)

// tailBytes bounds what is kept of the daemon's stderr: enough for a traceback, never the whole log.
const tailBytes = 16 << 10

// tail keeps the last bytes written to it, so errors can quote what the daemon said before it exited.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*tailBytes {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-tailBytes:]...)
	}
	return len(p), nil
}

// lines returns the last n complete or partial lines, without the trailing newline.
func (t *tail) lines(n int) string {
	t.mu.Lock()
	text := strings.TrimRight(string(t.buf), "\n")
	t.mu.Unlock()
	all := strings.Split(text, "\n")
	if len(all) > n {
		all = all[len(all)-n:]
	}
	return strings.Join(all, "\n")
}
