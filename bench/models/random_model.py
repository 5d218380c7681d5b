"""Write a random-weight Hugging Face folder of a published model's shape, for speed benchmarks.

    python -m bench random_model --shape llama-1b --dtype bfloat16 [--bits 4] --out /tmp/llama-1b
    python -m bench random_model --shape qwen3-moe-small --dtype float32 --out /tmp/qwen3-moe-small
    python -m bench random_model --shape qwen3-30b-a3b --bits 4 --out /tmp/qwen3-30b-a3b-4bit
    python -m bench random_model --shape gpt-oss-20b --out /tmp/gpt-oss-20b
    python -m bench random_model --shape qwen3.5-35b-a3b --out /tmp/qwen3.5-35b-a3b      # also qwen3.5-4b,
    python -m bench random_model --shape glm-4.7-flash --bits 4 --out /tmp/glm-4.7-flash  # gemma4-26b-a4b
    python -m bench random_model --shape gemma4-26b-a4b --tiny --dtype float32 --out /tmp/gemma4-tiny
    python -m bench random_model --shape qwen3.5-35b-a3b --layers 20 --out /tmp/q35-half   # 20 of its 40 layers

The tokenizer is the 320-token test tokenizer: ids beyond it decode to nothing, which is fine for timing. Float
MoE shapes are written as Hugging Face checkpoints hold them (one tensor per expert and projection), quantized ones
as mlx-lm converts them, gpt-oss as OpenAI publishes it (MXFP4 experts); mlxd and mlx-lm load all three.

The Qwen3.5, Gemma 4 and GLM-4.7-Flash shapes (shapes_hybrid.py) are written as their published checkpoints lay
them out, or with --bits as mlx-lm's converter writes them: its own model class, built lazily from the config, names
the tensors and its quant predicate picks the 8-bit ones, so --bits for these needs an interpreter with mlx-lm (the
anchor's venv; mlxd does not depend on it). Big folders are split into shards of SHARD_BYTES with an index.
`--layers N` keeps any shape's first N layers, each as published: Qwen3.5-35B-A3B in bfloat16 (69 GB) fits
neither the GPU machine's 64 GiB disk nor twice (mlxd's copy and mlx-lm's) in one H200, nor do Qwen3-30B-A3B
(61 GB), GLM-4.7-Flash (~60 GB) or Gemma 4 26B-A4B (~52 GB) in bfloat16 beside the rest; with about half their
layers they do, and a decode step's ratio is a per-layer one.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from bench.models import shapes_hybrid

SHAPES = {
    # hidden, layers, heads, kv heads, intermediate, vocab
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152),
    "llama-0.2b": (1024, 12, 16, 4, 2816, 32000),
    "llama-1b": (2048, 16, 32, 8, 8192, 128256),
    "llama-8b": (4096, 32, 32, 8, 14336, 128256),
    "qwen3-moe-small": (1024, 8, 16, 4, 3072, 32000),
    "qwen3-30b-a3b": (2048, 48, 32, 4, 6144, 151936),
    "gpt-oss-small": (512, 4, 8, 2, 512, 32000),
    "gpt-oss-20b": (2880, 24, 64, 8, 2880, 201088),
}
# MoE shapes: head_dim, experts, experts per token, one expert's intermediate size.
MOE = {
    "qwen3-moe-small": (64, 32, 4, 256),
    "qwen3-30b-a3b": (128, 128, 8, 768),
    "gpt-oss-small": (64, 8, 2, 512),
    "gpt-oss-20b": (64, 32, 4, 2880),
}
SHARD_BYTES = 4 << 30
ECHO_SCALE = 1e-4  # --echo: the layers' output projections, against the embeddings' 1 (see write_random_model)
TOKENIZER = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity" / "llama"
TEST_VOCABULARY = 320


def write_tokenizer(out: Path, source: Path | None = None) -> int:
    """The test tokenizer (320 tokens) into `out`, or the tokenizer of `source` (a model folder or GGUF mlxd loads:
    its tokenizers JSON, as llguidance reads it, and its special tokens): a real vocabulary for the benchmarks that
    need one (constrained decoding), on a machine that cannot fetch the model itself. Returns its vocabulary's
    size."""
    if source is None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(TOKENIZER / name, out / name)
        return TEST_VOCABULARY
    from mlxd.loading.model_source import load_model_tokenizer
    tokenizer = load_model_tokenizer(source)
    (out / "tokenizer.json").write_text(tokenizer.serialized)
    plain = json.loads(tokenizer.serialized)
    names = {token["id"]: token["content"] for token in plain.get("added_tokens", [])}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": tokenizer.bos_token_id is not None,
              "bos_token": names.get(tokenizer.bos_token_id), "eos_token": names.get(
                  tokenizer.eos_token_ids[0]) if tokenizer.eos_token_ids else None}
    (out / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return tokenizer.vocab_size


def write_random_model(shape: str, dtype: str, out: Path, seed: int = 0, bits: int = 0,
                       layers: int | None = None, tokenizer: Path | None = None, echo: bool = False) -> Path:
    """bits 4 or 8: the matrices stored MLX-quantized (affine, group size 64) as mlx-lm's converter writes them
    (MoE experts stacked under `switch_mlp`, routers at 8 bits). gpt-oss is written as OpenAI publishes it: MXFP4
    experts (`*_blocks`, `*_scales`), everything else in `dtype`; `bits` does not apply to it. `tokenizer`: a
    model whose tokenizer to take (write_tokenizer).

    `echo`: a model whose greedy next token is its newest one, by a wide margin: every layer's output
    projections (attention's o_proj, the MLP's down_proj) scaled by ECHO_SCALE, so the residual stream stays
    the token's embedding, and the output head a copy of the embeddings. Its steps cost what any weights of the
    shape cost; its greedy output is the same at any batch or verify width. A random model's logits are nearly
    level, so in bfloat16 a verify step's argmax and a decode step's differ within a few tokens (session 38: an
    oracle's recorded continuation held for 0.12-0.48 of its drafts on a random 8B), which an echo model's
    margin rules out: the token's own logit 7-8x the runner-up's at 1,024 wide, 8-10x at 2,048 (bfloat16, 2
    layers, session 38), growing with the width."""
    import mlx.core as mx
    if shape in shapes_hybrid.HYBRID:
        return write_hybrid(shape, dtype, out, seed, bits, layers=layers)
    if bits and _is_gpt_oss(shape):
        raise ValueError("gpt-oss shapes are written with MXFP4 experts as published; --bits does not apply")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    config = _config(shape, dtype, bits, layers)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    if write_tokenizer(out, tokenizer) > config["vocab_size"]:
        raise ValueError(f"{tokenizer}'s vocabulary is wider than {shape}'s {config['vocab_size']} tokens")
    mx.random.seed(seed)

    embeddings = []  # echo: the head copies them

    def tensors():
        for name, s in _float_shapes(shape, stacked=bool(bits), layers=layers).items():
            if len(s) == 1:
                yield name, (mx.zeros(s, dtype=getattr(mx, dtype)) if name.endswith(("bias", "sinks")) else
                             mx.ones(s, dtype=getattr(mx, dtype)))
                continue
            scale = ECHO_SCALE if echo and name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
            w = (mx.random.normal(s) * (scale / np.sqrt(s[-1]))).astype(getattr(mx, dtype))
            if echo and name == "model.embed_tokens.weight":
                embeddings.append(w)
            elif echo and name == "lm_head.weight":
                w = embeddings.pop()
            if bits and name.endswith(".weight"):
                stem = name.removesuffix(".weight")
                layer_bits = config["quantization"].get(stem, {}).get("bits", bits)
                yield from zip((name, stem + ".scales", stem + ".biases"),
                               mx.quantize(w, group_size=64, bits=layer_bits))
            else:
                yield name, w
        if _is_gpt_oss(shape):
            yield from _mxfp4_experts(shape, layers)
    # One tensor at a time into shards: a bfloat16 Qwen3-30B-A3B (61 GB) is never held whole, so it can be written
    # to a RAM disk (/dev/shm) on a machine whose own disk cannot hold it.
    _save_sharded(tensors(), out)
    return out


def write_hybrid(shape: str, dtype: str, out: Path, seed: int = 0, bits: int = 0, tiny: bool = False,
                 layers: int | None = None) -> Path:
    """A shapes_hybrid shape: the published layout, or (bits) mlx-lm's conversion of it."""
    import mlx.core as mx
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    config = shapes_hybrid.config(shape, tiny, layers)
    _set_dtype(config, dtype)
    write_tokenizer(out)
    mx.random.seed(seed)
    if not bits:
        (out / "config.json").write_text(json.dumps(config, indent=1))
        made = ((name, _random(name, s, getattr(mx, dtype))) for name, s in
                shapes_hybrid.tensors(shape, config).items())
        _save_sharded(made, out)
        return out
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes, quantize_model, save_config
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))  # lazy: its own arrays are never evaluated
    model, qconfig = quantize_model(model, config, 64, bits)
    save_config(qconfig, out / "config.json")
    cast = getattr(model, "cast_predicate", lambda _: True)
    quantized = {path for path, m in model.named_modules() if "scales" in m}

    def tensors():
        flat: list[tuple[str, mx.array]] = tree_flatten(model.parameters())  # type: ignore[assignment]
        for name, value in flat:
            stem = name.rsplit(".", 1)[0]
            if stem in quantized and name.endswith(".weight"):
                q = qconfig["quantization"].get(stem, qconfig["quantization"])
                shape_ = (*value.shape[:-1], value.shape[-1] * 32 // q["bits"])
                w = _random(name, shape_, getattr(mx, dtype))
                yield from zip((name, stem + ".scales", stem + ".biases"),
                               mx.quantize(w, group_size=q["group_size"], bits=q["bits"]))
            elif stem in quantized:
                continue  # scales and biases: written with their weight
            else:
                yield name, _random(name, value.shape, getattr(mx, dtype) if cast(name) else mx.float32)
    _save_sharded(tensors(), out)
    return out


def hybrid_bytes(shape: str, dtype: str, bits: int = 0, tiny: bool = False, layers: int | None = None) -> int:
    """The tensors' bytes write_hybrid would write (the folder's size, less a few KB of JSON), without writing.
    bits: packed codes plus one scale and one bias per group of 64 (in `dtype`), 8 bits for the routers and
    gates mlx-lm's quant predicates keep at 8 (a vector's or a non-64-divisible matrix's bytes as float)."""
    import mlx.core as mx
    size = getattr(mx, dtype).size
    total = 0
    for name, s in shapes_hybrid.tensors(shape, shapes_hybrid.config(shape, tiny, layers)).items():
        count = int(np.prod(s))
        if not bits or len(s) == 1 or s[-1] % 64 or name.endswith(("A_log", "dt_bias", "conv1d.weight")):
            total += count * size
            continue
        layer_bits = 8 if name.endswith(("mlp.gate.weight", "shared_expert_gate.weight", "router.proj.weight")) \
            else bits
        total += count * layer_bits // 8 + 2 * (count // 64) * size
    return total


def _set_dtype(config: dict, dtype: str) -> None:
    for c in (config, config.get("text_config") or {}):
        if "dtype" in c:
            c["dtype"] = dtype


def _random(name: str, shape: tuple[int, ...], dtype):
    """Normals scaled by 1/sqrt(fan-in) for matrices; 1-D: biases and routing-bias zeros, the rest ones."""
    import mlx.core as mx
    if len(shape) == 1:
        zero = name.endswith(("bias", "dt_bias", "e_score_correction_bias", "sinks"))
        return mx.zeros(shape, dtype=dtype) if zero else mx.ones(shape, dtype=dtype)
    return (mx.random.normal(shape) * (1.0 / np.sqrt(shape[-1]))).astype(dtype)


def _save_sharded(made, out: Path) -> None:
    """Evaluates one tensor at a time and writes a shard whenever SHARD_BYTES are held, with an index when there
    is more than one."""
    import mlx.core as mx
    shards: list[dict] = [{}]
    held = 0
    paths: list[Path] = []

    def flush() -> None:
        paths.append(out / f"model-{len(paths) + 1:05d}.safetensors")
        mx.save_safetensors(str(paths[-1]), shards[-1], metadata={"format": "pt"})
        weight_map.update({k: paths[-1].name for k in shards[-1]})
        shards[-1] = {}

    weight_map: dict[str, str] = {}
    for name, value in made:
        mx.eval(value)
        if held and held + value.nbytes > SHARD_BYTES:
            flush()
            held = 0
        shards[-1][name] = value
        held += value.nbytes
    flush()
    if len(paths) == 1:
        paths[0].rename(out / "model.safetensors")
        return
    total = sum(p.stat().st_size for p in paths)
    final = {}
    for i, p in enumerate(paths):
        name = f"model-{i + 1:05d}-of-{len(paths):05d}.safetensors"
        p.rename(out / name)
        final.update({k: name for k, v in weight_map.items() if v == p.name})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": final}, indent=1))


def folder_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.iterdir() if p.is_file())


def _dims(shape: str, layers: int | None) -> tuple[int, ...]:
    """SHAPES[shape], with only the first `layers` layers when given."""
    hidden, all_layers, *rest = SHAPES[shape]
    return (hidden, min(all_layers, layers or all_layers), *rest)


def _config(shape: str, dtype: str, bits: int, layers_kept: int | None = None) -> dict:
    hidden, layers, heads, kv_heads, inter, vocab = _dims(shape, layers_kept)
    head_dim, experts, top_k, expert_inter = MOE.get(shape, (hidden // heads, 0, 0, 0))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "intermediate_size": inter, "vocab_size": vocab, "rms_norm_eps": 1e-5, "head_dim": head_dim,
              "max_position_embeddings": 8192, "rope_theta": 500000.0, "tie_word_embeddings": False,
              "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype}
    if _is_gpt_oss(shape):  # gpt-oss-20b's published config.json's values (transformers-4 layout)
        config.update(model_type="gpt_oss", architectures=["GptOssForCausalLM"], num_local_experts=experts,
                      num_experts_per_tok=top_k, sliding_window=128, attention_bias=True, swiglu_limit=7.0,
                      max_position_embeddings=131072, rope_theta=150000.0,
                      layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
                      rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                    "truncate": False, "original_max_position_embeddings": 4096},
                      quantization_config={"quant_method": "mxfp4", "modules_to_not_convert": [
                          "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]})
        return config
    if experts:
        config.update(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], num_experts=experts,
                      num_experts_per_tok=top_k, moe_intermediate_size=expert_inter, norm_topk_prob=True,
                      decoder_sparse_step=1, mlp_only_layers=[])
    if bits:
        quantization: dict[str, object] = {"group_size": 64, "bits": bits}
        if experts:  # mlx-lm's qwen3_moe quant_predicate keeps the routers at 8 bits
            quantization.update({f"model.layers.{i}.mlp.gate": {"group_size": 64, "bits": 8} for i in range(layers)})
        config["quantization"] = quantization
    return config


def _float_shapes(shape: str, stacked: bool, layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor written from random normals (norms as ones, biases and sinks as zeros). stacked: MoE experts
    as one [E, out, in] tensor per projection under `switch_mlp` (mlx-lm's layout), else one per expert."""
    hidden, layers, heads, kv_heads, inter, vocab = _dims(shape, layers)
    head_dim, experts, _, expert_inter = MOE.get(shape, (hidden // heads, 0, 0, 0))
    gpt_oss = _is_gpt_oss(shape)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
              "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        attention = {"q_proj": heads * head_dim, "k_proj": kv_heads * head_dim, "v_proj": kv_heads * head_dim}
        for name, rows in attention.items():
            shapes[f"{p}self_attn.{name}.weight"] = (rows, hidden)
            if gpt_oss:
                shapes[f"{p}self_attn.{name}.bias"] = (rows,)
        shapes.update({p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                       p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)})
        if gpt_oss:
            shapes.update({p + "self_attn.o_proj.bias": (hidden,), p + "self_attn.sinks": (heads,),
                           p + "mlp.router.weight": (experts, hidden), p + "mlp.router.bias": (experts,),
                           p + "mlp.experts.gate_up_proj_bias": (experts, 2 * expert_inter),
                           p + "mlp.experts.down_proj_bias": (experts, hidden)})
        elif experts:
            shapes.update({p + "self_attn.q_norm.weight": (head_dim,), p + "self_attn.k_norm.weight": (head_dim,),
                           p + "mlp.gate.weight": (experts, hidden)})
            projections = {"gate_proj": (expert_inter, hidden), "up_proj": (expert_inter, hidden),
                           "down_proj": (hidden, expert_inter)}
            for name, (rows, columns) in projections.items():
                if stacked:
                    shapes[f"{p}mlp.switch_mlp.{name}.weight"] = (experts, rows, columns)
                else:
                    shapes.update({f"{p}mlp.experts.{e}.{name}.weight": (rows, columns) for e in range(experts)})
        else:
            shapes.update({p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                           p + "mlp.down_proj.weight": (hidden, inter)})
    return shapes


def _is_gpt_oss(shape: str) -> bool:
    return shape.startswith("gpt-oss")


def _mxfp4_experts(shape: str, layers_kept: int | None = None):
    """gpt-oss's experts as published, (name, array) pairs: uint8 blocks of 32 E2M1 codes (16 bytes) and one E8M0
    scale per block. Random codes have an RMS of ~2.9, so the exponent 120 (2**-7) gives weights of about
    1/sqrt(2880), like the normals."""
    import mlx.core as mx
    hidden, layers, _, _, _, _ = _dims(shape, layers_kept)
    _, experts, _, expert_inter = MOE[shape]
    for i in range(layers):
        p = f"model.layers.{i}.mlp.experts."
        for name, rows, columns in (("gate_up_proj", 2 * expert_inter, hidden), ("down_proj", hidden, expert_inter)):
            yield p + name + "_blocks", mx.random.randint(0, 256, (experts, rows, columns // 32, 16)).astype(mx.uint8)
            yield p + name + "_scales", mx.full((experts, rows, columns // 32), 120, dtype=mx.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted([*SHAPES, *shapes_hybrid.HYBRID]), required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--bits", type=int, default=0, choices=[0, 4, 8],
                        help="store matrices MLX-quantized (not gpt-oss: its experts are MXFP4)")
    parser.add_argument("--tiny", action="store_true",
                        help="Qwen3.5 / Gemma 4 / GLM-4.7-Flash shapes: same keys and structure, small numbers")
    parser.add_argument("--size-only", action="store_true",
                        help="Qwen3.5 / Gemma 4 / GLM-4.7-Flash shapes: print the bytes it would write, write nothing")
    parser.add_argument("--layers", type=int, default=None,
                        help="only the first N layers, each as published (a bf16 MoE that must fit the disk)")
    parser.add_argument("--tokenizer", type=Path,
                        help="take this model's tokenizer (a folder or GGUF), not the 320-token test one")
    parser.add_argument("--echo", action="store_true",
                        help="dense shapes: greedy decoding repeats the newest token, by a wide margin (a ceiling's "
                             "drafts that always hold; see write_random_model)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.size_only:
        size = hybrid_bytes(args.shape, args.dtype, args.bits, args.tiny, args.layers)
        print(f"{args.shape}{' tiny' if args.tiny else ''} {args.dtype}{f' {args.bits}-bit' if args.bits else ''}: "
              f"{size / 1e9:.2f} GB ({size / 2**30:.2f} GiB)")
        return
    if args.out is None:
        parser.error("--out is required")
    if args.shape in shapes_hybrid.HYBRID:
        out = write_hybrid(args.shape, args.dtype, args.out, bits=args.bits, tiny=args.tiny, layers=args.layers)
    else:
        out = write_random_model(args.shape, args.dtype, args.out, bits=args.bits, layers=args.layers,
                                 tokenizer=args.tokenizer, echo=args.echo)
    size = folder_bytes(out)
    print(f"{out}: {size / 1e9:.3f} GB on disk ({size / 2**30:.3f} GiB)")


if __name__ == "__main__":
    main()
