"""Pieces the forced tool-call grammars share: the functions a request offers, markers written as llguidance
wants them, and call objects as inline JSON Schemas (%json) with a bound on their whitespace."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlxd.constraints.compiler import json_whitespace
from mlxd.constraints.errors import ConstraintError
from mlxd.constraints.spec import DEFAULT_MAX_WHITESPACE
from mlxd.reply.formats import ReplyFormat

# OpenAI's rule for function names, with "." for namespaced tools.
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# The JSON whitespace llguidance allows, bounded as json_schema constraints bound it, so a model cannot loop on
# blanks inside a forced call.
_WHITESPACE = json_whitespace(DEFAULT_MAX_WHITESPACE)


@dataclass(frozen=True)
class Function:
    name: str
    parameters: dict[str, Any]  # a JSON Schema for the arguments object


def offered_functions(tools: list[dict[str, Any]], function: str | None) -> list[Function]:
    """The functions a forced call may pick: every tool, or only `function`. ConstraintError ("invalid") for
    a malformed tool or a function the tools lack."""
    if not tools:
        raise ConstraintError("invalid", "a forced tool call needs at least one tool")
    functions: list[Function] = []
    for index, tool in enumerate(tools):
        spec = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(spec, Mapping) or tool.get("type", "function") != "function":
            raise ConstraintError("invalid", f"tools[{index}] is not a function tool")
        name = spec.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            raise ConstraintError("invalid", f"tools[{index}] has no valid function name: {name!r}")
        parameters = spec.get("parameters", {"type": "object"})
        if parameters is True:
            parameters = {}
        if not isinstance(parameters, dict):
            raise ConstraintError("invalid", f"the parameters of function {name!r} are not a JSON Schema object")
        functions.append(Function(name, parameters))
    if function is None:
        return functions
    chosen = [f for f in functions if f.name == function]
    if not chosen:
        raise ConstraintError("invalid", f"tool_choice names function {function!r}, which is not among the tools")
    return chosen[:1]


def literal(text: str) -> str:
    """A Lark string literal for `text` (JSON's escapes are Lark's)."""
    return json.dumps(text, ensure_ascii=False)


def marker(fmt: ReplyFormat, text: str) -> str:
    """A marker in a rule: by id where the tokenizer holds it as one token (llguidance treats every added token as
    special, and a literal would make the model spell it out), else as text."""
    token = fmt.token_id(text)
    return f"<[{token}]>" if token is not None else literal(text)


def json_rule(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": _WHITESPACE}, ensure_ascii=False)


def arguments_schema(function: Function) -> dict[str, Any]:
    """The function's parameters as the root of a %json: always an object (a schema that says nothing, {}, would
    let a string through, and arguments are an object), and without "$schema", which means nothing nested."""
    schema = {key: value for key, value in function.parameters.items() if key != "$schema"}
    schema.setdefault("type", "object")
    return schema


def call_object_schema(function: Function, arguments_key: str, at: str = "#") -> dict[str, Any]:
    """{"name": <the name>, arguments_key: <arguments>} in that order, nothing else, for a %json whose root holds
    it at the pointer `at`. The parameters move down, so their local "$ref"s are rewritten to where they now are."""
    nested = _rebase_refs(copy.deepcopy(arguments_schema(function)), f"{at}/properties/{arguments_key}")
    return {"type": "object",
            "properties": {"name": {"const": function.name}, arguments_key: nested},
            "required": ["name", arguments_key], "additionalProperties": False}


def _rebase_refs(node: Any, base: str) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#"):
                node[key] = base + value[1:]
            else:
                _rebase_refs(value, base)
    elif isinstance(node, list):
        for item in node:
            _rebase_refs(item, base)
    return node
