package runner

import (
	"io"
	"time"
)

// Options say how to start the daemon. Model is required; every other zero value means its default.
type Options struct {
	// Python is the interpreter that runs `-m mlxd serve`; it must have the mlxd package installed.
	// Default "python3".
	Python string
	// Model is the model folder or .gguf file given to --model.
	Model string
	// Addr is "unix:/path" or "host:port" (port 0 picks a free port). Default: a unix socket in a private
	// temporary directory, which Close removes.
	Addr string
	// Args are extra `mlxd serve` flags, e.g. []string{"--max-queue", "8"}.
	Args []string
	// Env entries ("KEY=value") are added to this process's environment for the daemon.
	Env []string
	// StartTimeout bounds start-up: the ready line and health SERVING. Default 2 minutes.
	StartTimeout time.Duration
	// StopTimeout is how long Close waits after SIGTERM before it kills the daemon. Default 15 s: longer
	// than the daemon's default --grace-period (10 s), so in-flight streams may finish.
	StopTimeout time.Duration
	// Stderr receives a copy of the daemon's log. Nil discards it; the last lines are kept for errors anyway.
	Stderr io.Writer
}

func (o Options) withDefaults() Options {
	if o.Python == "" {
		o.Python = "python3"
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 2 * time.Minute
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = 15 * time.Second
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	return o
}
