// Command mlxd-stream-probe streams one generation that never ends by itself (max_tokens 0, ignore_eos) and
// reports how the stream ends, a line per event: "pid N" (with --model: the daemon it started), "streaming"
// after the first chunk, then "end CODE" (the gRPC code, and " exit" when the runner saw the daemon die).
// bench/process_faults.py kills the daemon between "streaming" and "end" and times the gap.
//
//	mlxd-stream-probe --addr unix:/path/to.sock | host:port   (a running daemon, through the generated stubs)
//	mlxd-stream-probe --model PATH [--python PY]             (a daemon of its own, through package runner)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/mlxd/mlxd/clients/go/mlxdpb"
	"github.com/mlxd/mlxd/clients/go/runner"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run returns the exit code: 0 when the stream ended (whichever way), 1 when it could not start, 2 for a bad
// command line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("mlxd-stream-probe", flag.ContinueOnError)
	flags.SetOutput(stderr)
	python := os.Getenv("MLXD_PYTHON")
	if python == "" {
		python = "python3"
	}
	addr := flags.String("addr", "", "address of a running daemon")
	model := flags.String("model", "", "start a daemon of its own for this model instead")
	flags.StringVar(&python, "python", python, "python with mlxd installed, for --model")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	req := &mlxdpb.GenerateRequest{
		Input:   &mlxdpb.GenerateRequest_Tokens{Tokens: &mlxdpb.TokenIds{Ids: []int32{5, 5, 5, 5}}},
		Options: &mlxdpb.GenerationOptions{IgnoreEos: true},
	}
	switch {
	case *addr != "" && *model == "":
		conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		defer conn.Close()
		return report(plainStream(ctx, mlxdpb.NewInferenceClient(conn), req), stdout)
	case *model != "" && *addr == "":
		r, err := runner.Start(ctx, runner.Options{Python: python, Model: *model})
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		defer r.Close()
		fmt.Fprintf(stdout, "pid %d\n", r.PID())
		return report(r.Generate(ctx, req), stdout)
	default:
		fmt.Fprintln(stderr, "usage: mlxd-stream-probe --addr ADDR | --model PATH [--python PY]")
		return 2
	}
}

func plainStream(ctx context.Context, client mlxdpb.InferenceClient,
	req *mlxdpb.GenerateRequest) iter.Seq2[*mlxdpb.GenerateResponse, error] {
	return func(yield func(*mlxdpb.GenerateResponse, error) bool) {
		stream, err := client.Generate(ctx, req)
		for err == nil {
			var resp *mlxdpb.GenerateResponse
			if resp, err = stream.Recv(); err == nil && !yield(resp, nil) {
				return
			}
		}
		yield(nil, err)
	}
}

func report(responses iter.Seq2[*mlxdpb.GenerateResponse, error], stdout io.Writer) int {
	streaming := false
	for resp, err := range responses {
		if err != nil {
			var exitErr *runner.ExitError
			exited := ""
			if errors.As(err, &exitErr) {
				exited = " exit"
			}
			fmt.Fprintf(stdout, "end %v%s\n", status.Code(err), exited)
			return 0
		}
		if resp.GetFinal() != nil {
			fmt.Fprintln(stdout, "end final")
			return 0
		}
		if !streaming {
			streaming = true
			fmt.Fprintln(stdout, "streaming")
		}
	}
	fmt.Fprintln(stdout, "end eof")
	return 0
}
