"""Write a random-weight Llama GGUF (~0.37B parameters by default) that mlxd, mlx-lm (via bench/models/mlx_export.py)
and llama.cpp all run, for speed comparisons on a larger model than SmolLM2-135M.

    python -m bench llama_gguf --out /tmp/llama-0.4b.Q4_0.gguf [--type Q4_0|Q8_0] [--tokenizer-from SMOLLM2.gguf]

The tokenizer (tokenizer.ggml.*: vocabulary, merges, special ids) is copied from another GGUF, SmolLM2's by
default, so both llama.cpp and mlxd accept the file; the vocabulary size follows it. Weights are normal with
std 1/sqrt(fan-in); norms are ones. Timing does not depend on the values, only on shapes and the GGML type.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

# hidden, layers, heads, kv heads, intermediate
SHAPES = {"llama-0.4b": (1024, 24, 16, 4, 2816), "llama-1b": (2048, 16, 32, 8, 8192)}
FILE_TYPES = {"Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


def _copy_tokenizer(writer: gguf.GGUFWriter, metadata: dict) -> int:
    tokens = metadata["tokenizer.ggml.tokens"]
    writer.add_tokenizer_model(metadata["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in metadata:
        writer.add_tokenizer_pre(metadata["tokenizer.ggml.pre"])
    writer.add_token_list(tokens)
    writer.add_token_types(metadata["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.merges" in metadata:
        writer.add_token_merges(metadata["tokenizer.ggml.merges"])
    if "tokenizer.ggml.scores" in metadata:
        writer.add_token_scores(metadata["tokenizer.ggml.scores"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unknown", writer.add_unk_token_id), ("padding", writer.add_pad_token_id)):
        if f"tokenizer.ggml.{key}_token_id" in metadata:
            add(metadata[f"tokenizer.ggml.{key}_token_id"])
    if "tokenizer.ggml.add_bos_token" in metadata:
        writer.add_add_bos_token(metadata["tokenizer.ggml.add_bos_token"])
    return len(tokens)


def write_llama_gguf(out: Path, tokenizer_from: Path, shape: str = "llama-0.4b", qtype: str = "Q4_0",
                     seed: int = 0) -> Path:
    from mlxd.loading.gguf.reader import read_gguf

    hidden, layers, heads, kv_heads, inter = SHAPES[shape]
    head_dim = hidden // heads
    ggml_type = gguf.GGMLQuantizationType[qtype]
    rng = np.random.default_rng(seed)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), "llama")
    writer.add_name(f"random {shape} {qtype}")
    writer.add_context_length(4096)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(FILE_TYPES[qtype])
    vocab = _copy_tokenizer(writer, read_gguf(tokenizer_from).metadata)
    writer.add_vocab_size(vocab)

    def matrix(name: str, rows: int, cols: int) -> None:
        w = rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(cols))
        writer.add_tensor(name, gguf.quants.quantize(w, ggml_type), raw_dtype=ggml_type)

    def norm(name: str) -> None:
        writer.add_tensor(name, np.ones(hidden, dtype=np.float32))

    matrix("token_embd.weight", vocab, hidden)
    for i in range(layers):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight")
        matrix(p + "attn_q.weight", heads * head_dim, hidden)
        matrix(p + "attn_k.weight", kv_heads * head_dim, hidden)
        matrix(p + "attn_v.weight", kv_heads * head_dim, hidden)
        matrix(p + "attn_output.weight", hidden, heads * head_dim)
        norm(p + "ffn_norm.weight")
        matrix(p + "ffn_gate.weight", inter, hidden)
        matrix(p + "ffn_up.weight", inter, hidden)
        matrix(p + "ffn_down.weight", hidden, inter)
    norm("output_norm.weight")
    matrix("output.weight", vocab, hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-0.4b")
    parser.add_argument("--type", choices=sorted(FILE_TYPES), default="Q4_0")
    parser.add_argument("--tokenizer-from", type=Path, help="a GGUF whose tokenizer to copy (default: SmolLM2)")
    args = parser.parse_args(argv)
    if args.tokenizer_from is None:
        from mlxd.demo_models import fetch_model
        args.tokenizer_from = fetch_model("smollm2")
    print(write_llama_gguf(args.out, args.tokenizer_from, args.shape, args.type))


if __name__ == "__main__":
    main()
