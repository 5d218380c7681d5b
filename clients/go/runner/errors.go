package runner

import (
	"fmt"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ExitError says that the daemon process ended, how, and what it last wrote on stderr.
//
// Start returns it (wrapped) when the daemon exits during start-up; calls return it when the daemon died
// under them, wrapping the call's own gRPC error; Wait returns it for any exit but a clean one.
type ExitError struct {
	ExitCode int            // -1 when a signal ended the daemon
	Signal   syscall.Signal // the signal that ended it, or 0
	Stderr   string         // the last lines of the daemon's stderr
	Err      error          // the gRPC error of the call that met the dead daemon, if any
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("mlxd exited with code %d", e.ExitCode)
	if e.Signal != 0 {
		msg = fmt.Sprintf("mlxd was ended by signal %d (%v)", int(e.Signal), e.Signal)
	}
	// A daemon that fails on its own says why on its last stderr line (the process contract, DESIGN.md §3).
	if e.ExitCode > 0 {
		if i := strings.LastIndexByte(e.Stderr, '\n'); i >= 0 {
			msg += ": " + e.Stderr[i+1:]
		} else if e.Stderr != "" {
			msg += ": " + e.Stderr
		}
	}
	return msg
}

func (e *ExitError) Unwrap() error { return e.Err }

// GRPCStatus makes status.Code give UNAVAILABLE for a call that met a dead daemon, however the call noticed:
// the broken connection (UNAVAILABLE) or its context, which ends with the process (CANCELED).
func (e *ExitError) GRPCStatus() *status.Status {
	if e.Err == nil {
		return nil
	}
	return status.New(codes.Unavailable, e.Error()+": "+status.Convert(e.Err).Message())
}

// clean reports an exit with code 0: the daemon stopped the way it was asked to.
func (e *ExitError) clean() bool { return e.ExitCode == 0 && e.Signal == 0 }
