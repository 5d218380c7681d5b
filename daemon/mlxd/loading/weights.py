"""Finding, reading, converting and (de)quantizing safetensors weights of a model folder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxd.errors import ModelLoadError
from mlxd.loading.config import layer_quantization
from mlxd.models.linear import route_through_ops
from mlxd.models.moe import SwitchLinear

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SHARD_GLOB = "model-*-of-*.safetensors"

_DTYPE_NAMES = {mx.float32: "float32", mx.float16: "float16", mx.bfloat16: "bfloat16"}
_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


def find_weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding the model: those the index names, else model.safetensors, else the shards."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(f"unreadable weight index {index}: {e}") from e
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"weight shard {missing[0]} named in {index} is missing")
        return files
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    shards = sorted(folder.glob(SHARD_GLOB))
    if shards:
        return shards
    raise ModelLoadError(f"no {SINGLE_FILE}, {INDEX_FILE} or {SHARD_GLOB} in {folder}")


def read_weights(files: list[Path]) -> dict[str, mx.array]:
    """Every tensor of `files` by name (lazily: memory is committed when the model is evaluated)."""
    weights: dict[str, mx.array] = {}
    for f in files:
        try:
            # A safetensors file loads as a dict of arrays; MLX's stub types mx.load as any format's result.
            weights.update(cast(dict[str, mx.array], mx.load(str(f), format="safetensors")))
        except Exception as e:  # MLX raises bare RuntimeError/ValueError for any unreadable file
            raise ModelLoadError(f"cannot read weights {f}: {e}") from e
    return weights


def dtype_name(dtype: mx.Dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("mlx.core."))


def weights_dtype(weights: dict[str, mx.array]) -> str | None:
    """The floating dtype holding most bytes of `weights` (scales of quantized layers included), None if none."""
    counts: Counter[str] = Counter()
    for w in weights.values():
        if w.dtype in _DTYPE_NAMES:
            counts[dtype_name(w.dtype)] += w.nbytes
    return counts.most_common(1)[0][0] if counts else None


def _quantized_prefixes(weights: dict[str, mx.array]) -> list[str]:
    return [k.removesuffix(".scales") for k in weights if k.endswith(".scales")]


def follow_layer_overrides(quant: dict[str, Any], before: dict[str, mx.array], after: dict[str, mx.array],
                           split_layers: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """The quantization block with its per-layer overrides renamed as `sanitize` renamed their layers (`before` ->
    `after`, the same arrays under new names). mlx-lm names overrides after its own modules: a vision-language
    conversion's 8-bit routers are `language_model.model.layers.N.mlp.gate`, which the text model here holds as
    `model.layers.N.mlp.gate`; read under the wrong name, such a layer would be taken for the default bits.

    A layer that sanitize splits into parts (new arrays, no identity to follow) passes its override to each part
    beside it: `split_layers` maps the layer's last name to its parts' (the Model class's SPLIT_LAYERS)."""
    overrides = {id(before[f"{k}.scales"]): v for k, v in quant.items()
                 if isinstance(v, dict) and f"{k}.scales" in before}
    out = dict(quant)
    for name, value in after.items():
        if name.endswith(".scales") and id(value) in overrides:
            out[name.removesuffix(".scales")] = overrides[id(value)]
    for key, value in quant.items():
        layer, _, last = key.rpartition(".")
        for part in (split_layers or {}).get(last, ()) if isinstance(value, dict) else ():
            if f"{layer}.{part}.scales" in after:
                out.setdefault(f"{layer}.{part}", value)
    return out


def float32_bytes(weights: dict[str, mx.array], quant: dict[str, Any] | None) -> int:
    """Bytes the weights would take as float32, counting quantized matrices at their dequantized size."""
    total = 0
    packed = set()
    if quant:
        for prefix in _quantized_prefixes(weights):
            params = layer_quantization(quant, prefix) or quant
            total += weights[f"{prefix}.scales"].size * params["group_size"] * 4
            packed.update({f"{prefix}.weight", f"{prefix}.scales", f"{prefix}.biases"})
    return total + sum(w.size * 4 for k, w in weights.items() if k not in packed)


def dequantize_weights(weights: dict[str, mx.array], quant: dict[str, Any]) -> dict[str, mx.array]:
    """Replace each quantized (weight, scales, biases) triple by the float matrix it encodes."""
    out = dict(weights)
    for prefix in _quantized_prefixes(weights):
        params = layer_quantization(quant, prefix) or quant
        out[f"{prefix}.weight"] = mx.dequantize(
            out.pop(f"{prefix}.weight"),
            out.pop(f"{prefix}.scales"),
            out.pop(f"{prefix}.biases", None),
            group_size=params["group_size"],
            bits=params["bits"],
            mode=params.get("mode", "affine"),
        )
    return out


def float32_parameters(model: nn.Module) -> tuple[str, ...]:
    """The names of the parameters `model` holds in float32 whatever dtype the rest is held in: those its Model
    class lists in FLOAT32_PARAMETERS, as the last part(s) of a dotted name (e.g. "e_score_correction_bias").

    A model lists values that make discrete choices and are kept in float32 by the reference (transformers, and
    mlx-lm's cast_predicate): GLM's routing bias picks experts among sigmoid scores that differ by less than a
    bfloat16 step (2**-8 near 0.5), so rounding it turns near-ties into ties and changes the experts chosen."""
    return tuple(getattr(type(model), "FLOAT32_PARAMETERS", ()))


def holds_float32(name: str, float32_names: tuple[str, ...]) -> bool:
    """Whether the parameter `name` is one of `float32_names` (float32_parameters)."""
    return any(name == p or name.endswith(f".{p}") for p in float32_names)


def cast_weights(weights: dict[str, mx.array], dtype: str | None,
                 float32_names: tuple[str, ...] = ()) -> dict[str, mx.array]:
    """Cast every floating array to `dtype` (None: leave it as stored), those named in `float32_names`
    (float32_parameters) to float32; packed quantized integers stay as they are."""
    def cast(name: str, w: mx.array) -> mx.array:
        if w.dtype not in _DTYPE_NAMES:
            return w
        wanted = mx.float32 if holds_float32(name, float32_names) else w.dtype if dtype is None else _DTYPES[dtype]
        return w if wanted == w.dtype else w.astype(wanted)

    return {k: cast(k, w) for k, w in weights.items()}


def parameter_arrays(model: nn.Module) -> list[tuple[str, mx.array]]:
    """Every parameter of `model` under its dotted path."""
    # Without a destination tree_flatten returns this list; MLX's stub adds the dict it fills when given one.
    return cast(list[tuple[str, mx.array]], tree_flatten(model.parameters()))


# The layer types MLX can quantize (each has to_quantized), and stacked experts (gathered quantized matmuls).
QUANTIZABLE = (nn.Linear, nn.Embedding, SwitchLinear)


def quantize_model(model: nn.Module, weights: dict[str, mx.array], quant: dict[str, Any]) -> None:
    """Swap in quantized layers exactly where the checkpoint has `.scales`, with per-layer overrides."""

    def predicate(path: str, module: nn.Module) -> bool | dict[str, Any]:
        if f"{path}.scales" not in weights or not isinstance(module, QUANTIZABLE):
            return False
        return layer_quantization(quant, path) or False

    nn.quantize(model, quant["group_size"], quant["bits"], mode=quant.get("mode", "affine"), class_predicate=predicate)
    route_through_ops(model)


def check_weight_names(model: nn.Module, weights: dict[str, mx.array], source: str) -> None:
    """Name the first missing or unexpected weight: MLX's own messages list every key on one huge line."""
    expected = {k for k, _ in parameter_arrays(model)}
    missing, extra = sorted(expected - weights.keys()), sorted(weights.keys() - expected)
    if missing:
        raise ModelLoadError(f"{source} lack {missing[0]} ({len(missing)} missing in all)")
    if extra:
        raise ModelLoadError(f"{source} have unexpected {extra[0]} ({len(extra)} unexpected in all)")
