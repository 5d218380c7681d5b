"""GLM-4.7-Flash (glm4_moe_lite) against transformers' float32 fixture, in both config layouts: logits within the
issue's 2e-4 at every position, greedy ids, chunked prefill, cached decode; its latent KV cache's size; its
quirks (lora norms at eps 1e-6, rope θ in either layout, group-limited sigmoid routing)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxd.engine.kv_budget import KvLayout
from mlxd.loading.loader import load_model
from mlxd.models.glm4_moe_lite.args import ModelArgs
from mlxd.models.glm4_moe_lite.experts import GroupLimitedRouter
from mlxd.models.glm4_moe_lite.latent_weights import kv_b_from_absorbed
from mlxd.models.glm4_moe_lite.model import Model
from tests.helpers.parity import copy_model_folder
from tests.helpers.parity_checks import greedy_with_cache, max_decode_error, prefill_in_chunks

ARCH = "glm4_moe_lite"
LAYOUTS = ["v5", "v4"]
LOGIT_TOL = 2e-4  # the bar for this family (HYBRID_NOTES.md §0)
SELF_TOL = 1e-5   # the same model two ways: only the order of float32 operations differs


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    """(layout, fuse) -> (LoadedModel in float32, expected arrays), each loaded once."""
    loaded: dict[tuple[str, bool], tuple] = {}

    def get(layout: str, fuse: bool = False):
        if (layout, fuse) not in loaded:
            folder = copy_model_folder(ARCH, layout, tmp_path_factory.mktemp(f"glm_{layout}") / ARCH)
            loaded[layout, fuse] = (load_model(folder, dtype="float32", fuse=fuse),
                                    mx.load(str(folder / "expected.safetensors")))
        return loaded[layout, fuse]

    return get


@pytest.mark.parametrize("fuse", [False, True], ids=["split", "fused"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_at_every_position_match_transformers(glm, layout, fuse):
    loaded, expected = glm(layout, fuse)
    logits = loaded.model(expected["input_ids"])
    assert logits.shape == (1, 40, 320)
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL


@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_decode_with_the_latent_cache_matches_transformers(glm, layout):
    loaded, expected = glm(layout)
    want = expected["greedy_ids"].tolist()
    assert greedy_with_cache(loaded.model, expected["input_ids"], len(want)) == want


@pytest.mark.parametrize("chunk", [1, 3, 5, 7, 12, 16, 39])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_prefill_equals_one_shot(glm, layout, chunk):
    loaded, expected = glm(layout)
    one_shot = loaded.model(expected["input_ids"])
    chunked, cache = prefill_in_chunks(loaded.model, expected["input_ids"], chunk)
    assert all(c.offset == 40 for c in cache)
    assert mx.abs(chunked - one_shot).max().item() < SELF_TOL


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cached_decode_equals_the_full_pass(glm, layout):
    """Decode steps take the absorbed form (kv_b_proj folded into query and output), the full pass expands."""
    loaded, expected = glm(layout)
    assert max_decode_error(loaded.model, expected["input_ids"], expected["greedy_ids"]) < SELF_TOL


def test_a_decode_batchs_query_absorbed_heads_first_equals_row_by_row(glm, monkeypatch):
    """attention.QUERY_HEADS_FIRST: per head, one product over the batch's rows instead of one per row."""
    from mlxd.models.glm4_moe_lite import attention as latent_attention
    attention = glm("v5")[0].model.layers[0].self_attn
    x = mx.random.normal((5, attention.n_heads, 1, attention.nope))
    row_by_row = attention._up_projection(x, value=False)
    monkeypatch.setattr(latent_attention, "QUERY_HEADS_FIRST", True)
    heads_first = attention._up_projection(x, value=False)
    assert heads_first.shape == row_by_row.shape == (5, attention.n_heads, 1, attention.latent_dims)
    assert mx.abs(heads_first - row_by_row).max().item() < SELF_TOL


def test_cache_holds_the_latent_and_the_budget_counts_it(glm):
    """Per token and layer: kv_lora_rank + qk_rope_head_dim values, not heads x (qk_head_dim + v_head_dim)."""
    loaded, expected = glm("v5")
    args = loaded.args
    cache = loaded.model.make_cache()
    loaded.model(expected["input_ids"], cache)
    keys, values = cache[0].kept()
    assert keys.shape == (1, 1, 40, args.kv_lora_rank) and values.shape == (1, 1, 40, args.qk_rope_head_dim)
    layout = KvLayout.of(cache)
    latent = (args.kv_lora_rank + args.qk_rope_head_dim) * 4
    plain = args.num_attention_heads * (args.qk_head_dim + args.v_head_dim) * 4
    assert layout.layers == ((latent, None),) * args.num_hidden_layers
    assert (latent, plain) == (128, 576)  # 4.5x less than plain attention of the same shape


def test_lora_norms_keep_eps_1e6_whatever_rms_norm_eps_says(glm):
    loaded, _ = glm("v4")
    attention = loaded.model.layers[0].self_attn
    assert loaded.args.rms_norm_eps == 1e-5
    assert attention.q_a_layernorm.eps == attention.kv_a_layernorm.eps == 1e-6
    assert loaded.model.layers[0].input_layernorm.eps == 1e-5


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rope_theta_is_read_from_either_layout(glm, layout):
    loaded, _ = glm(layout)
    rope = loaded.model.layers[0].self_attn.rope
    assert rope.traditional  # rope_interleave: adjacent pairs
    assert rope._periods[1].item() == pytest.approx(250000.0 ** (2 / 8), rel=1e-6)


def test_published_config_keys_pick_the_dense_layers_and_drop_the_mtp_layer(glm):
    base = dict(model_type=ARCH, num_hidden_layers=4, hidden_size=64, n_routed_experts=8, n_group=2)
    assert ModelArgs.from_dict({**base, "first_k_dense_replace": 2}).mlp_layer_types == ["dense"] * 2 + ["sparse"] * 2
    assert ModelArgs.from_dict(base).mlp_layer_types == ["dense"] + ["sparse"] * 3  # transformers' default
    loaded, _ = glm("v4")
    extra = {"model.layers.3.self_attn.kv_b_proj.weight": mx.zeros((4, 4)), "model.norm.weight": mx.ones((64,))}
    assert list(loaded.model.sanitize(extra)) == ["model.norm.weight"]
    with pytest.raises(ValueError, match="topk_method"):
        ModelArgs.from_dict({**base, "topk_method": "greedy"})


def _reference_routing(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, args: ModelArgs):
    """transformers' Glm4MoeLiteTopkRouter for one token, in float64: (sorted experts, their weights)."""
    scores = 1 / (1 + np.exp(-(weight @ x)))
    choice = scores + bias
    groups = choice.reshape(args.n_group, -1)
    group_scores = np.sort(groups, axis=-1)[:, -2:].sum(-1)
    kept = np.argsort(-group_scores)[: args.topk_group]
    masked = np.full_like(groups, -np.inf)
    masked[kept] = groups[kept]
    experts = np.sort(np.argsort(-masked.reshape(-1))[: args.num_experts_per_tok])
    w = scores[experts] / (scores[experts].sum() + 1e-20) * args.routed_scaling_factor
    return experts, w


@pytest.mark.parametrize("n_group,topk_group", [(1, 1), (2, 1), (4, 2), (4, 3)])
def test_router_matches_the_group_limited_rule(n_group, topk_group):
    """Including tokens whose biased scores are negative: the dropped groups' experts are -inf, not 0."""
    args = ModelArgs.from_dict(dict(model_type=ARCH, num_hidden_layers=2, hidden_size=16, n_routed_experts=16,
                                    num_experts_per_tok=3, n_group=n_group, topk_group=topk_group,
                                    routed_scaling_factor=2.5))
    router = GroupLimitedRouter(args)
    rng = np.random.default_rng(n_group * 10 + topk_group)
    router.weight = mx.array(rng.normal(0, 0.5, (16, 16)).astype(np.float32))
    router.e_score_correction_bias = mx.array(rng.normal(-0.6, 0.3, (16,)).astype(np.float32))
    x = rng.normal(0, 1, (50, 16)).astype(np.float32)
    indices, weights = router(mx.array(x))
    order = mx.argsort(indices, axis=-1)
    indices, weights = mx.take_along_axis(indices, order, -1), mx.take_along_axis(weights, order, -1)
    for t in range(50):
        experts, w = _reference_routing(x[t].astype(np.float64), np.array(router.weight, dtype=np.float64),
                                        np.array(router.e_score_correction_bias, dtype=np.float64), args)
        assert np.array(indices[t]).tolist() == experts.tolist()
        np.testing.assert_allclose(np.array(weights[t]), w, rtol=1e-5)


def test_mlx_lm_conversions_with_split_kv_b_proj_load(glm, tmp_path):
    """mlx-lm stores kv_b_proj per head as embed_q [H, latent, nope] and unembed_out [H, v, latent]."""
    folder = copy_model_folder(ARCH, "v4", tmp_path / ARCH)
    weights = mx.load(str(folder / "model.safetensors"))
    heads, nope, v = 4, 16, 12
    for i in range(3):
        prefix = f"model.layers.{i}.self_attn"
        per_head = weights.pop(f"{prefix}.kv_b_proj.weight").reshape(heads, nope + v, -1)
        weights[f"{prefix}.embed_q.weight"] = mx.contiguous(per_head[:, :nope].swapaxes(-1, -2))
        weights[f"{prefix}.unembed_out.weight"] = mx.contiguous(per_head[:, nope:])
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    split = load_model(folder, dtype="float32")
    loaded, expected = glm("v4")
    assert mx.array_equal(split.model(expected["input_ids"]), loaded.model(expected["input_ids"]))


def test_quantized_kv_b_proj_decodes_as_its_full_pass():
    """The absorbed decode slices a quantized kv_b_proj per head (quantized_matmul both ways); the full pass uses
    the layer whole: the same 8-bit weights give the same logits. (The fixture's latent, 24 wide, is narrower
    than a quantization group: a random model with a 64-wide one.)"""
    args = ModelArgs.from_dict(dict(model_type=ARCH, vocab_size=64, hidden_size=64, num_hidden_layers=2,
                                    intermediate_size=32, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=64,
                                    qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4,
                                    num_experts_per_tok=2, moe_intermediate_size=16))
    model = Model(args)
    model.layers[1].mlp.gate.weight = mx.random.normal((4, 64), key=mx.random.key(1))
    nn.quantize(model, group_size=32, bits=8, class_predicate=lambda path, m: path.endswith("kv_b_proj"))
    assert isinstance(model.layers[1].self_attn.kv_b_proj, nn.QuantizedLinear)
    tokens = mx.random.randint(0, 64, (1, 12), key=mx.random.key(2))
    continuation = mx.random.randint(0, 64, (6,), key=mx.random.key(3))
    assert max_decode_error(model, tokens, continuation) < SELF_TOL


def test_quantized_split_kv_b_proj_is_dequantized_back_to_float():
    """mlx-lm quantizes embed_q along nope and unembed_out along the latent; kv_b_proj comes back in float, each
    head's key rows then its value rows, holding exactly the dequantized values."""
    args = ModelArgs.from_dict(dict(model_type=ARCH, num_hidden_layers=1, num_attention_heads=2, kv_lora_rank=64,
                                    qk_nope_head_dim=32, v_head_dim=32))
    keys = mx.random.normal((2, 64, 32), key=mx.random.key(4))    # [heads, latent, nope]
    values = mx.random.normal((2, 32, 64), key=mx.random.key(5))  # [heads, v, latent]
    weights = {}
    for name, w in (("embed_q", keys), ("unembed_out", values)):
        q, s, b = mx.quantize(w, group_size=32, bits=4)
        weights |= {f"a.{name}.weight": q, f"a.{name}.scales": s, f"a.{name}.biases": b}
    joined = kv_b_from_absorbed(weights, "a", args)
    assert list(joined) == ["a.kv_b_proj.weight"]
    per_head = joined["a.kv_b_proj.weight"].reshape(2, 64, 64)

    def dq(name: str) -> mx.array:
        return mx.dequantize(*(weights[f"a.{name}.{k}"] for k in ("weight", "scales", "biases")), group_size=32, bits=4)

    assert mx.array_equal(per_head[:, :32], dq("embed_q").swapaxes(-1, -2))
    assert mx.array_equal(per_head[:, 32:], dq("unembed_out"))
