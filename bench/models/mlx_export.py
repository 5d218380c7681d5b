"""Save the weights mlxd serves from a GGUF file as a folder mlx-lm loads: the same arrays, not a re-conversion.

    python -m bench mlx_export --gguf FILE.gguf --dtype auto --out DIR

mlxd's loader turns the GGUF into an MLX model (on CPU with --dtype auto: dequantized to float32; with
--dtype keep: MLX affine group-32 quantized). Its parameters go to model.safetensors as they are; config.json is
the Hugging Face config mlxd derived, with a "quantization" block (per-module overrides where bits differ)
when the weights stay quantized; the tokenizer is the one mlxd rebuilt from the GGUF metadata.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten


def quantization_block(model: nn.Module) -> dict[str, Any] | None:
    """mlx-lm's config "quantization": the most common (group size, bits) plus an entry per module that differs."""
    layers = {path: (m.group_size, m.bits) for path, m in model.named_modules()
              if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}
    if not layers:
        return None
    (group_size, bits), _ = Counter(layers.values()).most_common(1)[0]
    block: dict[str, Any] = {"group_size": group_size, "bits": bits}
    for path, (g, b) in sorted(layers.items()):
        if (g, b) != (group_size, bits):
            block[path] = {"group_size": g, "bits": b}
    return block


def export(gguf: Path, dtype: str, out: Path) -> Path:
    from mlxd.loading.gguf import load_gguf_model
    from mlxd.loading.gguf.reader import read_gguf
    from mlxd.loading.gguf.tokenizer import BUILDERS

    loaded = load_gguf_model(gguf, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    module = cast(nn.Module, loaded.model)  # every mlxd model is an nn.Module behind the LanguageModel protocol
    weights = dict(tree_flatten(module.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = dict(loaded.config)
    quant = quantization_block(module)
    if quant:
        config["quantization"] = quant
    metadata = read_gguf(gguf).metadata
    tokenizer, add_bos = BUILDERS[metadata["tokenizer.ggml.model"]](metadata)
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", add_bos))
    tokenizer.save(str(out / "tokenizer.json"))
    tokens = metadata["tokenizer.ggml.tokens"]
    special = {name: tokens[metadata[f"tokenizer.ggml.{key}_token_id"]]
               for name, key in (("bos_token", "bos"), ("eos_token", "eos"))
               if f"tokenizer.ggml.{key}_token_id" in metadata}
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": add_bos, **special}
    if "tokenizer.chat_template" in metadata:
        tokenizer_config["chat_template"] = metadata["tokenizer.chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))
    # Last: its presence marks a complete export.
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(export(args.gguf, args.dtype, args.out))


if __name__ == "__main__":
    main()
