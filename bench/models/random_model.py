"""Write a random-weight Hugging Face folder of a published model's shape, for speed benchmarks.

    python -m bench random_model --shape llama-1b --dtype bfloat16 [--bits 4] --out /tmp/llama-1b
    python -m bench random_model --shape qwen3-moe-small --dtype float32 --out /tmp/qwen3-moe-small

The tokenizer is the 320-token test tokenizer: ids beyond it decode to nothing, which is fine for timing. MoE
shapes are written as Hugging Face checkpoints hold them: one tensor per expert and projection.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

SHAPES = {
    # hidden, layers, heads, kv heads, intermediate, vocab
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152),
    "llama-1b": (2048, 16, 32, 8, 8192, 128256),
    "llama-8b": (4096, 32, 32, 8, 14336, 128256),
    "qwen3-moe-small": (1024, 8, 16, 4, 3072, 32000),
    "qwen3-30b-a3b": (2048, 48, 32, 4, 6144, 151936),
}
# MoE shapes (Qwen3-MoE): head_dim, experts, experts per token, one expert's intermediate size.
MOE = {
    "qwen3-moe-small": (64, 32, 4, 256),
    "qwen3-30b-a3b": (128, 128, 8, 768),
}
TOKENIZER = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity" / "llama"


def write_random_model(shape: str, dtype: str, out: Path, seed: int = 0, bits: int = 0) -> Path:
    """bits 4 or 8: the matrices stored MLX-quantized (affine, group size 64), as mlx-lm's converter does."""
    import mlx.core as mx
    hidden, layers, heads, kv_heads, inter, vocab = SHAPES[shape]
    head_dim, experts, top_k, expert_inter = MOE.get(shape, (hidden // heads, 0, 0, 0))
    if bits and experts:
        raise ValueError("MoE shapes are written as float Hugging Face checkpoints only")
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "intermediate_size": inter, "vocab_size": vocab, "rms_norm_eps": 1e-5, "head_dim": head_dim,
              "max_position_embeddings": 8192, "rope_theta": 500000.0, "tie_word_embeddings": False,
              "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype}
    if bits:
        config["quantization"] = {"group_size": 64, "bits": bits}
    if experts:
        config.update(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], num_experts=experts,
                      num_experts_per_tok=top_k, moe_intermediate_size=expert_inter, norm_topk_prob=True,
                      decoder_sparse_step=1, mlp_only_layers=[])
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, out / name)
    mx.random.seed(seed)
    mx_dtype = getattr(mx, dtype)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
              "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                       p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
                       p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
                       p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                       p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)})
        if experts:
            shapes.update({p + "self_attn.q_norm.weight": (head_dim,), p + "self_attn.k_norm.weight": (head_dim,),
                           p + "mlp.gate.weight": (experts, hidden)})
            for e in range(experts):
                shapes.update({f"{p}mlp.experts.{e}.gate_proj.weight": (expert_inter, hidden),
                               f"{p}mlp.experts.{e}.up_proj.weight": (expert_inter, hidden),
                               f"{p}mlp.experts.{e}.down_proj.weight": (hidden, expert_inter)})
        else:
            shapes.update({p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                           p + "mlp.down_proj.weight": (hidden, inter)})
    weights = {}
    for name, s in shapes.items():
        if len(s) == 1:
            weights[name] = mx.ones(s, dtype=mx_dtype)
            continue
        made = {name: (mx.random.normal(s) * (1.0 / np.sqrt(s[1]))).astype(mx_dtype)}
        if bits:
            stem = name.removesuffix(".weight")
            made = dict(zip((name, stem + ".scales", stem + ".biases"),
                            mx.quantize(made[name], group_size=64, bits=bits)))
        mx.eval(made)  # one tensor at a time: a MoE checkpoint has thousands
        weights.update(made)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--bits", type=int, default=0, choices=[0, 4, 8], help="store matrices MLX-quantized")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(write_random_model(args.shape, args.dtype, args.out, bits=args.bits))


if __name__ == "__main__":
    main()
