"""Tensor parallelism (Megatron-style) over an mx.distributed group: the pieces every architecture's `shard`
method (models/protocol.py) is made of.

A block that reads the residual stream and adds to it is split in two: its input projections column-parallel
(each rank keeps a slice of the output features: its share of the heads, of the MLP's hidden features, of each
expert's hidden features) and its output projection row-parallel (each rank multiplies its slice of the input
features and the partial sums are added with one `all_sum`). Everything between (norms per head, rope, the
attention itself, the gated-delta and Mamba-2 recurrences per head) then runs on the rank's own heads unchanged.

Choices, and why:
- Layers keep their classes: a column-parallel layer is the same nn.Linear / QuantizedLinear / SwitchLinear with
  fewer output rows, so code that reads a layer's weight (MLA's absorbed kv_b_proj) still works. A row-parallel
  layer or block gets a subclass whose __call__ adds the all_sum (`sum_over_ranks`); its bias stays on rank 0
  only, so the sum adds it once.
- MoE experts are sharded like the MLP (each expert's hidden features split), not spread over ranks (expert
  parallelism): routing then stays identical and local on every rank, every rank does the same share of work
  whatever the router picks (no rank waits on a hot expert), and the layer costs one all_sum like a dense MLP,
  instead of an all-to-all of tokens. The router (tiny) is replicated.
- The embedding and LM head are replicated: a vocab-parallel head would need an all_gather of the logits each
  step, and replicated logits let every rank sample the same tokens itself (parallel/replication.py). The
  cost is memory: vocab × hidden per rank (e.g. 2.8 GB of Gemma 3 27B's 54 GB in bf16).
- Sharding slices lazily loaded weights before they are evaluated, so each rank reads only its share into memory
  (loading/loader.py evaluates after `shard`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn

# A linear layer's arrays with output features on axis -2 (packed or not), and its per-output bias.
_MATRICES = ("weight", "scales", "biases")


def take(array: mx.array, axis: int, group: mx.distributed.Group, segments: Sequence[int] = ()) -> mx.array:
    """This rank's share of `array` along `axis`: the `group.rank()`-th of `group.size()` equal parts of each
    segment (sizes along `axis` that are split separately, e.g. [q | k | v] stacked; () for one segment)."""
    return _part(array, axis, group.rank(), group.size(), segments)


def _part(array: mx.array, axis: int, index: int, n: int, segments: Sequence[int] = ()) -> mx.array:
    """The `index`-th of `n` equal parts of each segment of `array` along `axis` (`take`), in memory of its own."""
    length = array.shape[axis]
    sizes = list(segments) or [length]
    if sum(sizes) != length:
        raise ValueError(f"segments {sizes} do not add up to {length}")
    parts, start = [], 0
    for size in sizes:
        if size % n:
            raise ValueError(f"cannot split {size} features (of an array {array.shape}) across {n} ranks")
        where = [slice(None)] * array.ndim
        where[axis] = slice(start + index * size // n, start + (index + 1) * size // n)
        parts.append(array[tuple(where)])
        start += size
    return _copy(parts[0], axis) if len(parts) == 1 else mx.concatenate(parts, axis=axis)


def _copy(part: mx.array, axis: int) -> mx.array:
    """`part` in memory of its own. A slice is a view that keeps the whole tensor it was read from alive, and
    MLX's copies (mx.array, mx.contiguous) of a contiguous slice share its buffer; a concatenation always writes
    a new one."""
    empty = list(part.shape)
    empty[axis] = 0
    return mx.concatenate([part, mx.zeros(empty, part.dtype)], axis=axis)


def shard_columns(layer: nn.Module, group: mx.distributed.Group, segments: Sequence[int] = ()) -> None:
    """Keep this rank's output features of a linear layer (nn.Linear, QuantizedLinear or stacked experts),
    `segments` as `take` reads them (in output features)."""
    _keep_outputs(layer, group.rank(), group.size(), segments)


def keep_head(layer: nn.Module, heads: int, head: int) -> None:
    """Keep only output head `head` of the `heads` of a linear layer (a key-value head several ranks share)."""
    _keep_outputs(layer, head, heads)


def _keep_outputs(layer: nn.Module, index: int, n: int, segments: Sequence[int] = ()) -> None:
    """Keep the `index`-th of `n` parts of a linear layer's output features (`_part`)."""
    for name in _MATRICES:
        if name in layer:
            layer[name] = _part(layer[name], -2, index, n, segments)
    if "bias" in layer:
        layer["bias"] = _part(layer["bias"], -1, index, n, segments)


def shard_rows(layer: nn.Module, group: mx.distributed.Group, summed: bool = True) -> None:
    """Keep this rank's input features of a linear layer; its output is then a partial sum, added across ranks
    by the layer itself when `summed`, else by the block it is part of (`sum_over_ranks`)."""
    for name in _MATRICES:
        if name in layer:
            layer[name] = take(layer[name], -1, group)
    if "bias" in layer and group.rank() != 0:
        layer["bias"] = mx.zeros_like(layer["bias"])
    if summed:
        sum_over_ranks(layer, group)


def shard_channels(module: nn.Module, names: Sequence[str], group: mx.distributed.Group,
                   segments: Sequence[int] = ()) -> None:
    """Keep this rank's share of the first axis of each array `names` of `module` (a depthwise conv's weight and
    bias, per-head parameters)."""
    for name in names:
        if name in module:
            module[name] = take(module[name], 0, group, segments)


_SUMMED: dict[type, type] = {}


def sum_over_ranks(module: nn.Module, group: mx.distributed.Group) -> None:
    """Make `module`'s output the sum of every rank's (one all_sum), keeping its class (as a subclass) and its
    parameters' paths."""
    cls = type(module)
    if cls not in _SUMMED:
        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            return mx.distributed.all_sum(cls.__call__(self, *args, **kwargs), group=self.tensor_parallel_group)

        _SUMMED[cls] = type(f"Summed{cls.__name__}", (cls,), {"__call__": __call__})
    module.__class__ = _SUMMED[cls]
    module.tensor_parallel_group = group


def per_rank(count: int, group: mx.distributed.Group, what: str) -> int:
    """`count` (heads, groups) divided among the ranks; a ValueError naming `what` when it does not divide."""
    if count % group.size():
        raise ValueError(f"{count} {what} cannot be split across {group.size()} ranks")
    return count // group.size()


def shard_attention(attention: nn.Module, group: mx.distributed.Group) -> None:
    """Multi-head attention with q_proj, k_proj (and v_proj, unless keys are the values or the layer reads an
    earlier layer's), o_proj and per-rank `n_heads` / `n_kv_heads`: this rank's heads, their sinks included."""
    if getattr(attention, "fused", False):
        raise ValueError("tensor parallelism shards unfused projections: load without fusion")
    kv_heads, n = attention.n_kv_heads, group.size()
    attention.n_heads = per_rank(attention.n_heads, group, "attention heads")
    shard_columns(attention["q_proj"], group)
    kv = [attention[name] for name in ("k_proj", "v_proj") if name in attention]
    if kv_heads < n and n % kv_heads == 0:
        # Fewer key-value heads than ranks: each rank keeps the one its query heads read (GQA's grouping),
        # several ranks holding the same one.
        for layer in kv:
            keep_head(layer, kv_heads, group.rank() * kv_heads // n)
        attention.n_kv_heads = 1
    else:
        attention.n_kv_heads = per_rank(kv_heads, group, "key-value heads")
        for layer in kv:
            shard_columns(layer, group)
    shard_channels(attention, ("sinks",), group)
    shard_rows(attention["o_proj"], group)


def shard_mlp(mlp: nn.Module, group: mx.distributed.Group, summed: bool = True) -> None:
    """A dense MLP (gated: gate_proj, up_proj, down_proj; or up_proj, down_proj): its hidden features split.
    `summed` False: inside a block that adds the ranks' outputs itself."""
    if getattr(mlp, "fused", False):
        raise ValueError("tensor parallelism shards unfused projections: load without fusion")
    for name in ("gate_proj", "up_proj"):
        if name in mlp:
            shard_columns(mlp[name], group)
    shard_rows(mlp["down_proj"], group, summed)


def shard_experts(experts: nn.Module, group: mx.distributed.Group) -> None:
    """Stacked experts (models/moe.py's SwitchGLU or SwitchMLP): each expert's hidden features split; the
    partial outputs are summed by the MoE block (`shard_moe`)."""
    for name in ("gate_proj", "up_proj", "fc1"):
        if name in experts:
            shard_columns(experts[name], group)
    if "gate_up_proj" in experts:  # [gate | up], each split
        hidden = experts["gate_up_proj"]["weight"].shape[-2] // 2
        shard_columns(experts["gate_up_proj"], group, (hidden, hidden))
    for name in ("down_proj", "fc2"):
        if name in experts:
            shard_rows(experts[name], group, summed=False)


def shard_moe(block: nn.Module, group: mx.distributed.Group, shared: Sequence[str] = ()) -> None:
    """A MoE block: its routed experts (`switch_mlp`) and its dense `shared` experts split as the MLP is, the
    router replicated, and one all_sum of the block's output."""
    shard_experts(block["switch_mlp"], group)
    for name in shared:
        shard_mlp(block[name], group, summed=False)
    sum_over_ranks(block, group)


def shard_feed_forward(block: nn.Module, group: mx.distributed.Group) -> None:
    """A decoder layer's `mlp`, dense or MoE (a block with `switch_mlp`)."""
    if "switch_mlp" in block:
        shard_moe(block, group, tuple(name for name in ("shared_expert", "shared_experts") if name in block))
    else:
        shard_mlp(block, group)


def shard_decoder_layers(layers: Sequence[nn.Module], group: mx.distributed.Group,
                         feed_forward: str = "mlp") -> None:
    """Decoder layers of attention (`self_attn`) and a dense or MoE block (`feed_forward`)."""
    for layer in layers:
        shard_attention(layer["self_attn"], group)
        shard_feed_forward(layer[feed_forward], group)
