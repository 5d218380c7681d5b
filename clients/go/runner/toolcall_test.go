package runner

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlxd/mlxd/clients/go/mlxdpb"
)

// A ChatML template in the Hermes style: tools in the system turn, calls as <tool_call>{json}</tool_call>.
const hermesTemplate = `{%- if tools %}<|im_start|>system
Call a function as <tool_call>{"name": ..., "arguments": ...}</tool_call>. <tools>
{%- for tool in tools %}{{ tool | tojson }}{% endfor %}</tools><|im_end|>
{% endif %}
{%- for message in messages %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}<|im_start|>assistant
`

// A host asks for one named function through the runner: the daemon constrains the call, parses it, and
// streams it as a typed ToolCall whose arguments follow the function's schema; the turn ends with TOOL_CALLS.
// (The tiny random model takes all the whitespace JSON allows between tokens, hence the room in max_tokens.)
func TestNamedToolCallThroughTheRunner(t *testing.T) {
	r := sharedRunner(t)
	parameters := `{"type": "object", "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 8}},
	                "required": ["city"], "additionalProperties": false}`
	chat := &mlxdpb.ChatMessages{
		Messages:     []*mlxdpb.ChatMessage{{Role: "user", Content: "Weather in Paris?"}},
		ChatTemplate: hermesTemplate,
		Tools: []*mlxdpb.Tool{{Definition: &mlxdpb.Tool_Function{Function: &mlxdpb.Function{
			Name: "get_weather", Description: "Current weather", Parameters: parameters}}}},
		ToolChoice: &mlxdpb.ToolChoice{Choice: &mlxdpb.ToolChoice_Function{Function: "get_weather"}},
		ParseReply: true,
	}
	req := &mlxdpb.GenerateRequest{Input: &mlxdpb.GenerateRequest_Chat{Chat: chat}, Options: greedy(400)}
	got, err := collect(t, r, context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got.final.GetFinishReason() != mlxdpb.FinishReason_FINISH_REASON_TOOL_CALLS || len(got.toolCalls) != 1 {
		t.Fatalf("want one tool call and TOOL_CALLS, got %v calls, final %v, text %q", got.toolCalls, got.final, got.text)
	}
	call := got.toolCalls[0]
	var args struct {
		City *string `json:"city"`
	}
	if err := json.Unmarshal([]byte(call.GetArguments()), &args); err != nil || call.GetName() != "get_weather" ||
		args.City == nil || utf8.RuneCountInString(*args.City) < 1 || utf8.RuneCountInString(*args.City) > 8 || call.GetId() == "" {
		t.Fatalf("call %v does not follow the schema (%v)", call, err)
	}
	if strings.Contains(got.text, "<tool_call>") {
		t.Fatalf("the call's markers leaked into the text: %q", got.text)
	}
	chat.ToolChoice = &mlxdpb.ToolChoice{Choice: &mlxdpb.ToolChoice_Function{Function: "get_time"}}
	if _, err := collect(t, r, context.Background(), req); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("an unknown function gave %v, want InvalidArgument", err)
	}
}
