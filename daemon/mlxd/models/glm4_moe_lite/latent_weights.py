"""kv_b_proj out of mlx-lm's conversions, which store it split per head for its absorbed attention:
`embed_q.weight` [heads, kv_lora_rank, nope] (each head's key rows, transposed) and `unembed_out.weight`
[heads, v, kv_lora_rank] (its value rows), quantized along their last axis when the folder is.

mlxd keeps kv_b_proj as checkpoints have it ([heads × (nope + v), kv_lora_rank], each head's key rows then its
value rows) and slices it per head itself (attention.py). A quantized pair is dequantized and kept in float:
re-quantizing embed_q along the other axis would round its values a second time.
"""

from __future__ import annotations

import mlx.core as mx

from mlxd.errors import ModelLoadError
from mlxd.models.glm4_moe_lite.args import ModelArgs


def kv_b_from_absorbed(weights: dict[str, mx.array], prefix: str, args: ModelArgs) -> dict[str, mx.array]:
    """`weights` with `{prefix}.embed_q.*` and `{prefix}.unembed_out.*` joined into `{prefix}.kv_b_proj.weight`;
    unchanged when there are none."""
    if f"{prefix}.embed_q.weight" not in weights or f"{prefix}.unembed_out.weight" not in weights:
        return weights
    out = dict(weights)
    keys = _dequantized(out, f"{prefix}.embed_q", args.qk_nope_head_dim)           # [H, latent, nope]
    values = _dequantized(out, f"{prefix}.unembed_out", args.kv_lora_rank)         # [H, v, latent]
    joined = mx.concatenate([keys.swapaxes(-1, -2), values], axis=1)                # [H, nope + v, latent]
    out[f"{prefix}.kv_b_proj.weight"] = mx.contiguous(joined.reshape(-1, joined.shape[-1]))
    return out


def _dequantized(weights: dict[str, mx.array], layer: str, in_dims: int) -> mx.array:
    """The float weight of the per-head layer `layer` (popped from `weights` with its scales and biases), whose
    input width is `in_dims`; bits and group size follow from the packed shapes, as mlx-lm writes them."""
    weight = weights.pop(f"{layer}.weight")
    if f"{layer}.scales" not in weights:
        return weight
    scales, biases = weights.pop(f"{layer}.scales"), weights.pop(f"{layer}.biases", None)
    if biases is None:
        raise ModelLoadError(f"{layer} is quantized without biases: only affine quantization is read there")
    bits, group_size = weight.shape[-1] * 32 // in_dims, in_dims // scales.shape[-1]
    return mx.dequantize(weight, scales, biases, group_size=group_size, bits=bits)
