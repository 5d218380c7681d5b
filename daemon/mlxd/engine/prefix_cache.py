"""KV-cache snapshots keyed by token prefix, so a prompt that repeats a stored prefix skips its prefill.

Snapshots live in a radix tree over token ids: each edge holds a run of tokens, each node the prefix spelled by
the edges above it and at most one snapshot of exactly that prefix. A lookup walks the prompt down the tree once
(a dict step per branch, a C-level tuple comparison per edge), so it costs O(prompt length) at worst.

A snapshot of m tokens serves a prompt sharing only its first n < m tokens by trimming, but only when it is
"trimmable": every layer still holds all m positions. Full layers always do; a sliding-window layer only while
m <= window. A snapshot that has rotated serves only a prompt that starts with all of its m tokens, and so does
every snapshot of a model with recurrent layers (models/recurrent_cache.py): a recurrent state cannot be rewound,
so the longest snapshot whose tokens all start the prompt serves it.

Memory is the bytes of the stored arrays, bounded by a budget with least-recently-used eviction. Everything runs
on the one MLX worker thread, so there are no locks.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx

from mlxd.models.cache import Snapshot

_BLOCK = 64  # tokens compared per slice while looking for where an edge and a prompt part


@dataclass(eq=False)
class _Entry:
    node: _Node
    layers: list[Snapshot]
    nbytes: int
    trimmable: bool  # can serve any shorter prefix of its tokens


class _Node:
    __slots__ = ("edge", "parent", "children", "entry", "trimmable")

    def __init__(self, edge: tuple[int, ...], parent: _Node | None) -> None:
        self.edge = edge                          # tokens from the parent to this node
        self.parent = parent
        self.children: dict[int, _Node] = {}      # keyed by the first token of the child's edge
        self.entry: _Entry | None = None          # snapshot of exactly the prefix ending here
        self.trimmable = 0                        # trimmable entries in this subtree, this node's included


def _common_prefix(edge: tuple[int, ...], tokens: tuple[int, ...], start: int) -> int:
    """How many leading tokens of `edge` equal tokens[start:]."""
    n = min(len(edge), len(tokens) - start)
    if edge[:n] == tokens[start:start + n]:
        return n
    i = 0
    while edge[i:i + _BLOCK] == tokens[start + i:start + i + _BLOCK]:
        i += _BLOCK
    while edge[i] == tokens[start + i]:
        i += 1
    return i


class PrefixCache:
    """Stores per-layer KV snapshots of token prefixes within `budget_bytes`; 0 disables it."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"prefix cache budget must be >= 0 bytes, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.hits = 0
        self.misses = 0
        self.hit_tokens = 0  # prompt tokens served from snapshots, summed over hits
        self.clear()

    @property
    def bytes_used(self) -> int:
        return self._bytes

    @property
    def entries(self) -> int:
        return len(self._lru)

    def clear(self) -> None:
        """Drop every snapshot; the counters keep counting."""
        self._root = _Node((), None)
        self._lru: collections.OrderedDict[_Entry, None] = collections.OrderedDict()  # oldest first
        self._bytes = 0

    # -- lookup -----------------------------------------------------------------------------------------------

    def lookup(self, tokens: Sequence[int], make_cache: Callable[[], list]) -> tuple[int, list | None]:
        """The longest stored prefix usable for `tokens`: (n, per-layer caches from `make_cache()` holding exactly
        positions 0..n-1, independent of the stored snapshot so the caller may extend them), or (0, None).

        The caller passes prompt[:-1] (the last prompt token always runs through decode). Nothing is evaluated:
        the caches hold lazy slices of the evaluated snapshot arrays.
        """
        n, entry = self._find(tuple(tokens)) if self._lru else (0, None)
        if entry is None:
            self.misses += 1
            return 0, None
        caches = make_cache()
        if len(caches) != len(entry.layers):
            raise ValueError(f"make_cache() gave {len(caches)} layers; the snapshot has {len(entry.layers)}")
        for cache, layer in zip(caches, entry.layers):
            cache.restore(layer, n)
        self._lru.move_to_end(entry)
        self.hits += 1
        self.hit_tokens += n
        return n, caches

    def _find(self, tokens: tuple[int, ...]) -> tuple[int, _Entry | None]:
        node, depth = self._root, 0
        best_n, best = 0, None            # deepest snapshot whose tokens all start the prompt
        trim_n, trim_node = 0, self._root  # deepest point below which a trimmable snapshot lies
        while True:
            if node.entry is not None:
                best_n, best = depth, node.entry
            if node.trimmable:
                trim_n, trim_node = depth, node
            if depth == len(tokens):
                break
            child = node.children.get(tokens[depth])
            if child is None:
                break
            k = _common_prefix(child.edge, tokens, depth)
            if k < len(child.edge):
                if child.trimmable:
                    trim_n, trim_node = depth + k, child
                break
            node, depth = child, depth + k
        if trim_n > best_n:
            return trim_n, self._trimmable_entry(trim_node)
        return best_n, best

    @staticmethod
    def _trimmable_entry(node: _Node) -> _Entry:
        """A trimmable snapshot in the subtree of `node` (which has at least one)."""
        while node.entry is None or not node.entry.trimmable:
            node = next(child for child in node.children.values() if child.trimmable)
        return node.entry

    # -- insert -----------------------------------------------------------------------------------------------

    def insert(self, tokens: Sequence[int], caches: list, wait: bool = True) -> None:
        """Store a snapshot of `caches` (one per layer, batch size 1), which hold exactly len(tokens) positions,
        the KV of `tokens`. The snapshot copies what it keeps, so the caller may go on writing into `caches`.
        Without `wait` the copies are only queued (mx.async_eval): the caller's device work is not waited for."""
        if self.budget_bytes == 0 or not tokens:
            return
        tokens = tuple(tokens)
        wrong = [c.offset for c in caches if c.offset != len(tokens)]
        if wrong:
            raise ValueError(f"a cache holds {wrong[0]} positions, not the {len(tokens)} tokens to store")
        covering = self._covering(tokens)
        if covering is not None:  # already stored, or a longer trimmable snapshot serves it
            self._lru.move_to_end(covering)
            return
        layers = [c.snapshot() for c in caches]
        nbytes = sum(layer.nbytes for layer in layers)
        if nbytes > self.budget_bytes:
            return
        while self._bytes + nbytes > self.budget_bytes:
            self._remove(next(iter(self._lru)))
        (mx.eval if wait else mx.async_eval)([layer.arrays for layer in layers])
        node = self._make_node(tokens)
        entry = _Entry(node, layers, nbytes, all(layer.trimmable for layer in layers))
        node.entry = entry
        self._lru[entry] = None
        self._bytes += nbytes
        if entry.trimmable:
            above: _Node | None = node
            while above is not None:
                above.trimmable += 1
                above = above.parent
            # Shorter snapshots of a prefix of these tokens are now redundant: this one trims to any of them.
            above = node.parent
            while above is not None:
                parent = above.parent  # removing the entry may merge `above` into its child, never drop `parent`
                if above.entry is not None:
                    self._remove(above.entry)
                above = parent

    def _covering(self, tokens: tuple[int, ...]) -> _Entry | None:
        """The snapshot of exactly `tokens`, or a trimmable one of a longer sequence that starts with them."""
        node, depth = self._root, 0
        while depth < len(tokens):
            child = node.children.get(tokens[depth])
            if child is None:
                return None
            k = _common_prefix(child.edge, tokens, depth)
            if k < len(child.edge):
                return self._trimmable_entry(child) if depth + k == len(tokens) and child.trimmable else None
            node, depth = child, depth + k
        if node.entry is not None:
            return node.entry
        return self._trimmable_entry(node) if node.trimmable else None

    def _make_node(self, tokens: tuple[int, ...]) -> _Node:
        """The node for exactly `tokens`, splitting an edge or adding a leaf as needed."""
        node, depth = self._root, 0
        while depth < len(tokens):
            child = node.children.get(tokens[depth])
            if child is None:
                leaf = _Node(tokens[depth:], node)
                node.children[tokens[depth]] = leaf
                return leaf
            k = _common_prefix(child.edge, tokens, depth)
            if k < len(child.edge):
                mid = _Node(child.edge[:k], node)
                mid.trimmable = child.trimmable
                node.children[tokens[depth]] = mid
                child.edge, child.parent = child.edge[k:], mid
                mid.children[child.edge[0]] = child
                child = mid
            node, depth = child, depth + k
        return node

    # -- eviction ---------------------------------------------------------------------------------------------

    def _remove(self, entry: _Entry) -> None:
        node = entry.node
        node.entry = None
        del self._lru[entry]
        self._bytes -= entry.nbytes
        if entry.trimmable:
            above: _Node | None = node
            while above is not None:
                above.trimmable -= 1
                above = above.parent
        self._prune(node)

    def _prune(self, node: _Node) -> None:
        """Drop nodes left holding nothing, then merge a bare pass-through node into its only child."""
        while node.parent is not None and node.entry is None and not node.children:
            del node.parent.children[node.edge[0]]
            node = node.parent
        if node.parent is not None and node.entry is None and len(node.children) == 1:
            (child,) = node.children.values()
            child.edge, child.parent = node.edge + child.edge, node.parent
            node.parent.children[child.edge[0]] = child
