"""Feeding a reply to a parser in chosen deltas and gathering what comes back."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from mlxd.reply import Parsed, ReplyFormat

Call = tuple[str, dict, str | None]  # name, arguments, id (None: a generated one)


@dataclass
class Gathered:
    """Everything a parser returned for one reply, and the pieces of text and reasoning feed() handed out."""

    text: str = ""
    reasoning: str = ""
    calls: list = field(default_factory=list)
    fed_pieces: list[str] = field(default_factory=list)

    def add(self, parsed: Parsed, from_feed: bool) -> None:
        self.text += parsed.text
        self.reasoning += parsed.reasoning
        self.calls.extend(parsed.tool_calls)
        if from_feed:
            self.fed_pieces += [piece for piece in (parsed.text, parsed.reasoning) if piece]

    def outcome(self) -> tuple[str, str, list[tuple[str, dict]]]:
        """What must not depend on the split: generated ids differ from run to run, so they are left out."""
        return self.text, self.reasoning, [(call.name, json.loads(call.arguments)) for call in self.calls]


def parse(fmt: ReplyFormat, prompt: str, deltas: Sequence[str], stop: str = "", tools: bool = True) -> Gathered:
    parser = fmt.parser(prompt, tools)
    gathered = Gathered()
    for delta in deltas:
        gathered.add(parser.feed(delta), from_feed=True)
    gathered.add(parser.finish(stop), from_feed=False)
    return gathered


def splits(text: str, seed: int = 0, random_splits: int = 20) -> Iterator[list[str]]:
    """Every split of `text` in two, one-character deltas, and random splits into several pieces."""
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]
    yield list(text)
    rng = random.Random(seed)
    for _ in range(random_splits):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(2, 8))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
