package runner

import (
	"context"
	"errors"
	"io"
	"iter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/mlxd/mlxd/clients/go/mlxdpb"
)

// exitNoticeDelay is how long a failed call waits to learn whether the daemon died: the broken connection
// is noticed a moment before the exit is reaped.
const exitNoticeDelay = time.Second

// ErrNoFinal means a stream ended without its final message, which the protocol forbids.
var ErrNoFinal = errors.New("runner: generation stream ended without a final message")

// Generate streams a generation: chunks, then exactly one final message. Each range over the result runs
// the request once. Cancelling ctx or leaving the loop early cancels the generation on the daemon. An error
// is yielded once, last: a gRPC status error (status.Code gives its code), or an *ExitError when the
// daemon died (status.Code gives Unavailable).
func (r *Runner) Generate(ctx context.Context, req *mlxdpb.GenerateRequest) iter.Seq2[*mlxdpb.GenerateResponse, error] {
	return r.stream(ctx, func(ctx context.Context) (grpc.ServerStreamingClient[mlxdpb.GenerateResponse], error) {
		return r.inference.Generate(ctx, req)
	})
}

// MultimodalGenerate is Generate with images in the prompt or messages.
func (r *Runner) MultimodalGenerate(ctx context.Context, req *mlxdpb.MultimodalGenerateRequest) iter.Seq2[*mlxdpb.GenerateResponse, error] {
	return r.stream(ctx, func(ctx context.Context) (grpc.ServerStreamingClient[mlxdpb.GenerateResponse], error) {
		return r.inference.MultimodalGenerate(ctx, req)
	})
}

type openStream func(context.Context) (grpc.ServerStreamingClient[mlxdpb.GenerateResponse], error)

func (r *Runner) stream(ctx context.Context, open openStream) iter.Seq2[*mlxdpb.GenerateResponse, error] {
	return func(yield func(*mlxdpb.GenerateResponse, error) bool) {
		callCtx, cancel := r.callContext(ctx)
		defer cancel()
		stream, err := open(callCtx)
		if err != nil {
			yield(nil, r.callError(ctx, err))
			return
		}
		sawFinal := false
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				if !sawFinal {
					yield(nil, ErrNoFinal)
				}
				return
			}
			if err != nil {
				yield(nil, r.callError(ctx, err))
				return
			}
			sawFinal = sawFinal || resp.GetFinal() != nil
			if !yield(resp, nil) {
				return
			}
		}
	}
}

// Tokenize turns text or chat messages into token ids the way the served model does.
func (r *Runner) Tokenize(ctx context.Context, req *mlxdpb.TokenizeRequest) (*mlxdpb.TokenizeResponse, error) {
	callCtx, cancel := r.callContext(ctx)
	defer cancel()
	resp, err := r.inference.Tokenize(callCtx, req)
	return resp, r.callError(ctx, err)
}

// ModelInfo describes the served model.
func (r *Runner) ModelInfo(ctx context.Context) (*mlxdpb.ModelInfo, error) {
	callCtx, cancel := r.callContext(ctx)
	defer cancel()
	resp, err := r.inference.GetModelInfo(callCtx, &mlxdpb.GetModelInfoRequest{})
	return resp, r.callError(ctx, err)
}

// Health asks the daemon's grpc.health.v1 service for its overall status.
func (r *Runner) Health(ctx context.Context) (healthpb.HealthCheckResponse_ServingStatus, error) {
	callCtx, cancel := r.callContext(ctx)
	defer cancel()
	resp, err := r.health.Check(callCtx, &healthpb.HealthCheckRequest{})
	return resp.GetStatus(), r.callError(ctx, err)
}

// callContext is ctx that also ends when the daemon exits, so no call waits on a dead process.
func (r *Runner) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.exited, cancel)
	return ctx, func() { stop(); cancel() }
}

// callError returns err, or an *ExitError wrapping it when the daemon died under the call. ctx is the
// caller's: a call it cancelled failed for that reason, not because of the daemon.
func (r *Runner) callError(ctx context.Context, err error) error {
	if err == nil || ctx.Err() != nil {
		return err
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Canceled:
	default:
		return err
	}
	select {
	case <-r.exited.Done():
		exitErr := *r.exitErr
		exitErr.Err = err
		return &exitErr
	case <-time.After(exitNoticeDelay):
		return err
	}
}
