"""What a request asks its output to follow: the constraint's kind, its source text and its settings."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

from mlxd.constraints.errors import ConstraintError

ConstraintKind = Literal["json_schema", "json_object", "regex", "lark", "gbnf"]
KINDS: frozenset[str] = frozenset(("json_schema", "json_object", "regex", "lark", "gbnf"))
JSON_KINDS: frozenset[str] = frozenset(("json_schema", "json_object"))

# Enough for a newline and the indentation of pretty-printed JSON a few levels deep, while a model that starts
# emitting blanks between two JSON tokens runs out of room after a few of them instead of looping to max_tokens.
DEFAULT_MAX_WHITESPACE = 8
# A bound on the setting itself: the whitespace regex grows with it, and no JSON needs more between two tokens.
MAX_WHITESPACE_LIMIT = 256


@dataclass(frozen=True)
class ConstraintSpec:
    """One request's constraint. `source` is the JSON Schema text, the regex or the grammar text (empty for
    json_object). `max_whitespace` bounds consecutive whitespace between JSON tokens (DEFAULT_MAX_WHITESPACE when
    None; 0 means compact JSON); other kinds ignore it. `after` is a literal marker before which generation is free
    (free_prefix.py builds it into the grammar)."""

    kind: ConstraintKind
    source: str = ""
    max_whitespace: int | None = None
    after: str = ""
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConstraintError("invalid", f"unknown constraint kind {self.kind!r}; expected one of "
                                             f"{', '.join(sorted(KINDS))}")
        if self.kind == "json_object" and self.source:
            raise ConstraintError("invalid", "json_object takes no source (it means any JSON object)")
        if self.kind != "json_object" and not self.source:
            raise ConstraintError("invalid", f"{self.kind} needs a non-empty source")
        if self.max_whitespace is not None and not 0 <= self.max_whitespace <= MAX_WHITESPACE_LIMIT:
            raise ConstraintError("invalid", f"max_whitespace must be between 0 and {MAX_WHITESPACE_LIMIT}, "
                                             f"not {self.max_whitespace}")
        object.__setattr__(self, "key", self._content_key())

    @property
    def effective_max_whitespace(self) -> int | None:
        """The whitespace bound the grammar gets: None for kinds that are not JSON."""
        if self.kind not in JSON_KINDS:
            return None
        return DEFAULT_MAX_WHITESPACE if self.max_whitespace is None else self.max_whitespace

    def _content_key(self) -> str:
        # Only what changes the compiled grammar: max_whitespace outside JSON does not, so specs that differ only
        # there share one cache entry.
        identity = json.dumps([self.kind, self.source, self.effective_max_whitespace, self.after], ensure_ascii=False)
        return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()
