"""gpt-oss's checkpoint tensors as llama.cpp's converter (GptOssModel in convert_hf_to_gguf.py) turns them into GGUF
tensors, for hf_to_gguf.write_gguf.

What it does, written here from its behaviour:
- the experts' gate_up projection, whose rows (nn.Linear orientation) alternate gate, up, gate, up..., is split
  into separate gate and up tensors (`ffn_gate_exps`, `ffn_up_exps`), rows 0::2 and 1::2, biases likewise;
- transformers' float experts ([E, in, out], used as x @ W) are transposed to [E, out, in] first;
- MXFP4 experts (`*_blocks` [E, out, in/32, 16] + `*_scales` [E, out, in/32]) are copied, not requantized, into
  ggml's MXFP4 blocks: the scale byte, then 16 bytes holding value j in the low nibble of byte j and value j + 16
  in its high nibble (transformers packs values 2j and 2j + 1 into byte j);
- the attention sinks, a bare parameter, get ".weight" appended to their name.
Everything else keeps its name for the `gguf` package's gpt-oss table to map.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# A layer's experts in either form: transformers' float tensors and biases, or an MXFP4 blocks/scales pair.
_EXPERTS = re.compile(r"(model\.layers\.\d+\.mlp)\.experts\.(gate_up_proj|down_proj)(_bias|_blocks|_scales)?")
# What models/gpt_oss.py's sanitize turns a layer's experts into: the names values held in the file are returned
# under (the converter writes gate and up apart, which transformers never holds).
_SPLIT = "{prefix}.switch_mlp.{proj}.{kind}"


@dataclass(frozen=True)
class MXFP4Blocks:
    """ggml MXFP4 bytes [E, out, in / 32 * 17], written as they are (type 39)."""

    raw: np.ndarray


# (name to look up in the gpt-oss tensor table, values, [the name its held values are returned under])
Entry = tuple[str, "np.ndarray | MXFP4Blocks", list[str]]


def ggml_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> MXFP4Blocks:
    """transformers' MXFP4 pair -> ggml's blocks, the same codes and scales."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)  # values in order
    packed = codes[..., :16] | (codes[..., 16:] << 4)
    ggml = np.concatenate([scales[..., None], packed], axis=-1).astype(np.uint8)
    return MXFP4Blocks(ggml.reshape(*blocks.shape[:-2], -1))


def _gate_and_up(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The gate and up rows of a gate_up tensor (axis 1: weights' rows, blocks' and scales' rows, biases' entries)."""
    return np.ascontiguousarray(values[:, 0::2]), np.ascontiguousarray(values[:, 1::2])


def gpt_oss_tensors(weights: dict[str, np.ndarray]) -> list[Entry]:
    """An Entry for each tensor the converter writes from a gpt-oss checkpoint."""
    out: list[Entry] = []
    experts: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for hf, values in weights.items():
        m = _EXPERTS.fullmatch(hf)
        if m is None:
            name = f"{hf}.weight" if hf.endswith(".sinks") else hf
            out.append((name, values, [hf]))
            continue
        prefix, proj, suffix = m.groups()
        experts.setdefault((prefix, proj), {})[suffix or "_weight"] = values
    for (prefix, proj), parts in experts.items():
        out.extend(_expert_tensors(prefix, proj, parts))
    return out


def _expert_tensors(prefix: str, proj: str, parts: dict[str, np.ndarray]) -> list[Entry]:
    """One layer's gate_up or down experts, weights (float, or an MXFP4 pair) and biases, gate_up split in two."""
    if "_blocks" in parts:
        weight = (parts["_blocks"], parts["_scales"])
    else:
        weight = (parts["_weight"].swapaxes(-1, -2),)  # [E, in, out] -> [E, out, in]
    out: list[Entry] = []
    for kind, arrays in (("weight", weight), ("bias", (parts["_bias"],))):
        if proj == "down_proj":
            halves = {"down_proj": arrays}
        else:
            split = [_gate_and_up(a) for a in arrays]
            halves = {"gate_proj": tuple(g for g, _ in split), "up_proj": tuple(u for _, u in split)}
        for half, held in halves.items():
            values = ggml_mxfp4(*held) if len(held) == 2 else held[0]
            out.append((f"{prefix}.experts.{half}.{kind}", values, [_SPLIT.format(prefix=prefix, proj=half,
                                                                                  kind=kind)]))
    return out
