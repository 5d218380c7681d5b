package runner

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/mlxd/mlxd/clients/go/internal/testenv"
	"github.com/mlxd/mlxd/clients/go/mlxdpb"
)

type pythonCompletion struct {
	Text             string  `json:"text"`
	TokenIDs         []int32 `json:"token_ids"`
	FinishReason     int32   `json:"finish_reason"`
	CompletionTokens uint32  `json:"completion_tokens"`
}

// pythonComplete runs the same request through the Python client (testdata/python_complete.py).
func pythonComplete(t *testing.T, addr string, request map[string]any) pythonCompletion {
	t.Helper()
	arg, _ := json.Marshal(request)
	script := filepath.Join(testenv.RepoRoot(), "clients", "go", "testdata", "python_complete.py")
	out, err := exec.Command(testenv.Python(t), script, addr, string(arg)).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("python client: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("python client: %v", err)
	}
	var c pythonCompletion
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatalf("python client printed %q: %v", out, err)
	}
	return c
}

func TestGreedyGenerationMatchesPythonClient(t *testing.T) {
	r := sharedRunner(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		req    *mlxdpb.GenerateRequest
		python map[string]any
	}{
		{"tokens", tokensRequest([]int32{1, 72, 101, 108, 108, 111}, greedy(24)),
			map[string]any{"tokens": []int{1, 72, 101, 108, 108, 111}, "max_tokens": 24, "temperature": 0, "ignore_eos": true}},
		{"prompt", &mlxdpb.GenerateRequest{Input: &mlxdpb.GenerateRequest_Prompt{Prompt: "Once upon a time"}, Options: greedy(24)},
			map[string]any{"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "ignore_eos": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := collect(t, r, ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			want := pythonComplete(t, r.Ready().Addr, tc.python)
			if got.text != want.Text || !slices.Equal(got.tokenIDs, want.TokenIDs) {
				t.Errorf("Go runner: %q %v\nPython client: %q %v", got.text, got.tokenIDs, want.Text, want.TokenIDs)
			}
			if got.final == nil || int32(got.final.GetFinishReason()) != want.FinishReason ||
				got.final.GetUsage().GetCompletionTokens() != want.CompletionTokens {
				t.Errorf("final %v, Python client's finish reason %d after %d tokens", got.final, want.FinishReason, want.CompletionTokens)
			}
			if len(got.tokenIDs) != 24 || got.final.GetFinishReason() != mlxdpb.FinishReason_FINISH_REASON_LENGTH {
				t.Errorf("%d tokens, finish %v; want 24 tokens and LENGTH", len(got.tokenIDs), got.final.GetFinishReason())
			}
		})
	}
}

func TestCancelMidStreamThenReuse(t *testing.T) {
	r := sharedRunner(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := tokensRequest([]int32{1, 50, 60}, greedy(0)) // up to the context length: far longer than the test
	req.RequestId = "go-cancel-mid-stream"
	chunks := 0
	var streamErr error
	for resp, err := range r.Generate(ctx, req) {
		if err != nil {
			streamErr = err
			break
		}
		if resp.GetFinal() != nil {
			t.Fatalf("the generation finished before it was cancelled: %v", resp.GetFinal())
		}
		if chunks++; chunks == 3 {
			cancel()
		}
	}
	if status.Code(streamErr) != codes.Canceled {
		t.Fatalf("after cancel: %v, want code Canceled", streamErr)
	}
	waitUntilDropped(t, r, req.RequestId)
	got, err := collect(t, r, context.Background(), tokensRequest([]int32{1, 50, 60}, greedy(8)))
	if err != nil || len(got.tokenIDs) != 8 {
		t.Fatalf("the daemon after a cancel: %d tokens, %v", len(got.tokenIDs), err)
	}
}

func TestBreakingOutOfTheLoopCancels(t *testing.T) {
	r := sharedRunner(t)
	req := tokensRequest([]int32{1, 80}, greedy(0))
	req.RequestId = "go-break"
	for range r.Generate(context.Background(), req) {
		break
	}
	waitUntilDropped(t, r, req.RequestId)
}

// waitUntilDropped waits until the daemon has no live request with this id (its Cancel RPC finds none).
func waitUntilDropped(t *testing.T, r *Runner, requestID string) {
	t.Helper()
	client := mlxdpb.NewInferenceClient(r.Conn())
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := client.Cancel(context.Background(), &mlxdpb.CancelRequest{RequestId: requestID})
		if err != nil {
			t.Fatal(err)
		}
		if !resp.GetFound() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s is still live on the daemon 5 s after its stream was cancelled", requestID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEightConcurrentStreams(t *testing.T) {
	r := sharedRunner(t)
	var wg sync.WaitGroup
	results := make([]completion, 8)
	errs := make([]error, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = collect(t, r, context.Background(), tokensRequest([]int32{1, int32(65 + i)}, greedy(32)))
		}()
	}
	wg.Wait()
	for i, c := range results {
		if errs[i] != nil {
			t.Errorf("stream %d: %v", i, errs[i])
		} else if len(c.tokenIDs) != 32 || c.final.GetUsage().GetCompletionTokens() != 32 {
			t.Errorf("stream %d: %d tokens, final %v", i, len(c.tokenIDs), c.final)
		}
	}
}

func TestInvalidRequestsGetTheirStatusCode(t *testing.T) {
	r := sharedRunner(t)
	negative := float32(-1)
	for _, tc := range []struct {
		name string
		req  *mlxdpb.GenerateRequest
		code codes.Code
	}{
		{"negative temperature", tokensRequest([]int32{1}, &mlxdpb.GenerationOptions{MaxTokens: 4, Temperature: &negative}), codes.InvalidArgument},
		{"no input", &mlxdpb.GenerateRequest{Options: greedy(4)}, codes.InvalidArgument},
		{"token outside the vocabulary", tokensRequest([]int32{1, 100000}, greedy(4)), codes.InvalidArgument},
		{"another model expected", &mlxdpb.GenerateRequest{Input: &mlxdpb.GenerateRequest_Prompt{Prompt: "hi"},
			Options: greedy(4), ExpectedModel: "sha256:0000"}, codes.FailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := collect(t, r, context.Background(), tc.req)
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want code %v", err, tc.code)
			}
		})
	}
	t.Run("images to a text-only model", func(t *testing.T) {
		req := &mlxdpb.MultimodalGenerateRequest{Input: &mlxdpb.MultimodalGenerateRequest_Prompt{Prompt: &mlxdpb.MultimodalPrompt{
			Parts: []*mlxdpb.ContentPart{{Part: &mlxdpb.ContentPart_Text{Text: "what is this?"}}}}}, Options: greedy(4)}
		var got error
		for _, err := range r.MultimodalGenerate(context.Background(), req) {
			got = err
		}
		if status.Code(got) != codes.FailedPrecondition {
			t.Fatalf("got %v, want code FailedPrecondition", got)
		}
	})
}

func TestTokenizeModelInfoHealth(t *testing.T) {
	r := sharedRunner(t)
	ctx := context.Background()
	tokens, err := r.Tokenize(ctx, &mlxdpb.TokenizeRequest{Text: "Hi", AddSpecialTokens: true})
	if err != nil {
		t.Fatal(err)
	}
	info, err := r.ModelInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.GetArchitecture() != "llama" || info.GetDigest() != r.Ready().Digest {
		t.Errorf("model info %v, ready line %+v", info, r.Ready())
	}
	if ids := tokens.GetIds(); len(ids) == 0 || ids[0] != info.GetBosTokenId() {
		t.Errorf("Tokenize(Hi) with special tokens = %v, want BOS %d first", ids, info.GetBosTokenId())
	}
	if s, err := r.Health(ctx); err != nil || s != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health %v, %v", s, err)
	}
}
