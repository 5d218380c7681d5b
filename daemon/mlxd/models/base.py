"""Pieces every architecture shares: argument parsing, attention masks, and the weights no model keeps."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import mlx.core as mx

Mask = mx.array | str | None


@dataclasses.dataclass
class BaseModelArgs:
    """Base for every architecture's ModelArgs: builds from a config dict, ignoring keys it does not know."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass(frozen=True)
class DeltaHeads:
    """A Gated DeltaNet layer's heads (Qwen3.5, Qwen3-Next): key heads `hk` of width `dk`, value heads `hv` of
    width `dv`; value head j reads key head j // (hv / hk), or j % hk when `tiled` (GGUF's order)."""

    hk: int
    hv: int
    dk: int
    dv: int
    tiled: bool = False


class ExpertQuantization(NamedTuple):
    """How a layer's stacked expert weights are quantized (models/moe.py QuantizedSwitchLinear): MLX's `mode`
    ("affine", "mxfp4", ...), its group size and bits, the scales, and the biases of affine mode. A named tuple:
    a layer makes one per call in every decode step, and a frozen dataclass takes ~1.4 us to make, this ~0.6."""

    group_size: int
    bits: int
    mode: str
    scales: mx.array
    biases: mx.array | None


class MaskingCache(Protocol):
    """What mask creation needs from a KV cache (see mlxd.models.cache)."""

    def make_mask(self, length: int, window: int | None = None) -> Mask: ...


class AttentionCache(MaskingCache, Protocol):
    """What a model's attention uses of its layer's cache: one sequence's (models/cache.py, LayerCache) in a
    prefill, the decode batch's (models/batch_cache.py, BatchLayerCache) in a decode step."""

    @property
    def offset(self) -> int | mx.array:
        """The position of the next token: an int, or int32 [B] in a batch whose rows are at different ones."""
        ...

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append the new positions' keys and values [B, heads, L, head_dim]; every key and value to attend to."""
        ...


# A change to the mask of one forward pass of `length` tokens, given a layer's cache and its causal or sliding
# mask: a vision-language model lets the tokens of one image see each other (transformers' or_mask_function).
MaskModifier = Callable[[int, AttentionCache | None, Mask], Mask]


def create_attention_mask(length: int, offset: int, window: int | None = None, key_start: int = 0) -> Mask:
    """Mask for a block of `length` queries at absolute positions offset.. against keys at key_start..offset+length-1.

    A query at position p sees key k iff k <= p and, with a sliding window, p - k < window (HF semantics).
    Returns None when every key is visible and "causal" when MLX's built-in bottom-right causal mask is exact,
    so the common cases materialize no array.
    """
    n_keys = offset + length - key_start
    if window is None or offset + length - 1 - key_start < window:  # the window hides no key
        return None if length == 1 else "causal"
    q_pos = mx.arange(offset, offset + length)[:, None]
    k_pos = mx.arange(key_start, key_start + n_keys)[None, :]
    return (k_pos <= q_pos) & (k_pos > q_pos - window)


def attention_mask(length: int, cache: MaskingCache | None, window: int | None = None) -> Mask:
    """The mask for one forward pass of `length` tokens, from the cache's position (offset 0 without a cache)."""
    if cache is None:
        return create_attention_mask(length, 0, window)
    return cache.make_mask(length, window)


def layer_masks(length: int, caches: Sequence[AttentionCache | None], windows: list[int | None],
                modify: MaskModifier | None = None) -> list[Mask]:
    """One mask per layer, built once per distinct window from the first cache of a layer with that window
    (and changed by `modify` when given)."""
    by_window: dict[int | None, Mask] = {}
    for window, cache in zip(windows, caches):
        if window not in by_window:
            mask = attention_mask(length, cache, window)
            by_window[window] = mask if modify is None else modify(length, cache, mask)
    return [by_window[w] for w in windows]


def drop_unused_weights(weights: dict[str, mx.array], tie_word_embeddings: bool) -> dict[str, mx.array]:
    """Remove rotary buffers some checkpoints carry, and the lm_head copy of tied embeddings."""
    return {
        k: v
        for k, v in weights.items()
        if "rotary_emb.inv_freq" not in k and not (tie_word_embeddings and k.startswith("lm_head."))
    }
