"""Write a gpt_oss parity fixture as one GGUF file the way Ollama's converter wrote gpt-oss (convert/convert_gptoss.go
and convert/tokenizer.go, read at the commits named in LAYOUTS), from the folder's transformers-4 config
(config_v4.json: Ollama reads `rope_scaling`, `experts_per_token`, `initial_context_length`).

What it does, written here from its source:
- general.architecture "gptoss" and keys under "gptoss.": no rope scaling type, no expert width, no YaRN betas;
  context_length is max_position_embeddings, rope.scaling.original_context_length initial_context_length;
- names by plain string replacement of transformers' (_REPLACEMENTS): `attn_out`, `ffn_norm`, `attn_sinks` (no
  ".weight"), the experts' `ffn_gate_up_exps` / `ffn_down_exps`;
- MXFP4 experts (`*_blocks` [E, out, in/32, 16] + `*_scales` [E, out, in/32]) become one block per 32 values,
  the scale byte then 16 code bytes: the checkpoint's bytes as they are under type 4 at first, ggml's nibble order
  under type 39 later;
- gate_up kept fused (rows alternating gate, up) until October 2025, then split into ffn_gate_exps (rows 0::2) and
  ffn_up_exps (rows 1::2), biases likewise;
- tensor types from the source: 1-D tensors and the router F32, expert biases F32 from 26 August 2025 (F16 before),
  other float matrices F16 (this file's `float_type` may keep them F32 to compare with transformers' float32);
- the tokenizer: tokens in id order with their ids as scores, added tokens control (special) or user-defined,
  pre-tokenizer "default" (it names only a few), then gpt-oss's ids hard-coded (bos 199998, eos 199999, eos_token_ids
  [199999, 200002, 200012], whatever the vocabulary) and no BOS added.
Transformers' float experts (`gate_up_proj` [E, in, 2I]) are left unrenamed by the converter, so Ollama never read a
dense file: the dense fixture's experts are written as its model code reads them, [E, out, in] under the names above.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tests.gguf.gpt_oss_to_gguf import ggml_mxfp4
from tests.gguf.hf_to_gguf import PARITY

ARCH = "gptoss"
# Layout -> (MXFP4 type code, expert biases F32, gate and up split), by the converter's commit:
# 4ae4f47b1 (2025-08-20, Hugging Face folders), 59412fbb4 (2025-08-26, ggml's MXFP4), 93085127f (2025-10-10).
LAYOUTS = {
    "mxfp4-type4": (4, False, False),
    "fused": (GGMLQuantizationType.MXFP4.value, True, False),
    "split": (GGMLQuantizationType.MXFP4.value, True, True),
}
_REPLACEMENTS = [
    ("lm_head", "output"), ("model.embed_tokens", "token_embd"), ("model.layers", "blk"),
    ("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_out"), ("self_attn.sinks", "attn_sinks"),
    ("post_attention_layernorm", "ffn_norm"), ("mlp.router", "ffn_gate_inp"),
    ("mlp.experts.gate_up_proj_", "ffn_gate_up_exps."), ("mlp.experts.down_proj_", "ffn_down_exps."),
    ("model.norm", "output_norm"),
]
_FLOAT_EXPERTS = re.compile(r"(model\.layers\.\d+\.mlp\.experts\.(?:gate_up|down)_proj)")
_GPT_OSS_IDS = {"bos": 199998, "eos": 199999}
_GPT_OSS_EOS_IDS = [199999, 200002, 200012]
_TOKEN_TYPES = {"normal": 1, "control": 3, "user_defined": 4}


def _rename(name: str) -> str:
    """Go's strings.Replacer: at each position the first listed pattern that matches, then past it."""
    out, i = [], 0
    while i < len(name):
        for old, new in _REPLACEMENTS:
            if name.startswith(old, i):
                out.append(new)
                i += len(old)
                break
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def _mxfp4_bytes(blocks: np.ndarray, scales: np.ndarray, type_code: int) -> np.ndarray:
    """[E, out, in/32 * 17]: the scale byte then the codes, as the checkpoint holds them (4) or as ggml does (39)."""
    if type_code == GGMLQuantizationType.MXFP4.value:
        return ggml_mxfp4(blocks, scales).raw
    return np.concatenate([scales[..., None], blocks], axis=-1).reshape(*blocks.shape[:-2], -1)


def _halves(values: np.ndarray, split: bool, name: str) -> list[tuple[str, np.ndarray]]:
    """gate_up as one tensor or, split, rows (entries) 0::2 as gate and 1::2 as up; other tensors as they are."""
    if not split or "ffn_gate_up_exps" not in name:
        return [(name, values)]
    return [(name.replace("gate_up", half), np.ascontiguousarray(values[:, start::2]))
            for start, half in ((0, "gate"), (1, "up"))]


class _Writer:
    def __init__(self, path: Path, layout: str, float_type: str) -> None:
        self.w = GGUFWriter(str(path), ARCH)
        self.type_code, self.f32_biases, self.split = LAYOUTS[layout]
        self.float_type = float_type
        self.stored: dict[str, mx.array] = {}

    def mxfp4(self, name: str, blocks: np.ndarray, scales: np.ndarray) -> None:
        for part, raw in _halves(_mxfp4_bytes(blocks, scales, self.type_code), self.split, f"{name}.weight"):
            # The gguf package has no type 4: the bytes are sized as MXFP4's (the same blocks), then relabelled.
            self.w.add_tensor(part, raw, raw_dtype=GGMLQuantizationType.MXFP4)
            self.w.tensors[-1][part].dtype = self.type_code  # type: ignore[assignment]

    def floats(self, hf: str, name: str, values: np.ndarray) -> None:
        """Kept F32: 1-D tensors, the router, expert biases (from 59412fbb4); else `float_type`, rounded values
        returned under the transformers name `hf`."""
        f32 = (values.ndim == 1 or name.endswith(".ffn_gate_inp.weight")
               or (self.f32_biases and name.endswith(".bias")))
        if not f32 and self.float_type == "F16":
            values = values.astype(np.float16)
            self.stored[hf] = mx.array(values.astype(np.float32))
        for part, held in _halves(values, self.split, name):
            self.w.add_tensor(part, held if held.dtype == np.float16 else held.astype(np.float32))


def _hyperparameters(w: GGUFWriter, config: dict[str, Any]) -> None:
    rope = config["rope_scaling"]
    u32 = {"context_length": config["max_position_embeddings"], "block_count": config["num_hidden_layers"],
           "embedding_length": config["hidden_size"], "feed_forward_length": config["intermediate_size"],
           "expert_count": config.get("num_experts") or config["num_local_experts"],
           "expert_used_count": config["experts_per_token"],
           "attention.head_count": config["num_attention_heads"],
           "attention.head_count_kv": config["num_key_value_heads"],
           "attention.key_length": config["head_dim"], "attention.value_length": config["head_dim"],
           "attention.sliding_window": config["sliding_window"],
           "rope.scaling.original_context_length": config["initial_context_length"]}
    for key, value in u32.items():
        w.add_uint32(f"{ARCH}.{key}", value)
    w.add_float32(f"{ARCH}.attention.layer_norm_rms_epsilon", config.get("rms_norm_eps") or 1e-5)
    w.add_float32(f"{ARCH}.rope.freq_base", config["rope_theta"])
    w.add_float32(f"{ARCH}.rope.scaling.factor", config.get("rope_scaling_factor") or rope["factor"])


def _tokenizer(w: GGUFWriter, folder: Path) -> None:
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tok_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    by_id: dict[int, tuple[str, int]] = {i: (t, _TOKEN_TYPES["normal"]) for t, i in tok["model"]["vocab"].items()}
    for added in tok["added_tokens"]:
        by_id[added["id"]] = (added["content"], _TOKEN_TYPES["control" if added["special"] else "user_defined"])
    ids = sorted(by_id)
    w.add_string("tokenizer.ggml.pre", "default")  # no Split pre-tokenizer whose regex it knows
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", [by_id[i][0] for i in ids])
    w.add_array("tokenizer.ggml.scores", [float(i) for i in ids])
    w.add_array("tokenizer.ggml.token_type", [by_id[i][1] for i in ids])
    w.add_array("tokenizer.ggml.merges", [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_string("tokenizer.chat_template", tok_config["chat_template"])
    texts = {t: i for i, (t, _) in by_id.items()}
    for kind, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):  # special tokens the config names
        if tok_config.get(f"{kind}_token") in texts and kind not in _GPT_OSS_IDS:
            w.add_bool(f"tokenizer.ggml.add_{key}_token", bool(tok_config.get(f"add_{kind}_token")))
            w.add_uint32(f"tokenizer.ggml.{key}_token_id", texts[tok_config[f"{kind}_token"]])
    for kind, token_id in _GPT_OSS_IDS.items():  # gptossModel.KV overwrites these whatever the vocabulary
        w.add_uint32(f"tokenizer.ggml.{kind}_token_id", token_id)
        w.add_bool(f"tokenizer.ggml.add_{kind}_token", False)
    w.add_array("tokenizer.ggml.eos_token_ids", _GPT_OSS_EOS_IDS)


def write_ollama_gguf(fixture: str, path: Path, *, layout: str = "split", float_type: str = "F16"
                      ) -> dict[str, mx.array]:
    """Write the parity fixture `fixture` as Ollama's converter of `layout` (LAYOUTS) would, float matrices in
    `float_type` ("F16" as Ollama, or "F32"). Returns the values F16 rounding left, under transformers' names."""
    folder = PARITY / fixture
    config = json.loads((folder / "config_v4.json").read_text(encoding="utf-8"))
    weights = {k: np.array(v) for k, v in mx.load(str(folder / "model.safetensors")).items()}
    out = _Writer(path, layout, float_type)
    _hyperparameters(out.w, config)
    out.w.add_uint32("general.file_type", 4)  # Ollama's MXFP4 file type
    out.w.add_uint32("general.quantization_version", 2)
    _tokenizer(out.w, folder)
    for hf, values in weights.items():
        if hf.endswith("_scales"):
            continue
        if hf.endswith("_blocks"):
            name = _rename(hf).removesuffix(".blocks")
            out.mxfp4(name, values, weights[hf.removesuffix("_blocks") + "_scales"])
        elif _FLOAT_EXPERTS.fullmatch(hf):  # see the module's docstring: written as Ollama's model code reads them
            out.floats(hf, _rename(f"{hf}_") + "weight", values.swapaxes(-1, -2))
            if hf in out.stored:
                out.stored[hf] = out.stored[hf].swapaxes(-1, -2)
        else:
            out.floats(hf, _rename(hf), values)
    out.w.write_header_to_file()
    out.w.write_kv_data_to_file()
    out.w.write_tensors_to_file()
    out.w.close()
    return out.stored
