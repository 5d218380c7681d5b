"""Incremental detokenization: turn a stream of token ids into text deltas that are final.

Decoding a token alone is wrong in general (SentencePiece strips the first token's leading space, a UTF-8
character can span several byte tokens), and decoding everything each step costs O(n). So, as in
text-generation-inference, we decode a short window: a few context tokens already emitted, then the pending
ones, and emit the part of the window's text beyond the context's text once it no longer ends in U+FFFD.

Byte-fallback pieces (`<0xE4>`) need one more rule: tokenizers decodes a whole run of them at once, and as one
U+FFFD per byte if any byte of the run is invalid, so a run's text is final only once the run has ended.
"""

from __future__ import annotations

from collections.abc import Callable, Set

_REPLACEMENT = "\ufffd"
# Pending tokens after which we stop waiting for a character to complete: UTF-8 needs at most 4 bytes, so only
# text that is garbage anyway (invalid bytes, or a U+FFFD the model really produced) waits this long.
_MAX_PENDING = 16
# Context tokens kept before the pending ones; more are kept only while the context decodes to "" (e.g. a
# special token skipped by decode), so a leading space after it is not stripped as if it began the text.
_MAX_CONTEXT = 4


class StreamingDetokenizer:
    """`add(token_id)` returns the text that became final with this token, `finish()` the rest; together they
    concatenate to exactly `decode(all_ids)`. Cost per token is a few decodes of a bounded window.

    held_ids: ids whose text may still change with the tokens after them, i.e. the byte-fallback pieces
    (`Tokenizer.byte_fallback_ids`); text is held while the window ends with one, for at most _MAX_PENDING.
    """

    def __init__(self, decode: Callable[[list[int]], str], *, held_ids: Set[int] = frozenset()) -> None:
        self._decode = decode
        self._held_ids = held_ids
        self._ids: list[int] = []   # the window: context tokens, then pending ones
        self._context = 0           # how many of _ids are context
        self._emitted = 0           # characters of decode(_ids) already emitted

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if not text.endswith(_REPLACEMENT) and token_id not in self._held_ids:
            delta = text[self._emitted:]
            self._slide(len(self._ids))
            return delta
        if len(self._ids) - self._context <= _MAX_PENDING:
            return ""  # maybe a character cut between tokens: wait for its next bytes
        return self._release_garbage(text)

    def finish(self) -> str:
        """The remaining text; the detokenizer is empty afterwards."""
        delta = self._decode(self._ids)[self._emitted:] if self._ids else ""
        self._ids, self._context, self._emitted = [], 0, 0
        return delta

    def _slide(self, end: int) -> None:
        """Make _ids[:end] emitted: keep its last token(s) as context, drop what is before."""
        if self._ids[end - 1] in self._held_ids:
            # Cut inside a byte run (a forced release): a piece of a run would decode differently, and what
            # follows starts at a character boundary, so no context is needed.
            self._ids, self._context, self._emitted = self._ids[end:], 0, 0
            return
        start = end - 1
        context_text = self._decode(self._ids[start:end])
        while not context_text and start > 0 and end - start < _MAX_CONTEXT:
            start -= 1
            context_text = self._decode(self._ids[start:end])
        self._ids = self._ids[start:]
        self._context = end - start
        self._emitted = len(context_text)

    def _release_garbage(self, text: str) -> str:
        """Too long without a clean ending: emit up to a recent token boundary whose text is final. Best is one
        that decodes cleanly (a character is at most 4 bytes, so one is near unless the bytes are invalid);
        else one whose text is a prefix of the window's with more after it (invalid bytes stay U+FFFD)."""
        ends = range(len(self._ids) - 1, max(self._context, len(self._ids) - _MAX_CONTEXT - 2), -1)
        heads = [(end, self._decode(self._ids[:end])) for end in ends]
        chosen = next((c for c in heads if not c[1].endswith(_REPLACEMENT)), None)
        if chosen is None:
            chosen = next((c for c in heads if len(c[1]) < len(text) and text.startswith(c[1])), None)
        if chosen is None:  # a decoder that rewrites whole byte runs: give up exactness to keep cost bounded
            chosen = (len(self._ids), text)
        end, head = chosen
        delta = head[self._emitted:]
        self._slide(end)
        return delta
