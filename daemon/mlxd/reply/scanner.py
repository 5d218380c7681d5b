"""The streaming core every format parser shares: it cuts the text at the markers the parser's current state
listens for and holds back a tail that could still grow into one, as stop strings do (generation/stops.py).

Cutting does not depend on how the text was split into deltas: a marker is acted on only once no earlier or
longer marker can still form around it, and text is handed on only once no marker can start inside it. A state
that changes on text (a reply starting with "{") gives back the part it did not take, which is scanned again
with the new state's markers.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlxd.reply.parsed import Parsed, ParsedToolCall


def first_marker(text: str, markers: Sequence[str]) -> tuple[int, str] | None:
    """(start, marker) of the earliest marker in `text`; of two starting at one place, the longer."""
    best: tuple[int, str] | None = None
    for marker in markers:
        start = text.find(marker)
        if start >= 0 and (best is None or start < best[0] or (start == best[0] and len(marker) > len(best[1]))):
            best = (start, marker)
    return best


def held_start(text: str, markers: Sequence[str]) -> int:
    """Where the longest tail of `text` that is a proper prefix of some marker begins (len(text) if none)."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return len(text) - longest


class MarkerParser:
    """Base class of the format parsers (a ReplyParser). Subclasses keep a state and say, through the hooks,
    which markers it listens for and what its text and markers do."""

    def __init__(self) -> None:
        self._unscanned = ""
        self._out = Parsed()
        # Set after a marker whose format puts newlines after it (Qwen's "</think>\n\n"): they are dropped.
        self._skip_newlines = False

    # Hooks.
    def _markers(self) -> Sequence[str]:
        """The markers the current state listens for."""
        raise NotImplementedError

    def _on_text(self, text: str) -> str:
        """Handles text that holds none of the current markers; returns the part not taken (non-empty only when
        the state changed on the way, so that it is scanned again)."""
        raise NotImplementedError

    def _on_marker(self, marker: str) -> None:
        raise NotImplementedError

    def _on_end(self, stop_text: str) -> None:
        """The reply ended: complete or give back as text whatever the state still holds."""
        raise NotImplementedError

    # ReplyParser.
    def feed(self, delta: str) -> Parsed:
        self._unscanned += delta
        self._scan(final=False)
        return self._take()

    def finish(self, stop_text: str = "") -> Parsed:
        self._scan(final=True)
        self._on_end(stop_text)
        return self._take()

    # Output, for the subclasses.
    def _emit_text(self, text: str) -> None:
        self._out.text += self._after_newlines(text)

    def _emit_reasoning(self, text: str) -> None:
        self._out.reasoning += self._after_newlines(text)

    def _emit_call(self, call: ParsedToolCall) -> None:
        self._skip_newlines = False
        self._out.tool_calls.append(call)

    def _emit_calls(self, calls: list[ParsedToolCall] | None, raw: str) -> None:
        """The calls a block held, or, when it held none (None: malformed), its raw text as answer text."""
        if calls is None:
            self._emit_text(raw)
            return
        for call in calls:
            self._emit_call(call)

    def _after_newlines(self, text: str) -> str:
        if self._skip_newlines:
            text = text.lstrip("\n")
            self._skip_newlines = not text
        return text

    def _scan(self, final: bool) -> None:
        while self._unscanned:
            buffer = self._unscanned
            markers = self._markers()
            hit = first_marker(buffer, markers)
            hold = len(buffer) if final else held_start(buffer, markers)
            if hit is not None and (final or hit[0] < hold):
                start, marker = hit
                if start:
                    rest = self._on_text(buffer[:start])
                    if rest:  # the state changed inside the text: scan the rest with its markers
                        self._unscanned = rest + buffer[start:]
                        continue
                self._unscanned = buffer[start + len(marker):]
                self._on_marker(marker)
                continue
            self._unscanned = buffer[hold:]
            if hold:
                rest = self._on_text(buffer[:hold])
                if rest:
                    self._unscanned = rest + self._unscanned
                    continue
            return

    def _take(self) -> Parsed:
        out, self._out = self._out, Parsed()
        return out
