package runner

import (
	"context"
	"encoding/json"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlxd/mlxd/clients/go/mlxdpb"
)

func TestFormatConstraintReadsOllamasFormat(t *testing.T) {
	for _, tc := range []struct {
		format string
		want   string // the oneof's case, or "" for none
		err    bool
	}{
		{"", "", false}, {"null", "", false}, {`""`, "", false},
		{`"json"`, "json_object", false},
		{`{"type": "object", "properties": {"a": {"type": "integer"}}}`, "json_schema", false},
		{`"yaml"`, "", true}, {`[1, 2]`, "", true}, {`{"type": `, "", true},
	} {
		c, err := FormatConstraint(json.RawMessage(tc.format))
		if (err != nil) != tc.err {
			t.Fatalf("format %s: error %v, want error %v", tc.format, err, tc.err)
		}
		got := ""
		switch c.GetKind().(type) {
		case *mlxdpb.Constraint_JsonObject:
			got = "json_object"
		case *mlxdpb.Constraint_JsonSchema:
			got = "json_schema"
			if c.GetJsonSchema() != tc.format {
				t.Fatalf("schema sent as %q, want %q", c.GetJsonSchema(), tc.format)
			}
		}
		if got != tc.want {
			t.Fatalf("format %s: constraint %q, want %q", tc.format, got, tc.want)
		}
	}
}

// A schema sent through the runner to the real daemon: the output validates (a bounded schema, so the tiny
// random model completes it), and a schema the daemon cannot compile is INVALID_ARGUMENT.
func TestFormatSchemaIsEnforcedByTheDaemon(t *testing.T) {
	r := sharedRunner(t)
	schema := `{"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
	            "required": ["n"], "additionalProperties": false}`
	c, err := FormatConstraint(json.RawMessage(schema))
	if err != nil {
		t.Fatal(err)
	}
	c.MaxWhitespace = 1
	options := greedy(40)
	options.Constraint = c
	got, err := collect(t, r, context.Background(), tokensRequest([]int32{1, 5, 9}, options))
	if err != nil {
		t.Fatal(err)
	}
	var value struct {
		N *int `json:"n"`
	}
	if err := json.Unmarshal([]byte(got.text), &value); err != nil || value.N == nil || *value.N < 0 || *value.N > 9 {
		t.Fatalf("output %q does not follow the schema (%v)", got.text, err)
	}
	if !got.final.GetConstraintComplete() {
		t.Fatalf("final says the output is incomplete: %v", got.final)
	}
	options.Constraint = &mlxdpb.Constraint{Kind: &mlxdpb.Constraint_JsonSchema{JsonSchema: `{"type": "nonsense"}`}}
	if _, err := collect(t, r, context.Background(), tokensRequest([]int32{1, 5, 9}, options)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a bad schema gave %v, want InvalidArgument", err)
	}
}
