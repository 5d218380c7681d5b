"""Load a GGUF file into an evaluated mlxd model, converting one tensor at a time."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn

from mlxd.errors import ModelLoadError
from mlxd.loading import config as cfg
from mlxd.loading.fusion import Quantization, build_fused
from mlxd.loading.gguf import names, tensors
from mlxd.loading.gguf.config import architecture, hf_config
from mlxd.loading.gguf.ollama import as_llama_cpp
from mlxd.loading.gguf.quants import GROUP_SIZE
from mlxd.loading.gguf.reader import GGUFFile, GGUFTensor, read_gguf
from mlxd.loading.gguf.tokenizer import eog_token_ids
from mlxd.loading.loader import LoadedModel, context_length, physical_ram_bytes, plan_dtype, select_kernels
from mlxd.loading.weights import QUANTIZABLE, check_weight_names, float32_parameters, holds_float32, parameter_arrays
from mlxd.models import architecture as model_architecture
from mlxd.models.inventory import expert_counts
from mlxd.models.linear import route_through_ops
from mlxd.models.protocol import LanguageModel, VisionLanguageModel

logger = logging.getLogger(__name__)

_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def checkpoint_dtype(gguf: GGUFFile) -> str:
    """The float type holding most of the file's bytes; block-quantized tensors count as float16 (their scales)."""
    by_bytes: Counter[str] = Counter()
    for t in gguf.tensors:
        kind = {"F32": "float32", "BF16": "bfloat16"}.get(t.type_name, "float16")
        by_bytes[kind] += t.raw.size
    return by_bytes.most_common(1)[0][0] if by_bytes else "float32"


def quantization_summary(gguf: GGUFFile) -> dict[str, Any]:
    """What GetModelInfo reports: the file's GGML types, by tensor count."""
    types = Counter(t.type_name for t in gguf.tensors)
    return {"format": "gguf", "file_type": gguf.metadata.get("general.file_type"), "tensor_types": dict(types)}


def _quantizable_paths(model: nn.Module) -> set[str]:
    return {path for path, module in model.named_modules() if isinstance(module, QUANTIZABLE)}


def _convert(
    t: GGUFTensor, hf: str, arch: str, config: dict[str, Any], dtype: mx.Dtype, keep_quantized: bool
) -> tuple[dict[str, mx.array], tuple[int, str] | None]:
    """The arrays `t` becomes under the name `hf` (with .scales/.biases when kept quantized) and, when kept
    quantized, its (bits, mode)."""
    heads = names.qk_heads(hf, arch, config["num_attention_heads"], config.get("num_key_value_heads") or
                           config["num_attention_heads"])
    order = names.unpermute_order(t.shape[0], heads) if heads else None
    if keep_quantized:
        q = tensors.quantized(t, dtype, order)
        prefix = hf.removesuffix(".weight")
        arrays = {hf: q.weight, f"{prefix}.scales": q.scales}
        if q.biases is not None:
            arrays[f"{prefix}.biases"] = q.biases
        return arrays, (q.bits, q.mode)
    if names.needs_float32(hf, arch):
        values = tensors.dense(t, mx.float32, order) + names.value_offset(hf, arch)
    else:
        values = tensors.dense(t, dtype, order)
    return {hf: names.model_layout(hf, arch, values).astype(dtype)}, None


def rope_factors(gguf: GGUFFile) -> list[float] | None:
    """The values of rope_freqs.weight (per-pair rotary factors), None when the file has none."""
    t = next((t for t in gguf.tensors if t.name == names.ROPE_FREQS), None)
    if t is None:
        return None
    # A float32 vector reads back as floats; MLX's stub types every tolist() as any nesting of any scalar.
    factors = cast(list[float], tensors.dense(t, mx.float32).reshape(-1).tolist())
    logger.info("%s: %d per-pair rotary factors from %.4g to %.4g", names.ROPE_FREQS, len(factors),
                min(factors, default=0.0), max(factors, default=0.0))
    return factors


def load_gguf_model(path: Path, *, dtype: str = "auto", fuse: bool = False) -> LoadedModel:
    """Read a GGUF file into an evaluated model, under the same dtype policy and projection fusion (`fuse`) as
    Hugging Face folders."""
    start = time.perf_counter()
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    gguf = as_llama_cpp(read_gguf(path))  # Ollama's gpt-oss layout translated into llama.cpp's
    arch = architecture(gguf.metadata)
    for t in gguf.tensors:
        tensors.check_type(t)
    config = hf_config(gguf.metadata, {t.name: t.shape for t in gguf.tensors}, rope_factors(gguf))
    model_arch = model_architecture(config["model_type"])
    try:
        args = model_arch.module.ModelArgs.from_dict(cfg.normalize_config(config))
        model = model_arch.module.Model(args)
    except (TypeError, KeyError, ValueError) as e:
        raise ModelLoadError(f"{path} does not describe a valid {config['model_type']} model: {e}") from e

    stored = checkpoint_dtype(gguf)
    quantized = any(tensors.is_quantized(t.type_name) for t in gguf.tensors)
    plan = plan_dtype(
        dtype,
        on_gpu=mx.default_device().type == mx.gpu,
        checkpoint_dtype=stored,
        quantized=quantized,
        float32_bytes=sum(t.size * 4 for t in gguf.tensors),
        ram_bytes=physical_ram_bytes(),
        experts=expert_counts(model)[0] > 0,
    )
    # One float type for every array, scales included, so activations keep one dtype through the model; only the
    # parameters the model holds in float32 (loading/weights.py, float32_parameters) are read as float32.
    target = _DTYPES[plan.dtype or stored]
    logger.info("loading %s (%s) from %s: %s", arch, config["model_type"], path, plan.note)
    requantized = sorted({t.type_name for t in gguf.tensors if t.type_name in tensors.REQUANTIZED_TYPES})
    if requantized:
        how = "dequantized" if plan.dequantize else f"requantized to {tensors.REQUANTIZED_BITS}-bit (group 32)"
        logger.info("%s has no exact MLX layout: %s", "/".join(requantized), how)

    quantizable = _quantizable_paths(model)
    float32_names = float32_parameters(model)
    weights: dict[str, mx.array] = {}
    layer_quant: dict[str, tuple[int, str]] = {}  # (bits, mode) of each layer kept quantized
    for t in gguf.tensors:
        if t.name == names.ROPE_FREQS:
            continue  # in the config already
        if names.beyond_the_model(t.name, arch, config):
            continue  # a block the converter appends after the model's layers (Qwen3.5's MTP head)
        hf = names.hf_name(t.name, arch, config["model_type"])
        # Matrices, and stacked experts' matrices [E, out, in] (quantized per expert row, as ggml stores them).
        keep = (not plan.dequantize and tensors.is_quantized(t.type_name) and len(t.shape) in (2, 3)
                and hf.endswith(".weight") and hf.removesuffix(".weight") in quantizable)
        dtype_held = mx.float32 if holds_float32(hf, float32_names) else target
        arrays, held_as = _convert(t, hf, arch, config, dtype_held, keep)
        mx.eval(*arrays.values())  # now, so the numpy temporaries of one tensor are freed before the next
        weights.update(arrays)
        if held_as is not None:
            layer_quant[hf.removesuffix(".weight")] = held_as

    weights = model.sanitize(weights)
    if fuse:
        def held(p: str) -> Quantization:
            return (layer_quant[p][0], GROUP_SIZE, layer_quant[p][1]) if p in layer_quant else None

        model, weights, fused = build_fused(model_arch.module, args, model, weights, held)
        layer_quant |= {layer: layer_quant[part] for layer, part in fused.items() if part in layer_quant}
    if layer_quant:
        nn.quantize(
            model,
            GROUP_SIZE,
            class_predicate=lambda p, m: p in layer_quant and {"group_size": GROUP_SIZE, "bits": layer_quant[p][0],
                                                                "mode": layer_quant[p][1]},
        )
        route_through_ops(model)
    check_weight_names(model, weights, f"tensors of {path}")
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        reason = str(e).splitlines()[0][:300]
        raise ModelLoadError(f"tensors of {path} do not fit {config['model_type']}: {reason}") from e
    mx.eval(model.parameters())
    logger.info("loaded %s in %.2f s", path.name, time.perf_counter() - start)

    return LoadedModel(
        model=cast(LanguageModel, model),
        vision_language=cast(VisionLanguageModel, model) if model_arch.takes_images else None,
        args=args,
        model_type=config["model_type"],
        config=config,
        context_length=context_length(config, args.max_position_embeddings, path),
        vocab_size=args.vocab_size,
        dtype=plan.dtype or stored,
        checkpoint_dtype=stored,
        quantization=quantization_summary(gguf),
        quantized=bool(layer_quant),
        files=[path],
        eos_token_ids=eog_token_ids(gguf.metadata),
        bos_token_id=config.get("bos_token_id"),
        weight_bytes=sum(v.nbytes for _, v in parameter_arrays(model)),
        load_note=plan.note,
        kernels=select_kernels(plan.dtype or stored),
    )
