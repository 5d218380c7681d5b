"""`after`: generation is free until a literal marker (a reasoning model's `</think>`), then the constraint applies.

Expressed inside the grammar rather than around it, so llguidance's one matcher follows the whole output: a lazy
lexeme that ends at the marker's first occurrence, a little whitespace (reasoning models put a newline or two
after the marker), then the constraint's grammar by reference. The marker may fall anywhere inside a token, and
end-of-sequence stays forbidden until the constrained part is complete.
"""

from __future__ import annotations

import json

from mlxd.constraints.errors import ConstraintError

# Longer markers are no reasoning delimiter anyone uses; the bound keeps the lexeme's regex small.
MAX_MARKER_CHARS = 64
# Whitespace allowed between the marker and the constrained part.
MAX_GAP_WHITESPACE = 16
_REGEX_SPECIAL = set("\\.^$|?*+()[]{}/-#&~ ")


def free_until(grammar: str, marker: str, marker_token: int | None = None) -> str:
    """llguidance's grammar (its JSON form, or a Lark source) for: anything up to and including the first
    `marker`, up to MAX_GAP_WHITESPACE blanks, then `grammar`. marker_token: the marker's id when the tokenizer
    holds it as one added token (Qwen 3's </think>); llguidance treats such a token as special, which no regex
    matches, so the free text may end with that token as well as with the marker spelled out in pieces."""
    if len(marker) > MAX_MARKER_CHARS:
        raise ConstraintError("invalid", f"after is {len(marker)} characters; the limit is {MAX_MARKER_CHARS}")
    if not marker.strip():
        raise ConstraintError("invalid", "after must hold a visible marker, not only whitespace")
    top = json.loads(grammar) if grammar.lstrip().startswith("{") else {"grammars": [{"lark_grammar": grammar}]}
    answer = top["grammars"][0]
    answer["name"] = "constrained"
    escaped = "".join("\\" + c if c in _REGEX_SPECIAL else c for c in marker)
    free_text = f"free_text[lazy]: /(.|\\n)*{escaped}/\n"
    if marker_token is not None:
        free_text = (f"free_text: spelled | before_token <[{marker_token}]>\n"
                     f"spelled[lazy]: /(.|\\n)*{escaped}/\n"
                     f"before_token: /(.|\\n)*/\n")
    free = {"name": "free_prefix", "lark_grammar": (
        f"start: free_text gap @constrained\n"
        f"{free_text}"
        f"gap: /[ \\t\\r\\n]{{0,{MAX_GAP_WHITESPACE}}}/\n")}
    top["grammars"] = [free, *top["grammars"]]
    return json.dumps(top)
