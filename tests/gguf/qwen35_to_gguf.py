"""Write a Qwen3.5 parity fixture as llama.cpp's converter writes `qwen35` and `qwen35moe` (convert_hf_to_gguf.py:
Qwen3_5TextModel / Qwen3_5MoeTextModel over _LinearAttentionVReorderBase, Qwen3NextModel, Qwen2MoeModel and
TextModel), from the published config layout (config_v4.json, its text_config merged over the top level as
TextModel merges it). Nothing more than the converter does:

- Keys: TextModel's (context, widths, heads, key/value length = head_dim, rms eps, rope base, the M-RoPE sections
  padded to four, expert counts), Qwen2MoeModel's expert and shared-expert widths, Qwen3NextModel's ssm.* keys
  (conv_kernel, state_size = key head size, group_count = key heads, time_step_rank = value heads, inner_size =
  value heads x value head size), full_attention_interval and rope.dimension_count (head_dim x
  partial_rotary_factor).
- Tensors, in the converter's order of transforms: value heads reordered from grouped by key head to tiled
  (_LinearAttentionVReorderBase, only where there are more value heads than key heads): the V rows of in_proj_qkv
  and of the conv, the rows of in_proj_z/a/b, A_log and dt_bias, the columns of out_proj; then A_log stored as
  -exp(A_log), dt_bias renamed dt_proj.bias, the conv squeezed to [C, K], the zero-centred norms (all but the
  DeltaNet's gated norm) stored plus one; fused experts split into gate and up; names from the package's tables.
- The MTP head (_Qwen35MtpMixin), when the checkpoint has one: its layer appended as block num_hidden_layers
  (block_count counts it), fc and its norms as that block's nextn.* tensors, nextn_predict_layers set. The
  fixtures have none; `mtp_head` gives them a random one, shaped as the published checkpoints' is.
- Types as its prepare_tensors picks them: 1-D tensors, norms, routers (ffn_gate_inp, ffn_gate_inp_shexp), the
  conv and tensors not named .weight stay F32; other matrices take the output type, F16 where rows are not whole
  Q8_0 blocks (its QuantError fallback).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from gguf import (
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    MODEL_TENSOR,
    TENSOR_NAMES,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    get_tensor_name_map,
)
from gguf.quants import QuantError, dequantize, quantize

from tests.gguf.hf_to_gguf import PARITY, _tokenizer

ARCHS = {"qwen3_5": MODEL_ARCH.QWEN35, "qwen3_5_moe": MODEL_ARCH.QWEN35MOE}
FILE_TYPES = {"F32": LlamaFileType.ALL_F32, "Q8_0": LlamaFileType.MOSTLY_Q8_0}
_DEFAULT_SECTIONS = [11, 11, 10, 0]  # _Qwen35MRopeMixin's, when a config names none
_TEXT, _OURS = "model.language_model.", "model."
# Tensors prepare_tensors keeps F32 whatever the output type (besides 1-D ones and norms).
_ALWAYS_F32 = (".ffn_gate_inp.weight", ".ffn_gate_inp_shexp.weight", ".ssm_conv1d.weight")
# _Qwen35MtpMixin's names for the MTP head's own tensors, and the tables' names it maps them to.
_MTP_NAMES = {"mtp.fc": ("eh_proj", MODEL_TENSOR.NEXTN_EH_PROJ),
              "mtp.pre_fc_norm_embedding": ("enorm", MODEL_TENSOR.NEXTN_ENORM),
              "mtp.pre_fc_norm_hidden": ("hnorm", MODEL_TENSOR.NEXTN_HNORM),
              "mtp.norm": ("shared_head.norm", MODEL_TENSOR.NEXTN_SHARED_HEAD_NORM)}


def hyperparameters(folder: Path) -> dict[str, Any]:
    """The converter's hparams: the published config with its text_config moved to the top level."""
    config = json.loads((folder / "config_v4.json").read_text(encoding="utf-8"))
    return {**config, **config.get("text_config", {})}


def write_keys(w: GGUFWriter, hp: dict[str, Any], *, rope_sections: bool = True) -> None:
    """The converter's keys (the M-RoPE sections: Qwen3.5's alone; Qwen3-Next keeps rope_theta at the top)."""
    rope = hp.get("rope_parameters") or {"rope_theta": hp["rope_theta"]}
    w.add_block_count(hp["num_hidden_layers"] + hp.get("mtp_num_hidden_layers", 0))
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    if "intermediate_size" in hp:
        w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    if rope_sections:
        sections = list(rope.get("mrope_section", _DEFAULT_SECTIONS))
        w.add_rope_dimension_sections((sections + [0] * 4)[:4])
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    if "num_experts" in hp:
        w.add_expert_count(hp["num_experts"])
        w.add_expert_used_count(hp["num_experts_per_tok"])
        w.add_expert_feed_forward_length(hp["moe_intermediate_size"])
        w.add_expert_shared_feed_forward_length(hp["shared_expert_intermediate_size"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_ssm_conv_kernel(hp["linear_conv_kernel_dim"])
    w.add_ssm_state_size(hp["linear_key_head_dim"])
    w.add_ssm_group_count(hp["linear_num_key_heads"])
    w.add_ssm_time_step_rank(hp["linear_num_value_heads"])
    w.add_ssm_inner_size(hp["linear_value_head_dim"] * hp["linear_num_value_heads"])
    w.add_full_attention_interval(hp.get("full_attention_interval", 4))
    w.add_rope_dimension_count(int(hp["head_dim"] * hp.get("partial_rotary_factor", 0.25)))
    if hp.get("mtp_num_hidden_layers"):
        w.add_nextn_predict_layers(hp["mtp_num_hidden_layers"])


def swap_head_groups(x: np.ndarray, axis: int, outer: int, inner: int, head_dim: int) -> np.ndarray:
    """Along `axis`, heads indexed [outer, inner] reindexed [inner, outer] (blocks of head_dim values move whole).
    (key heads, value heads per key head) takes grouped order to tiled, the reverse takes it back."""
    x = np.moveaxis(x, axis, 0)
    rest = x.shape[1:]
    x = x.reshape(outer, inner, head_dim, *rest).swapaxes(0, 1).reshape(-1, *rest)
    return np.moveaxis(x, 0, axis)


def value_head_axis(name: str, hp: dict[str, Any]) -> tuple[int, int, int] | None:
    """(axis, head size, offset of the value part along it) of a DeltaNet tensor whose value heads the converter
    reorders, None for others (and for every tensor when there are as many value heads as key heads)."""
    if hp["linear_num_key_heads"] == hp["linear_num_value_heads"] or ".linear_attn." not in name:
        return None
    key_rows, dv = 2 * hp["linear_num_key_heads"] * hp["linear_key_head_dim"], hp["linear_value_head_dim"]
    for part, where in ((".in_proj_qkv.", (0, dv, key_rows)), (".conv1d.", (0, dv, key_rows)),
                        (".in_proj_z.", (0, dv, 0)), (".in_proj_a.", (0, 1, 0)), (".in_proj_b.", (0, 1, 0)),
                        (".A_log", (0, 1, 0)), (".dt_bias", (0, 1, 0)), (".out_proj.", (1, dv, 0))):
        if part in name:
            return where
    return None


def reorder_value_heads(name: str, x: np.ndarray, hp: dict[str, Any], *, back: bool = False) -> np.ndarray:
    """_LinearAttentionVReorderBase's reorder of `x` (grouped to tiled), or its inverse with `back`."""
    where = value_head_axis(name, hp)
    if where is None:
        return x
    axis, head_dim, offset = where
    hk = hp["linear_num_key_heads"]
    per_key = hp["linear_num_value_heads"] // hk
    outer, inner = (per_key, hk) if back else (hk, per_key)
    head, values = np.split(x, [offset], axis=axis)
    return np.concatenate([head, swap_head_groups(values, axis, outer, inner, head_dim)], axis=axis)


def _remapped(weights: dict[str, np.ndarray], hp: dict[str, Any]) -> Iterator[tuple[str, str, np.ndarray]]:
    """(checkpoint name, text-model name, values): the vision tower left out (it goes to the mmproj file), the
    decoder's prefix dropped, the MTP head's layer and own tensors renamed into the blocks after the model's layers
    (_Qwen35MtpMixin, the first of the chain)."""
    n_layers = hp["num_hidden_layers"]
    for original, value in weights.items():
        if original.startswith("model.visual."):
            continue
        if original.startswith("mtp.layers."):
            index = int(original.split(".")[2])
            yield original, original.replace(f"mtp.layers.{index}.", f"model.layers.{n_layers + index}.", 1), value
        elif original.startswith("mtp."):
            stem, suffix = original.rsplit(".", 1)
            for block in range(n_layers, n_layers + hp["mtp_num_hidden_layers"]):
                yield original, f"model.layers.{block}.{_MTP_NAMES[stem][0]}.{suffix}", value
        else:
            yield original, original.replace(_TEXT, _OURS), value


def linear_attention_value(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """What llama.cpp's Qwen3-Next converter (and its Qwen3.5 subclasses) do to one tensor before naming it: A as
    -exp(A_log), dt_bias renamed dt_proj.bias, the conv weight squeezed, the (1+w) norms stored as 1+w."""
    if name.endswith(".A_log"):
        return name, -np.exp(value)
    if name.endswith(".dt_bias"):
        return name.removesuffix(".dt_bias") + ".dt_proj.bias", value
    if "conv1d" in name:
        return name, value.squeeze()
    if name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
        return name, value + 1.0
    return name, value


def converted(weights: dict[str, np.ndarray], hp: dict[str, Any]) -> Iterator[tuple[str, str, np.ndarray]]:
    """(checkpoint name, name handed to the tensor table, values) as the converter's modify_tensors chain yields
    them."""
    for original, name, value in _remapped(weights, hp):
        name, value = linear_attention_value(name, reorder_value_heads(name, value, hp))
        if name.endswith("mlp.experts.gate_up_proj"):
            gate, up = np.split(value, 2, axis=-2)
            base = name.removesuffix(".gate_up_proj")
            yield original, f"{base}.gate_proj.weight", gate
            yield original, f"{base}.up_proj.weight", up
        elif name.endswith("mlp.experts.down_proj"):
            yield original, f"{name}.weight", value
        else:
            yield original, name, value


def _type(gguf_name: str, values: np.ndarray, qtype: str) -> GGMLQuantizationType:
    if values.ndim <= 1 or gguf_name.endswith(("_norm.weight", *_ALWAYS_F32)) or not gguf_name.endswith(".weight"):
        return GGMLQuantizationType.F32
    return GGMLQuantizationType[qtype]


def add_tensor(w: GGUFWriter, gguf_name: str, values: np.ndarray, qtype: str) -> np.ndarray | None:
    """`values` added as prepare_tensors types them (F32 kept, else `qtype`, F16 where rows are not whole blocks).
    Returns what a quantized or F16 tensor holds (float32, the values' shape), None for an F32 one."""
    kind = _type(gguf_name, values, qtype)
    if kind == GGMLQuantizationType.F32:
        w.add_tensor(gguf_name, values.astype(np.float32))
        return None
    try:
        packed = quantize(values, kind)
    except QuantError:
        kind = GGMLQuantizationType.F16
        packed = quantize(values, kind)
    w.add_tensor(gguf_name, packed, raw_dtype=kind)
    return dequantize(packed, kind).reshape(values.shape).astype(np.float32)


def mtp_head(weights: dict[str, np.ndarray], hp: dict[str, Any]) -> dict[str, np.ndarray]:
    """A random MTP head as the published checkpoints hold one: a full-attention layer (shaped as the fixture's
    last layer) under mtp.layers.0, the fc joining embedding and hidden state, and its three norms."""
    last = f"{_TEXT}layers.{hp['num_hidden_layers'] - 1}."
    rng = np.random.default_rng(0)
    head = {f"mtp.layers.0.{k.removeprefix(last)}": rng.normal(0, 0.02, v.shape).astype(np.float32)
            for k, v in weights.items() if k.startswith(last)}
    width = hp["hidden_size"]
    head["mtp.fc.weight"] = rng.normal(0, 0.02, (width, 2 * width)).astype(np.float32)
    for norm in ("mtp.pre_fc_norm_embedding", "mtp.pre_fc_norm_hidden", "mtp.norm"):
        head[f"{norm}.weight"] = np.zeros(width, np.float32)
    return head


def write_qwen35_gguf(fixture: str, path: Path, qtype: str = "F32", *, with_mtp: bool = False) -> dict[str, mx.array]:
    """The fixture as a qwen35/qwen35moe GGUF with its matrices in `qtype` ("F32" or "Q8_0"), with a random MTP
    head when `with_mtp`. Returns what its quantized (and F16 fallback) tensors hold, back in the checkpoint's
    names and layout (value heads grouped, experts' gate and up fused as the checkpoint holds them): what a model
    loaded from the file computes with."""
    folder = PARITY / fixture
    hp = hyperparameters(folder)
    weights = {k: np.array(v) for k, v in mx.load(str(folder / "model.safetensors")).items()}
    if with_mtp:
        weights |= mtp_head(weights, hp)
        hp["mtp_num_hidden_layers"] = 1
    blocks = hp["num_hidden_layers"] + hp.get("mtp_num_hidden_layers", 0)
    names = get_tensor_name_map(ARCHS[fixture], blocks)

    w = GGUFWriter(str(path), MODEL_ARCH_NAMES[ARCHS[fixture]])
    write_keys(w, hp)
    w.add_file_type(FILE_TYPES[qtype])
    _tokenizer(w, folder, hp["vocab_size"])
    held: dict[str, dict[str, np.ndarray]] = {}
    for original, name, values in converted(weights, hp):
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias")) or _nextn_name(name)
        assert gguf_name is not None, name
        values_held = add_tensor(w, gguf_name, values, qtype)
        if values_held is not None:
            held.setdefault(original, {})[name] = reorder_value_heads(name, values_held, hp, back=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # The experts' gate and up halves go back into the checkpoint's fused tensor, gate first.
    return {original: mx.array(np.concatenate(list(parts.values()), axis=-2) if len(parts) > 1
                               else next(iter(parts.values())))
            for original, parts in held.items()}


def _nextn_name(name: str) -> str | None:
    """The name of an MTP head's own tensor (the package's tables here map none of them for qwen35)."""
    parts = name.split(".")
    for leaf, tensor in _MTP_NAMES.values():
        if ".".join(parts[3:-1]) == leaf:
            return TENSOR_NAMES[tensor].format(bid=int(parts[2])) + "." + parts[-1]
    return None
