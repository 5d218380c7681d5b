"""A fake model for engine and worker tests: deterministic logits from token ids through the real cache types
(one attention layer with fixed random weights), milliseconds per step, and faults on chosen tokens."""

from __future__ import annotations

import time
from collections.abc import Callable

import mlx.core as mx

from mlxd.engine.runtime import ModelRuntime
from mlxd.models.cache import KVCache, LayerCache, RotatingKVCache

VOCAB = 64
EOS = 0


class FakeModel:
    """Logits [B, L, VOCAB] of a one-layer, one-head attention over the token embeddings: each depends on the
    token and on every token before it, through the cache, the masks and the batch like a real model's.

    fail_on: a forward pass whose input holds this id raises RuntimeError (a bug inside one request).
    stall_on: (id, seconds): such a forward pass sleeps first (a hung device call).
    fatal_on: such a forward pass raises a BaseException no `except Exception` catches (the worker thread ends).
    """

    def __init__(self, dim: int = 16, window: int | None = None, fail_on: int | None = None,
                 stall_on: tuple[int, float] | None = None, fatal_on: int | None = None, seed: int = 0) -> None:
        k1, k2 = mx.random.split(mx.random.key(seed))
        self.embed = mx.random.normal((VOCAB, dim), key=k1)
        self.out = mx.random.normal((dim, VOCAB), key=k2)
        self.window = window
        self.layers = [self.embed]  # one layer
        self.fail_on, self.stall_on, self.fatal_on = fail_on, stall_on, fatal_on
        self.calls = 0

    def __call__(self, inputs: mx.array, cache: list | None = None, *,
                 input_embeddings: mx.array | None = None) -> mx.array:
        self.calls += 1
        self._trip(inputs)
        h = self.embed[inputs] if input_embeddings is None else input_embeddings  # [B, L, D]
        B, L, D = h.shape
        q = k = v = h[:, None]                                                    # [B, 1 head, L, D]
        layer = cache[0] if cache is not None else None
        mask = layer.make_mask(L, self.window) if layer is not None else ("causal" if L > 1 else None)
        if layer is not None:
            k, v = layer.update_and_fetch(k, v)
        attended = mx.fast.scaled_dot_product_attention(q, k, v, scale=D**-0.5, mask=mask)[:, 0]
        return (h + attended) @ self.out

    def _trip(self, inputs: mx.array) -> None:
        def holds(token: int | None) -> bool:
            return token is not None and bool((inputs == token).any().item())
        if self.stall_on is not None and holds(self.stall_on[0]):
            time.sleep(self.stall_on[1])
        if holds(self.fail_on):
            raise RuntimeError(f"injected fault on token {self.fail_on}")
        if holds(self.fatal_on):
            raise FatalFault(f"injected fatal fault on token {self.fatal_on}")

    def make_cache(self) -> list[LayerCache]:
        return [KVCache() if self.window is None else RotatingKVCache(self.window)]

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        return weights


class FatalFault(BaseException):
    """Escapes every `except Exception`: what ends a thread that guards only against errors."""


def fake_runtime(model: FakeModel | None = None, context_length: int = 512) -> ModelRuntime:
    """A runtime around a fake model: token i decodes to the letter chr(ord('a') + i % 26)."""
    decode: Callable[[list[int]], str] = lambda ids: "".join(chr(ord("a") + i % 26) for i in ids)  # noqa: E731
    return ModelRuntime(model or FakeModel(), decode, frozenset(), frozenset({EOS}), context_length, VOCAB)
