"""The benchmark shapes of bench/models/shapes_hybrid.py (Qwen3.5, Gemma 4 26B-A4B, GLM-4.7-Flash): each tiny
variant, written as its published checkpoint lays it out, loads in mlxd and runs a forward pass; and an mlx-lm
conversion of Gemma 4 (`language_model.model.*`, experts split into `switch_glu`, an 8-bit router named after
mlx-lm's modules) loads and computes what its dequantized weights do. (bench/models/check_anchor.py compares these
folders against mlx-lm itself; CI has no mlx-lm.)"""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from bench.models import random_model, shapes_hybrid
from bench.models.random_model import write_hybrid
from mlxd.loading.loader import load_model

IDS = mx.array([[5, 17, 100, 42, 256, 7, 300, 99, 64, 3, 128, 250, 11, 77, 199, 310]])


@pytest.mark.parametrize("shape", shapes_hybrid.HYBRID)
def test_tiny_shape_loads_and_runs(shape, tmp_path):
    folder = write_hybrid(shape, "float32", tmp_path / shape, tiny=True)
    config = json.loads((folder / "config.json").read_text())
    names = shapes_hybrid.tensors(shape, config)
    loaded = load_model(folder, dtype="float32")
    logits = loaded.model(IDS)
    assert logits.shape == (1, IDS.shape[1], 320)
    assert bool(mx.isfinite(logits).all()) and mx.abs(logits).max().item() > 0.1
    # Published names: the vision-language layouts' decoder under model.language_model.
    assert any(n.startswith("model.language_model.") for n in names) == (shape != shapes_hybrid.GLM)


@pytest.mark.parametrize("shape,layers", [(shapes_hybrid.GLM, 2), (shapes_hybrid.QWEN_MOE, 2),
                                          (shapes_hybrid.GEMMA4, 6)])
def test_the_first_layers_of_a_shape_load_alone(shape, layers, tmp_path):
    """--layers: a bfloat16 MoE too big for the GPU machine's disk is benchmarked on its first layers."""
    loaded = load_model(write_hybrid(shape, "float32", tmp_path / shape, tiny=True, layers=layers), dtype="float32")
    assert len(loaded.model.layers) == layers
    assert loaded.model(IDS).shape == (1, IDS.shape[1], 320)


def test_cut_shapes_keep_their_layer_pattern():
    with pytest.raises(ValueError, match="multiple of 6"):
        shapes_hybrid.config(shapes_hybrid.GEMMA4, layers=4)
    config = random_model._config("qwen3-30b-a3b", "bfloat16", 4, 3)
    assert config["num_hidden_layers"] == 3 and "model.layers.2.mlp.gate" in config["quantization"]
    assert "model.layers.3.mlp.gate" not in config["quantization"]
    names = random_model._float_shapes("gpt-oss-20b", stacked=False, layers=3)
    assert "model.layers.2.mlp.router.weight" in names and "model.layers.3.mlp.router.weight" not in names


def _to_mlx_lm_gemma4(weights: dict[str, mx.array], layers: int) -> tuple[dict[str, mx.array], dict[str, mx.array]]:
    """(mlx-lm's 4-bit conversion of the published Gemma 4 weights, the float weights those codes decode to, under
    the published names)."""
    converted, decoded = {}, {}
    router_bits = 8

    def quantize(new: str, old: str, value: mx.array, bits: int = 4) -> mx.array:
        w, s, b = mx.quantize(value, group_size=64, bits=bits)
        converted.update({new + ".weight": w, new + ".scales": s, new + ".biases": b})
        return mx.dequantize(w, s, b, group_size=64, bits=bits)

    for name, value in weights.items():
        new = "language_model.model." + name.removeprefix("model.language_model.")
        if value.ndim < 2:
            converted[new] = decoded[name] = value
        elif name.endswith("experts.gate_up_proj"):
            glu = new.replace("experts.gate_up_proj", "experts.switch_glu")
            gate, up = mx.split(value, 2, axis=-2)
            decoded[name] = mx.concatenate([quantize(glu + ".gate_proj", name, gate),
                                            quantize(glu + ".up_proj", name, up)], axis=-2)
        elif name.endswith("experts.down_proj"):
            decoded[name] = quantize(new.replace("experts.down_proj", "experts.switch_glu.down_proj"), name, value)
        else:
            bits = router_bits if name.endswith("router.proj.weight") else 4
            decoded[name] = quantize(new.removesuffix(".weight"), name, value, bits)
    return converted, decoded


def test_mlx_lm_converted_gemma4_loads(tmp_path):
    float_folder = write_hybrid(shapes_hybrid.GEMMA4, "float32", tmp_path / "float", tiny=True)
    config = json.loads((float_folder / "config.json").read_text())
    layers = config["text_config"]["num_hidden_layers"]
    converted, decoded = _to_mlx_lm_gemma4(mx.load(str(float_folder / "model.safetensors")), layers)
    for name, weights in (("mlx-lm", converted), ("decoded", decoded)):
        (tmp_path / name).mkdir()
        mx.save_safetensors(str(tmp_path / name / "model.safetensors"), weights)
        for file in ("tokenizer.json", "tokenizer_config.json"):
            (tmp_path / name / file).write_bytes((float_folder / file).read_bytes())
    quant = {"group_size": 64, "bits": 4, **{f"language_model.model.layers.{i}.router.proj":
                                              {"group_size": 64, "bits": 8} for i in range(layers)}}
    (tmp_path / "mlx-lm" / "config.json").write_text(json.dumps({**config, "quantization": quant,
                                                                 "quantization_config": quant}))
    (tmp_path / "decoded" / "config.json").write_text(json.dumps(config))

    quantized = load_model(tmp_path / "mlx-lm", dtype="keep")
    assert quantized.quantized
    reference = load_model(tmp_path / "decoded", dtype="float32").model(IDS)
    assert mx.abs(quantized.model(IDS) - reference).max().item() < 1e-3
    dequantized = load_model(tmp_path / "mlx-lm", dtype="float32")  # reads the router's 8 bits under our name
    assert mx.abs(dequantized.model(IDS) - reference).max().item() < 1e-3


def test_an_echo_model_repeats_its_newest_token_by_a_wide_margin(tmp_path):
    """random_model --echo (the speculation oracle's target): greedy decoding gives back the newest token, with a
    margin no bfloat16 rounding between a verify step and a decode step can undo."""
    folder = random_model.write_random_model("llama-0.2b", "bfloat16", tmp_path / "echo", layers=2, echo=True)
    logits = load_model(folder, dtype="bfloat16").model(IDS)[0].astype(mx.float32)
    assert mx.argmax(logits, axis=-1).tolist() == IDS[0].tolist()
    top = mx.sort(logits, axis=-1)[:, -2:]
    assert bool((top[:, 1] - top[:, 0] > 0.5 * top[:, 1]).all())  # the runner-up at most half the newest's logit
