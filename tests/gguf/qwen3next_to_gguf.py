"""Write a Qwen3-Next parity fixture as llama.cpp's converter writes `qwen3next` (convert_hf_to_gguf.py:
Qwen3NextModel over Qwen2MoeModel and TextModel), from the published config layout (config_v4.json). Nothing more
than the converter does:

- Keys: qwen35_to_gguf's, without the M-RoPE sections (Qwen3-Next has none) and the MTP head (the converter drops
  `mtp.*` tensors).
- Tensors, in the converter's order: A_log stored as -exp(A_log), dt_bias renamed dt_proj.bias, the conv squeezed
  to [C, K], the zero-centred norms (all but the DeltaNet's gated norm) stored plus one; then `in_proj_qkvz`, whose
  rows are grouped per key head ([q_h | k_h | v_h | z_h] for each key head h), regrouped into `attn_qkv` ([q | k |
  v], each over all heads) and `attn_gate` (z); the value heads stay grouped by key head (Qwen3NextModel does not
  tile them, unlike its Qwen3.5 subclasses); `in_proj_ba` stays fused (`ssm_ba`); the experts, one tensor each in
  the checkpoint, stacked into ffn_{gate,up,down}_exps (Qwen2MoeModel). Names from the package's tables, which for
  qwen3next have no dense MLP: every layer must be MoE (the fixture qwen3_next_all_moe).
- Types: qwen35_to_gguf's (add_tensor).
"""

from __future__ import annotations

import re
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
    GGUFWriter,
    get_tensor_name_map,
)

from tests.gguf.hf_to_gguf import PARITY, _tokenizer
from tests.gguf.qwen35_to_gguf import FILE_TYPES, add_tensor, hyperparameters, linear_attention_value, write_keys

ARCH = MODEL_ARCH.QWEN3NEXT
_EXPERT = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+)\.weight")


def _split_qkvz(value: np.ndarray, hp: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """in_proj_qkvz's rows, grouped per key head, as [q | k | v] over all heads and z."""
    hk, dk, dv = hp["linear_num_key_heads"], hp["linear_key_head_dim"], hp["linear_value_head_dim"]
    per_key = hp["linear_num_value_heads"] // hk
    grouped = value.reshape(hk, 2 * dk + 2 * per_key * dv, -1)
    q, k, v, z = np.split(grouped, np.cumsum([dk, dk, per_key * dv])[:3], axis=1)
    return np.concatenate([part.reshape(-1, value.shape[1]) for part in (q, k, v)]), z.reshape(-1, value.shape[1])


def converted(weights: dict[str, np.ndarray], hp: dict[str, Any]) -> Iterator[tuple[list[str], str, np.ndarray]]:
    """(the checkpoint names it comes from, name handed to the tensor table, values) as the converter yields them;
    the model's names for the parts of in_proj_qkvz (so that the stored values go back where the model reads them)."""
    experts: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for original, value in weights.items():
        if original.startswith("mtp."):
            continue
        name, value = linear_attention_value(original, value)
        if (expert := _EXPERT.fullmatch(name)) is not None:
            experts.setdefault((expert[1], expert[3]), {})[int(expert[2])] = value
            group = experts[expert[1], expert[3]]
            if len(group) == hp["num_experts"]:
                stacked = np.stack([group[e] for e in range(hp["num_experts"])])
                yield ([f"{expert[1]}.{e}.{expert[3]}.weight" for e in range(hp["num_experts"])],
                       f"{expert[1]}.{expert[3]}.weight", stacked)
        elif name.endswith(".in_proj_qkvz.weight"):
            qkv, z = _split_qkvz(value, hp)
            prefix = name.removesuffix("in_proj_qkvz.weight")
            yield [f"{prefix}in_proj_qkv.weight"], f"{prefix}in_proj_qkv.weight", qkv
            yield [f"{prefix}in_proj_z.weight"], f"{prefix}in_proj_z.weight", z
        else:
            yield [original], name, value


def _gguf_name(name: str, names: Any) -> str:
    """The table's name; the parts of in_proj_qkvz are the converter's own (it formats ATTN_QKV and ATTN_GATE)."""
    bid = name.split(".")[2] if name.startswith("model.layers.") else None
    for part, tensor in ((".linear_attn.in_proj_qkv.weight", MODEL_TENSOR.ATTN_QKV),
                         (".linear_attn.in_proj_z.weight", MODEL_TENSOR.ATTN_GATE)):
        if name.endswith(part):
            return TENSOR_NAMES[tensor].format(bid=bid) + ".weight"
    found = names.get_name(name, try_suffixes=(".weight", ".bias"))
    assert found is not None, f"the qwen3next table has no name for {name}"
    return found


def write_qwen3next_gguf(fixture: str, path: Path, qtype: str = "F32") -> dict[str, mx.array]:
    """The fixture as a qwen3next GGUF with its matrices in `qtype` ("F32" or "Q8_0"). Returns what its quantized
    (and F16 fallback) tensors hold under the names the folder's model reads (experts one by one, in_proj_qkvz as
    its split parts): what a model loaded from the file computes with."""
    folder = PARITY / fixture
    hp = hyperparameters(folder)
    weights = {k: np.array(v) for k, v in mx.load(str(folder / "model.safetensors")).items()}
    names = get_tensor_name_map(ARCH, hp["num_hidden_layers"])
    w = GGUFWriter(str(path), MODEL_ARCH_NAMES[ARCH])
    write_keys(w, hp, rope_sections=False)
    w.add_file_type(FILE_TYPES[qtype])
    _tokenizer(w, folder, hp["vocab_size"])
    held: dict[str, mx.array] = {}
    for originals, name, values in converted(weights, hp):
        values_held = add_tensor(w, _gguf_name(name, names), values, qtype)
        if values_held is None:
            continue
        parts = values_held if len(originals) > 1 else [values_held]
        held |= {original: mx.array(part) for original, part in zip(originals, parts)}
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held
