r"""Regexes that end in a lone backslash, an escape of nothing: invalid in every dialect, yet llguidance (1.9.1)
compiles them as the regex without it. `grammar_from_regex("ab\\")` wraps the source in a Lark terminal `/ab\/`,
whose backslash then escapes the closing slash, and the request was served under `ab`; a JSON Schema `pattern`
ending so is likewise served without it (the gRPC constraint tests pinned the first, session 48 the second). Both
are refused with INVALID_ARGUMENT instead.
"""

from __future__ import annotations

from typing import Any

from mlxd.constraints.schema_walk import keywords


def ends_in_lone_backslash(pattern: str) -> bool:
    """Whether `pattern` ends in an odd run of backslashes (the last escapes nothing)."""
    return (len(pattern) - len(pattern.rstrip("\\"))) % 2 == 1


def schema_patterns(schema: Any) -> list[str]:
    """The regexes of a parsed JSON Schema: `pattern` values and `patternProperties` names, wherever they stand in
    it (enum, const, default and examples hold instances: left out)."""
    found: list[str] = []
    for key, value in keywords(schema):
        if key == "pattern" and isinstance(value, str):
            found.append(value)
        elif key == "patternProperties" and isinstance(value, dict):
            found.extend(value)
    return found
