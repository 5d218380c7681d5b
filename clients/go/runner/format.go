package runner

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/mlxd/mlxd/clients/go/mlxdpb"
)

// FormatConstraint turns an Ollama-style `format` into the constraint mlxd enforces: empty or null means none,
// the string "json" means any JSON object, and a JSON object is a JSON Schema (sent as it is; the daemon
// answers INVALID_ARGUMENT, with llguidance's message, for one it cannot compile). Anything else is an error
// here, so a host never drops a format silently.
func FormatConstraint(format json.RawMessage) (*mlxdpb.Constraint, error) {
	trimmed := bytes.TrimSpace(format)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return nil, nil
	}
	var word string
	if err := json.Unmarshal(trimmed, &word); err == nil {
		switch word {
		case "":
			return nil, nil
		case "json":
			return &mlxdpb.Constraint{Kind: &mlxdpb.Constraint_JsonObject{JsonObject: &mlxdpb.JsonObject{}}}, nil
		}
		return nil, fmt.Errorf("runner: format %q is neither \"json\" nor a JSON Schema object", word)
	}
	if trimmed[0] != '{' || !json.Valid(trimmed) {
		return nil, fmt.Errorf("runner: format must be \"json\" or a JSON Schema object, not %.80s", trimmed)
	}
	return &mlxdpb.Constraint{Kind: &mlxdpb.Constraint_JsonSchema{JsonSchema: string(trimmed)}}, nil
}
