"""Parameters a model holds in float32 whatever dtype is asked for (loading/weights.py, float32_parameters):
GLM-4.7-Flash's routing bias, loaded in bfloat16, keeps the checkpoint's float32 values and routes a near-tie as
float32 does, where the bias rounded to bfloat16 would not; its router's weight, which the router computes with in
float32, is held widened.

On a CPU MLX multiplies float experts in float32 only, so the fixture is loaded in bfloat16 from an MLX-quantized
copy (8-bit where the rows allow), as a CPU serves a MoE model in bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from mlxd.loading.loader import load_model
from mlxd.loading.weights import cast_weights, float32_parameters, holds_float32

FIXTURE = "glm4_moe_lite"
GATE = "model.layers.1.mlp.gate"  # the first sparse layer's router
BIAS = "e_score_correction_bias"
ROUTER = "gate.weight"
# Experts 1 and 2 of group 0 (experts 0-3) nearly tie: 1's bias is 2**-10 higher, 2's score 2**-11 higher (its
# router row meets the input at 2**-9, sigmoid's slope there being 1/4). In bfloat16, whose step at 0.5 is 2**-8,
# both biases are 0.5, and expert 2 would win. Expert 0 is chosen always; experts 3-7 never, nor group 1.
NEAR_TIE_BIAS = [2.0, 0.5 + 2**-10, 0.5, -1.0, -1.0, -1.0, -1.0, -1.0]
FLOAT32_CHOICE = [0, 1]


def _craft_near_tie(folder: Path) -> None:
    weights = mx.load(str(folder / "model.safetensors"))
    mx.eval(weights)  # read before the file is written over
    router = mx.zeros_like(weights[f"{GATE}.weight"])
    router[2, 0] = 2**-9
    weights[f"{GATE}.weight"] = router
    weights[f"{GATE}.{BIAS}"] = mx.array(NEAR_TIE_BIAS, dtype=mx.float32)
    mx.save_safetensors(str(folder / "model.safetensors"), weights)


def _quantize(folder: Path) -> None:
    """The folder in mlx-lm's quantized layout: 8-bit, group 32, every layer whose rows hold whole groups."""
    model = load_model(folder, dtype="float32").model
    nn.quantize(model, 32, 8, class_predicate=lambda _, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % 32 == 0)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    config = json.loads((folder / "config.json").read_text())
    config["quantization"] = {"group_size": 32, "bits": 8}
    (folder / "config.json").write_text(json.dumps(config))


def _chosen(router: nn.Module) -> list[int]:
    x = mx.zeros((1, 1, 64), dtype=mx.bfloat16)
    x[..., 0] = 1.0
    indices, _ = router(x)
    return sorted(indices.reshape(-1).tolist())


@pytest.fixture
def near_tie_folder(model_folder) -> Path:
    folder = model_folder(FIXTURE)
    _craft_near_tie(folder)
    _quantize(folder)
    return folder


@pytest.mark.parametrize("layout", ["v5", "v4"])
def test_routing_bias_stays_float32_in_bfloat16(model_folder, layout):
    folder = model_folder(FIXTURE, layout)
    stored = mx.load(str(folder / "model.safetensors"))
    mx.eval(stored)  # read before _quantize writes the file over
    _quantize(folder)
    loaded = load_model(folder, dtype="bfloat16")
    assert loaded.dtype == "bfloat16" and loaded.quantized
    params = dict(tree_flatten(loaded.model.parameters()))
    biases = {k: v for k, v in params.items() if k.endswith(BIAS)}
    assert sorted(biases) == [f"model.layers.{i}.mlp.gate.{BIAS}" for i in (1, 2)]
    for name, bias in biases.items():
        assert bias.dtype == mx.float32 and mx.array_equal(bias, stored[name]).item(), name
    routers = {k: v for k, v in params.items() if k.endswith(f".{ROUTER}")}
    assert sorted(routers) == [f"model.layers.{i}.mlp.{ROUTER}" for i in (1, 2)]
    assert all(v.dtype == mx.float32 for v in routers.values())
    floats = {v.dtype for k, v in params.items()
              if k not in biases and k not in routers and mx.issubdtype(v.dtype, mx.floating)}
    assert floats == {mx.bfloat16}


def test_routers_are_widened_where_the_checkpoint_dtype_is_kept(model_folder):
    """A GPU's "auto" keeps a bfloat16 checkpoint's dtype (here asked as "keep"): the routers' weights and biases
    are held in float32 all the same, so the router does not widen its weight at every step. (Quantized: on a CPU
    MLX multiplies float experts in float32 only.)"""
    folder = model_folder(FIXTURE)
    _quantize(folder)
    stored = mx.load(str(folder / "model.safetensors"))
    mx.save_safetensors(str(folder / "model.safetensors"),
                        {k: v.astype(mx.bfloat16) if v.dtype == mx.float32 else v for k, v in stored.items()})
    params = dict(tree_flatten(load_model(folder, dtype="keep").model.parameters()))
    widened = {k for k in params if holds_float32(k, (BIAS, ROUTER))}
    assert widened == {f"model.layers.{i}.mlp.{name}" for i in (1, 2) for name in (ROUTER, f"gate.{BIAS}")}
    assert {params[k].dtype for k in widened} == {mx.float32}
    assert {v.dtype for k, v in params.items() if k not in widened and v.dtype != mx.uint32} == {mx.bfloat16}


def test_a_near_tie_routes_as_in_float32(near_tie_folder):
    bfloat16 = load_model(near_tie_folder, dtype="bfloat16").model.layers[1].mlp.gate
    float32 = load_model(near_tie_folder, dtype="float32").model.layers[1].mlp.gate
    assert bfloat16.weight.dtype == mx.float32 and bfloat16.e_score_correction_bias.dtype == mx.float32
    assert _chosen(bfloat16) == _chosen(float32) == FLOAT32_CHOICE
    # The same router with its bias rounded to bfloat16 picks the other expert: the input is a real near-tie.
    bfloat16.e_score_correction_bias = bfloat16.e_score_correction_bias.astype(mx.bfloat16)
    assert _chosen(bfloat16) == [0, 2]


def test_the_rule_matches_whole_name_parts(model_folder):
    model = load_model(model_folder(FIXTURE), dtype="float32").model
    names = float32_parameters(model)
    assert names == (BIAS, ROUTER)
    assert holds_float32(f"{GATE}.{BIAS}", names) and holds_float32(f"{GATE}.weight", names)
    assert not holds_float32(f"{GATE}.x_{BIAS}", names)
    assert not holds_float32("model.layers.0.mlp.gate_proj.weight", names)
    assert not holds_float32("model.layers.1.mlp.shared_experts.gate_proj.weight", names)
    assert float32_parameters(nn.Linear(2, 2)) == ()  # a model naming none holds every parameter as asked
    cast = cast_weights({f"{GATE}.{BIAS}": mx.ones(2), "w": mx.ones(2), "q": mx.ones(2, dtype=mx.uint32)},
                        "float16", names)
    assert [v.dtype for v in cast.values()] == [mx.float32, mx.float16, mx.uint32]
    kept = cast_weights({f"{GATE}.{BIAS}": mx.ones(2, dtype=mx.bfloat16), "w": mx.ones(2, dtype=mx.bfloat16)}, None,
                        names)
    assert [v.dtype for v in kept.values()] == [mx.float32, mx.bfloat16]


@pytest.mark.parametrize("arch", ["glm4_moe_lite", "nemotron_h"])
def test_models_that_route_with_glms_router_name_its_bias_and_weight(arch):
    # Nemotron-H's MoE layers use GLM-4.7-Flash's router; the rule must match parameters the model really has.
    model = load_model(Path(__file__).parents[1] / "fixtures" / "parity" / arch, dtype="float32").model
    names = float32_parameters(model)
    matched = [name for name, _ in tree_flatten(model.parameters()) if holds_float32(name, names)]
    assert names == (BIAS, ROUTER) and matched
    assert all(name.rsplit(".", 1)[0].endswith(".gate") for name in matched)  # the routers' parameters only
