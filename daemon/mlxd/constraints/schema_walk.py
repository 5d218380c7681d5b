"""Every keyword of a parsed JSON Schema, wherever it stands: what schema_numbers.py and lone_escapes.py look for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Keywords whose values are instances, not schemas: yielded, never walked into (an enum's object is data).
INSTANCES = ("enum", "const", "default", "examples")


def keywords(schema: Any) -> Iterator[tuple[str, Any]]:
    """(name, value) of each object member met walking the schema, instances' insides left out. A member of
    `properties` is met too (its name is a property's, not a keyword): callers check the value's type. Walked with
    a stack, so any depth json.loads allowed is fine."""
    nodes: list[Any] = [schema]
    while nodes:
        node = nodes.pop()
        if isinstance(node, list):
            nodes.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                if key not in INSTANCES:
                    nodes.append(value)
