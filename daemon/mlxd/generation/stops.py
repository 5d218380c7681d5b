"""Stop strings over streamed text: emit only text that can no longer become part of a stop string.

An Aho-Corasick automaton over the stop strings keeps, between feeds, the longest suffix of the text seen so
far that is a prefix of some stop; that suffix is exactly what must be held back. Each character costs O(1)
amortized, however many stop strings there are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from mlxd.errors import InvalidRequest


def validate_stops(stops: Sequence[str], max_count: int, max_len: int) -> None:
    """Reject empty stop strings, more than max_count of them, or one longer than max_len characters."""
    if len(stops) > max_count:
        raise InvalidRequest(f"stop has {len(stops)} strings; at most {max_count} are allowed")
    for i, stop in enumerate(stops):
        if not stop:
            raise InvalidRequest(f"stop[{i}] is empty")
        if len(stop) > max_len:
            raise InvalidRequest(f"stop[{i}] has {len(stop)} characters; at most {max_len} are allowed")


class StopStrings:
    """The stop strings of one request compiled into an automaton: a trie with failure links. Immutable once
    built, so it is built where the request is prepared (off the worker thread) and matchers only read it.
    Node 0 is the root; depth[n] is the length of n's string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.strings = tuple(stops)
        self.max_len = max((len(s) for s in stops), default=0)
        self.goto: list[dict[str, int]] = [{}]
        self.depth = [0]
        terminal = [False]
        for stop in stops:
            node = 0
            for ch in stop:
                nxt = self.goto[node].get(ch)
                if nxt is None:
                    nxt = len(self.goto)
                    self.goto[node][ch] = nxt
                    self.goto.append({})
                    self.depth.append(self.depth[node] + 1)
                    terminal.append(False)
                node = nxt
            terminal[node] = True
        self.fail = [0] * len(self.goto)
        # match_len[n]: length of the longest stop that is a suffix of n's string (0 if none).
        self.match_len = [d if t else 0 for d, t in zip(self.depth, terminal)]
        queue = deque(self.goto[0].values())
        while queue:  # breadth-first, so a node's failure target is finished before the node
            node = queue.popleft()
            if not self.match_len[node]:
                self.match_len[node] = self.match_len[self.fail[node]]
            for ch, child in self.goto[node].items():
                f = self.fail[node]
                while f and ch not in self.goto[f]:
                    f = self.fail[f]
                self.fail[child] = self.goto[f].get(ch, 0)
                queue.append(child)

    def step(self, node: int, ch: str) -> int:
        while node and ch not in self.goto[node]:
            node = self.fail[node]
        return self.goto[node].get(ch, 0)


class StopMatcher:
    """Feed text deltas; get back what is safe to emit and the stop string once one appears.

    When several stops occur in what has been fed, the one starting earliest wins (tie: the longest). After a
    match the text after it is dropped and the matcher starts over empty.
    """

    def __init__(self, stops: StopStrings | Sequence[str]) -> None:
        self._auto = stops if isinstance(stops, StopStrings) else StopStrings(stops)
        self._max_len = self._auto.max_len
        self._node = 0
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Return (text safe to emit now, matched stop or None)."""
        if not self._max_len:
            return text, None
        buf = self._held + text
        node, base = self._node, len(self._held)
        best_start, best_len = -1, 0
        for i in range(len(text)):
            end = base + i + 1
            if best_len and end > best_start + self._max_len:
                break  # any later match would start after the one found
            node = self._auto.step(node, text[i])
            length = self._auto.match_len[node]
            # The longest stop ending here starts earliest among those ending here.
            if length and (not best_len or end - length < best_start
                           or (end - length == best_start and length > best_len)):
                best_start, best_len = end - length, length
        if best_len:
            self._node, self._held = 0, ""
            return buf[:best_start], buf[best_start:best_start + best_len]
        keep = self._auto.depth[node]
        self._node = node
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], None

    def flush(self) -> str:
        """At the end of generation with no stop matched: the held-back text, which is final now."""
        held, self._held, self._node = self._held, "", 0
        return held
