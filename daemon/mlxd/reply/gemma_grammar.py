"""Lark rules for Gemma 4's argument syntax (`{city:<|"|>Paris<|"|>,days:3}`) that follow a JSON Schema, since
llguidance's %json writes JSON only.

The rules cover what tool schemas mostly say: types, enum and const, properties with required ones (written in
sorted order, as the template's dictsort teaches, and never others), items with minItems/maxItems, string
lengths, anyOf/oneOf (read as anyOf), nullable, and local $ref. A schema keyword outside that set is refused
(ConstraintError) rather than silently not enforced.
"""

from __future__ import annotations

import json
from typing import Any

from mlxd.constraints.errors import ConstraintError
from mlxd.reply.grammar_parts import literal

_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment", "deprecated", "readOnly",
                          "writeOnly", "$schema", "$id", "$defs", "definitions"})
_ENFORCED = frozenset({"type", "enum", "const", "properties", "required", "additionalProperties", "items",
                       "minItems", "maxItems", "minLength", "maxLength", "anyOf", "oneOf", "nullable", "$ref"})
_NUMBER = {"integer": "/-?(0|[1-9][0-9]*)/", "number": "/-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?/"}
_KEY = "/[A-Za-z_][A-Za-z0-9_]*/"
_ANY_TEXT = "/(.|\\n)*/"


class GemmaArguments:
    """Collects the rules for the arguments of one or more functions; `quote` is the rule text for <|"|>."""

    def __init__(self, quote: str, prefix: str) -> None:
        self.quote = quote
        self.prefix = prefix
        self.rules: dict[str, str] = {}
        self._root: dict[str, Any] = {}
        self._function = ""
        self._refs: dict[str, str] = {}
        self._count = 0

    def arguments(self, function: str, schema: dict[str, Any]) -> str:
        """The rule for a call's braces and what they hold."""
        self._root, self._function, self._refs = schema, function, {}
        if schema.get("type", "object") != "object" or {"anyOf", "oneOf", "$ref"} & set(schema):
            self._refuse("parameters that are not one object schema")
        return self.value({**schema, "type": "object"})

    def value(self, schema: Any) -> str:
        """A rule name for the values valid under `schema`."""
        if schema is True or schema == {}:
            return self._any()
        if not isinstance(schema, dict):
            self._refuse(f"schema {json.dumps(schema)[:40]}")
        unknown = sorted(set(schema) - _ANNOTATIONS - _ENFORCED)
        if unknown:
            self._refuse(f"keyword {unknown[0]!r}")
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "enum" in schema or "const" in schema:
            values = schema["enum"] if "enum" in schema else [schema["const"]]
            body = " | ".join(literal(_gemma_text(v, self.quote)) if not isinstance(v, str)
                              else f"{self.quote} {literal(v)} {self.quote}" for v in values)
            return self._rule(body or self._refuse("an empty enum"))
        if "anyOf" in schema or "oneOf" in schema:
            branches = schema.get("anyOf", schema.get("oneOf"))
            alternatives = [self.value(branch) for branch in branches]
        else:
            kinds = schema.get("type", _implied_type(schema))
            alternatives = [self._typed(kind, schema) for kind in (kinds if isinstance(kinds, list) else [kinds])]
        if schema.get("nullable"):
            alternatives.append('"null"')
        return self._rule(" | ".join(alternatives))

    def _typed(self, kind: Any, schema: dict[str, Any]) -> str:
        if kind == "string":
            low, high = schema.get("minLength", 0), schema.get("maxLength")
            text = self._rule(f"/(.|\\n){{{low},{'' if high is None else high}}}/")
            return self._rule(f"{self.quote} {text} {self.quote}")
        if kind in _NUMBER:
            return self._rule(_NUMBER[kind])
        if kind == "boolean":
            return self._rule('"true" | "false"')
        if kind == "null":
            return self._rule('"null"')
        if kind == "array":
            return self._array(schema)
        if kind == "object":
            return self._object(schema)
        if kind is None:
            return self._any()
        return self._refuse(f"type {kind!r}")

    def _array(self, schema: dict[str, Any]) -> str:
        item = self.value(schema.get("items", True))
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if high == 0:
            return self._rule('"[" "]"')
        more = f'("," {item}){{{max(low - 1, 0)},{"" if high is None else high - 1}}}'
        items = f"{item} {more}" if low else f"({item} {more})?"
        return self._rule(f'"[" {items} "]"')

    def _object(self, schema: dict[str, Any]) -> str:
        properties = schema.get("properties", {})
        if not properties:
            extra = schema.get("additionalProperties", True)
            if extra is False:
                return self._rule('"{" "}"')
            member = f'{self._rule(_KEY)} ":" {self.value(extra)}'
            return self._rule(f'"{{" ({member} ("," {member})*)? "}}"')
        required = set(schema.get("required", []))
        members = [(f"{literal(key + ':')} {self.value(properties[key])}", key in required)
                   for key in sorted(properties)]
        return self._rule(f'"{{" {_in_order(members)} "}}"')

    def _ref(self, ref: Any) -> str:
        if ref in self._refs:
            return self._refs[ref]
        if not isinstance(ref, str) or not ref.startswith("#"):
            return self._refuse(f"$ref {ref!r}")
        target: Any = self._root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return self._refuse(f"$ref {ref!r} (it points nowhere)")
            target = target[part]
        name = self._refs[ref] = self._name()  # before the target's rules: a schema may refer to itself
        self.rules[name] = self.value(target)
        return name

    def _any(self) -> str:
        name = f"{self.prefix}any"
        if name not in self.rules:
            self.rules[name] = ""  # claimed first: the rule refers to itself
            string = f"{self.quote} {self._rule(_ANY_TEXT)} {self.quote}"
            member = f'{self._rule(_KEY)} ":" {name}'
            self.rules[name] = " | ".join([string, self._rule(_NUMBER["number"]), '"true"', '"false"', '"null"',
                                           f'"[" ({name} ("," {name})*)? "]"',
                                           f'"{{" ({member} ("," {member})*)? "}}"'])
        return name

    def _rule(self, body: str) -> str:
        name = self._name()
        self.rules[name] = body
        return name

    def _name(self) -> str:
        self._count += 1
        return f"{self.prefix}{self._count}"

    def _refuse(self, what: str) -> str:
        raise ConstraintError("invalid", f"a forced gemma4 tool call cannot enforce {what} in the parameters of "
                                         f"function {self._function!r}")


def _implied_type(schema: dict[str, Any]) -> str | None:
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return None


def _in_order(members: list[tuple[str, bool]]) -> str:
    """Comma-separated members in this order, the required ones always, the others optionally."""
    def after(i: int) -> str:
        return " ".join(f'("," {m})' if needed else f'("," {m})?' for m, needed in members[i:])

    def first(i: int) -> str:
        if i == len(members):
            return ""
        member, needed = members[i]
        here = f"{member} {after(i + 1)}".strip()
        if needed:
            return here
        rest = first(i + 1)
        return f"({here} | {rest})" if rest else f"({here})?"

    return first(0)


def _gemma_text(value: Any, quote: str) -> str:
    """A non-string enum value as the template prints it (format_argument)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    raise ConstraintError("invalid", f"a forced gemma4 tool call cannot enforce the enum value {value!r}")
