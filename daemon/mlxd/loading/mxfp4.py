"""MXFP4 weights of Hugging Face folders (gpt-oss: `quantization_config.quant_method: "mxfp4"`) as MLX's own
`mxfp4` quantized arrays, without dequantizing: the same codes and scales, relabelled.

On disk (what transformers/integrations/mxfp4.py decodes): a weight in nn.Linear orientation [..., out, in] is cut
along `in` into blocks of 32 values. `<name>_blocks` [..., out, in/32, 16] uint8 holds a block's FP4 E2M1 codes
two to a byte, element 2j in the low nibble of byte j and element 2j+1 in the high one; `<name>_scales`
[..., out, in/32] uint8 holds the block's E8M0 exponent (value = E2M1 * 2^(scale - 127)). MLX's mxfp4 mode
(group size 32, 4 bits) packs the same E2M1 codes from the low bits of little-endian uint32 words upwards and
keeps the same E8M0 bytes as its scales, so a block's 16 bytes are 4 words of MLX's weight as they stand.

transformers transposes the decoded weight to [..., in, out] and computes x @ W; with MLX's arrays the same
product is mx.quantized_matmul(x, weight, scales, transpose=True, ...) (or mx.gather_qmm for routed experts).
Rows may be regrouped (gpt-oss interleaves gate and up rows; each row has its own scales), but a strided row
slice must be made contiguous: MLX 0.32.4's CUDA quantized matmul has no kernel for strided weights.
"""

from __future__ import annotations

import mlx.core as mx

from mlxd.errors import ModelLoadError

QUANT_METHOD = "mxfp4"
# The MLX quantization a quant_method "mxfp4" folder is held in (loading.config.quantization returns it).
MLX_QUANTIZATION = {"group_size": 32, "bits": 4, "mode": "mxfp4"}
BLOCKS, SCALES = "_blocks", "_scales"
BLOCK_BYTES = 16  # 32 four-bit codes


def to_mlx(blocks: mx.array, scales: mx.array, name: str = "mxfp4 weight") -> tuple[mx.array, mx.array]:
    """(weight, scales) in MLX's mxfp4 layout for the [..., out, in] weight that `blocks` [..., out, in/32, 16]
    uint8 and `scales` [..., out, in/32] uint8 encode: weight uint32 [..., out, in/8] (the bytes reinterpreted,
    no copy), scales unchanged. Exact: mx.dequantize(weight, scales, group_size=32, bits=4, mode="mxfp4") gives
    transformers' decoded weight, transposed back to nn.Linear orientation."""
    if blocks.dtype != mx.uint8 or scales.dtype != mx.uint8:
        raise ModelLoadError(f"{name}: MXFP4 blocks and scales must be uint8, not {blocks.dtype} and {scales.dtype}")
    if blocks.ndim < 3 or blocks.shape[-1] != BLOCK_BYTES or tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise ModelLoadError(
            f"{name}: MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not pair "
            f"(expected [..., out, in/32, {BLOCK_BYTES}] and [..., out, in/32])"
        )
    words = blocks.view(mx.uint32)  # [..., out, in/32, 4]: little-endian, element 0 in the lowest nibble
    return words.reshape(*blocks.shape[:-2], blocks.shape[-2] * BLOCK_BYTES // 4), scales


def unpack(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """`weights` with every `<name>_blocks` + `<name>_scales` pair replaced by `<name>.weight` and
    `<name>.scales` in MLX's mxfp4 layout (to_mlx): the names an MLX-quantized layer's parameters take, for the
    model's sanitize to place. Other tensors pass unchanged; half a pair is an error naming it."""
    out = dict(weights)
    for key in weights:
        if not key.endswith(BLOCKS):
            continue
        name = key.removesuffix(BLOCKS)
        if name + SCALES not in weights:
            raise ModelLoadError(f"MXFP4 tensor {key} has no {name + SCALES}")
        out[f"{name}.weight"], out[f"{name}.scales"] = to_mlx(out.pop(key), out.pop(name + SCALES), name)
    stray = [k for k in out if k.endswith(SCALES) and out[k].dtype == mx.uint8]
    if stray:
        raise ModelLoadError(f"MXFP4 tensor {stray[0]} has no {stray[0].removesuffix(SCALES) + BLOCKS}")
    return out
