package runner

import (
	"bytes"
	"io"
)

// maxReadyLine bounds what is buffered while waiting for the ready line.
const maxReadyLine = 64 << 10

// firstLine receives the daemon's stdout: it passes the first line (the ready line) on and discards the rest.
type firstLine struct {
	lines chan<- []byte // buffered: the one send never blocks
	buf   []byte
	done  bool
}

func (f *firstLine) Write(p []byte) (int, error) {
	if f.done {
		return len(p), nil
	}
	if i := bytes.IndexByte(p, '\n'); i >= 0 {
		f.done = true
		f.lines <- append(f.buf, p[:i]...)
		f.buf = nil
	} else if len(f.buf)+len(p) <= maxReadyLine {
		f.buf = append(f.buf, p...)
	}
	return len(p), nil
}

// logSink receives the daemon's stderr: the tail for errors, and a copy for Options.Stderr whose errors are
// ignored, because a sink that stops reading must never block the daemon on a full pipe.
type logSink struct {
	tail *tail
	copy io.Writer
}

func (s logSink) Write(p []byte) (int, error) {
	s.tail.Write(p)
	_, _ = s.copy.Write(p)
	return len(p), nil
}
