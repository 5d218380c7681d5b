package runner_test

import (
	"context"
	"fmt"
	"log"

	"github.com/mlxd/mlxd/clients/go/mlxdpb"
	"github.com/mlxd/mlxd/clients/go/runner"
)

func Example() {
	ctx := context.Background()
	r, err := runner.Start(ctx, runner.Options{Python: ".venv/bin/python", Model: "/models/SmolLM2-135M-Instruct"})
	if err != nil {
		log.Fatal(err) // an *runner.ExitError carries the daemon's exit code and last stderr lines
	}
	defer r.Close()

	temperature := float32(0.7)
	req := &mlxdpb.GenerateRequest{
		Input:   &mlxdpb.GenerateRequest_Prompt{Prompt: "Once upon a time"},
		Options: &mlxdpb.GenerationOptions{MaxTokens: 64, Temperature: &temperature},
	}
	for resp, err := range r.Generate(ctx, req) {
		if err != nil {
			log.Fatal(err) // status.Code(err) gives the gRPC code
		}
		if chunk := resp.GetChunk(); chunk != nil {
			fmt.Print(chunk.GetText())
		} else {
			fmt.Printf("\n[%d tokens, %s]\n", resp.GetFinal().GetUsage().GetCompletionTokens(), resp.GetFinal().GetFinishReason())
		}
	}
}
