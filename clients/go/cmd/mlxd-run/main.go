// Command mlxd-run starts an mlxd daemon, streams one generation to stdout, prints usage and timings to
// stderr, and stops the daemon.
//
//	mlxd-run --model PATH [--chat] [--max-tokens N] [--temperature T] ... "prompt"
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlxd/mlxd/clients/go/mlxdpb"
	"github.com/mlxd/mlxd/clients/go/runner"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

type config struct {
	opts    runner.Options
	request *mlxdpb.GenerateRequest
}

// parse reads the command line; sampling values left unset stay unset (the model's defaults apply).
func parse(args []string, stderr io.Writer) (config, error) {
	flags := flag.NewFlagSet("mlxd-run", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {
		fmt.Fprintln(stderr, "usage: mlxd-run --model PATH [flags] PROMPT")
		flags.PrintDefaults()
	}
	python := os.Getenv("MLXD_PYTHON")
	if python == "" {
		python = "python3"
	}
	var c config
	flags.StringVar(&c.opts.Model, "model", "", "model folder or .gguf file (required)")
	flags.StringVar(&c.opts.Python, "python", python, "python with mlxd installed ($MLXD_PYTHON sets the default)")
	flags.StringVar(&c.opts.Addr, "addr", "", "daemon address, unix:/path or host:port (default a private unix socket)")
	flags.DurationVar(&c.opts.StartTimeout, "start-timeout", 2*time.Minute, "how long the daemon may take to load")
	verbose := flags.Bool("verbose", false, "copy the daemon's log to stderr")
	chat := flags.Bool("chat", false, "send the prompt as a user chat message (the model's chat template)")
	maxTokens := flags.Uint("max-tokens", 256, "most tokens to generate (0 = up to the context length)")
	temperature := flags.Float64("temperature", 0, "sampling temperature, 0 = greedy (default: the model's)")
	topP := flags.Float64("top-p", 0, "nucleus sampling mass (default: the model's)")
	topK := flags.Int("top-k", 0, "sample among the k most likely tokens (default: the model's)")
	seed := flags.Uint64("seed", 0, "sampling seed (default: unset)")
	ignoreEOS := flags.Bool("ignore-eos", false, "go on past end-of-sequence tokens")
	if err := flags.Parse(args); err != nil {
		return c, err
	}
	if c.opts.Model == "" || flags.NArg() != 1 {
		flags.Usage()
		return c, errors.New("mlxd-run: need --model and one prompt")
	}
	if *verbose {
		c.opts.Stderr = stderr
	}
	options := &mlxdpb.GenerationOptions{MaxTokens: uint32(*maxTokens), IgnoreEos: *ignoreEOS}
	flags.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "temperature":
			options.Temperature = ptr(float32(*temperature))
		case "top-p":
			options.TopP = ptr(float32(*topP))
		case "top-k":
			options.TopK = ptr(int32(*topK))
		case "seed":
			options.Seed = seed
		}
	})
	c.request = &mlxdpb.GenerateRequest{Options: options, Input: &mlxdpb.GenerateRequest_Prompt{Prompt: flags.Arg(0)}}
	if *chat {
		c.request.Input = &mlxdpb.GenerateRequest_Chat{Chat: &mlxdpb.ChatMessages{
			Messages: []*mlxdpb.ChatMessage{{Role: "user", Content: flags.Arg(0)}}}}
	}
	return c, nil
}

func ptr[T any](v T) *T { return &v }

// run returns the exit code: 0 done, 1 failed, 2 bad command line, 130 interrupted.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parse(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, err)
		}
		return 2
	}
	begin := time.Now()
	r, err := runner.Start(ctx, c.opts)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stderr, "[mlxd %d ready in %.1f s at %s]\n", r.PID(), time.Since(begin).Seconds(), r.Ready().Addr)
	code := stream(ctx, r, c.request, stdout, stderr)
	if err := r.Close(); err != nil {
		fmt.Fprintln(stderr, "mlxd-run: stopping the daemon:", err)
		return max(code, 1)
	}
	return code
}

func stream(ctx context.Context, r *runner.Runner, req *mlxdpb.GenerateRequest, stdout, stderr io.Writer) int {
	for resp, err := range r.Generate(ctx, req) {
		if err != nil {
			fmt.Fprintln(stdout)
			if ctx.Err() != nil && status.Code(err) == codes.Canceled {
				fmt.Fprintln(stderr, "[interrupted]")
				return 130
			}
			fmt.Fprintln(stderr, "mlxd-run:", err)
			return 1
		}
		if chunk := resp.GetChunk(); chunk != nil {
			fmt.Fprint(stdout, chunk.GetText())
			continue
		}
		fmt.Fprintln(stdout)
		printFinal(stderr, resp.GetFinal())
	}
	return 0
}

func printFinal(w io.Writer, f *mlxdpb.Final) {
	u, t := f.GetUsage(), f.GetTimings()
	fmt.Fprintf(w, "[%d prompt (%d cached) + %d generated tokens, finish %s; queue %.0f ms, first token %.0f ms, "+
		"prefill %.1f tok/s, decode %.1f tok/s, total %.2f s, peak memory %.1f MiB]\n",
		u.GetPromptTokens(), u.GetCachedTokens(), u.GetCompletionTokens(), f.GetFinishReason(),
		t.GetQueueSeconds()*1000, t.GetTimeToFirstTokenSeconds()*1000, t.GetPrefillTokensPerSecond(),
		t.GetDecodeTokensPerSecond(), t.GetTotalSeconds(), float64(f.GetPeakMemoryBytes())/(1<<20))
}
