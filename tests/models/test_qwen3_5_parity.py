"""Qwen3.5 dense and MoE (gated DeltaNet + gated attention) in both config layouts: transformers' float32 logits at
every position of a 150-token prompt (three delta-rule chunks), its greedy ids, chunked prefill (chunks that cut the
64-token delta-rule chunks and the 4-tap conv window anywhere) equal to one shot, cached decode equal to the full
pass, and the recurrent states after the prompt equal to expected_state.safetensors."""

from __future__ import annotations

import json
import logging

import mlx.core as mx
import pytest
from safetensors.numpy import load_file, save_file

from mlxd.loading.loader import load_model
from tests.helpers.parity import PARITY, copy_model_folder
from tests.helpers.parity_checks import gated_delta_state_errors, greedy_with_cache, max_decode_error, prefill_in_chunks

ARCHS = ["qwen3_5", "qwen3_5_moe"]
CASES = [(arch, layout) for arch in ARCHS for layout in ("v5", "v4")]
LOGIT_TOL = 1e-3  # the bar; measured: under 1e-5
SELF_TOL = 1e-4   # chunked and recurrent forms of the same math agree to float32 rounding
STATE_TOL = 1e-4


@pytest.mark.parametrize("arch,layout", CASES)
def test_full_forward_matches_transformers(parity_model, arch, layout):
    loaded, expected = parity_model(arch, layout)
    logits = loaded.model(expected["input_ids"])
    assert logits.shape == (1, 150, 320)
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL


@pytest.mark.parametrize("arch,layout", CASES)
def test_greedy_decode_with_cache_matches_transformers(parity_model, arch, layout):
    loaded, expected = parity_model(arch, layout)
    want = expected["greedy_ids"].tolist()
    assert greedy_with_cache(loaded.model, expected["input_ids"], len(want)) == want


@pytest.mark.parametrize("chunk", [1, 3, 5, 7, 16, 40, 64, 100])
@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_equals_one_shot(parity_model, arch, chunk):
    loaded, expected = parity_model(arch, "v5")
    one_shot = loaded.model(expected["input_ids"])
    chunked, cache = prefill_in_chunks(loaded.model, expected["input_ids"], chunk)
    assert all(c.offset == 150 for c in cache)
    assert mx.abs(chunked - one_shot).max().item() < SELF_TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_logits_equal_full_forward(parity_model, arch):
    loaded, expected = parity_model(arch, "v4")
    assert max_decode_error(loaded.model, expected["input_ids"], expected["greedy_ids"]) < SELF_TOL


@pytest.mark.parametrize("chunk", [150, 7])
@pytest.mark.parametrize("arch", ARCHS)
def test_recurrent_states_after_the_prompt_match_transformers(parity_model, arch, chunk):
    loaded, expected = parity_model(arch, "v5")
    want = mx.load(str(PARITY / arch / "expected_state.safetensors"))
    recurrent, conv, state = gated_delta_state_errors(loaded.model, expected["input_ids"], chunk, want)
    assert recurrent == [0, 2]
    assert conv < STATE_TOL
    assert state < STATE_TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_projections_give_the_same_logits(parity_model, arch):
    loaded, expected = parity_model(arch, "v4")
    fused = load_model(PARITY / arch, dtype="float32", fuse=True).model
    assert any(path.endswith("linear_attn") for path in fused.fused)
    tokens = expected["input_ids"]
    assert mx.abs(fused(tokens) - loaded.model(tokens)).max().item() < SELF_TOL


def test_per_expert_checkpoint_loads_as_the_fused_one(tmp_path, parity_model):
    """transformers 5's save_pretrained writes the experts one by one: the same model."""
    folder = copy_model_folder("qwen3_5_moe", "v5", tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    for name in [n for n in tensors if n.endswith("experts.gate_up_proj")]:
        prefix = name.removesuffix("gate_up_proj")
        gate_up, down = tensors.pop(name), tensors.pop(prefix + "down_proj")
        half = gate_up.shape[1] // 2
        for e in range(gate_up.shape[0]):
            tensors[f"{prefix}{e}.gate_proj.weight"] = gate_up[e, :half]
            tensors[f"{prefix}{e}.up_proj.weight"] = gate_up[e, half:]
            tensors[f"{prefix}{e}.down_proj.weight"] = down[e]
    save_file(tensors, folder / "model.safetensors")
    loaded, expected = parity_model("qwen3_5_moe", "v5")
    tokens = expected["input_ids"]
    per_expert = load_model(folder, dtype="float32").model
    assert mx.abs(per_expert(tokens) - loaded.model(tokens)).max().item() < SELF_TOL


def test_vision_tower_and_mtp_head_are_skipped_with_one_log_line(tmp_path, caplog, parity_model):
    folder = copy_model_folder("qwen3_5", "v4", tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    assert any(n.startswith("model.visual.") for n in tensors)
    tensors["mtp.fc.weight"] = tensors["lm_head.weight"][:, :8].copy()
    save_file(tensors, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["mtp_num_hidden_layers"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.INFO, logger="mlxd.models.qwen3_5"):
        model = load_model(folder, dtype="float32").model
    lines = [r for r in caplog.records if "vision-tower and multi-token-prediction" in r.getMessage()]
    assert len(lines) == 1
    loaded, expected = parity_model("qwen3_5", "v4")
    assert mx.abs(model(expected["input_ids"]) - loaded.model(expected["input_ids"])).max().item() == 0


def test_sanitize_takes_its_own_output_and_mlx_lm_names(parity_model):
    """Sanitized weights (conv [C, K, 1], 1 + w folded into the norms: mlx-lm's conversion layout too) under
    mlx-lm's `language_model.` names give the same model."""
    loaded, _ = parity_model("qwen3_5", "v5")
    model = loaded.model
    raw = mx.load(str(PARITY / "qwen3_5" / "model.safetensors"))
    once = model.sanitize(raw)
    assert model.sanitize(once).keys() == once.keys()
    assert all(mx.array_equal(model.sanitize(once)[k], v) for k, v in once.items())
    mlx_lm = {("language_model." + k if k.startswith(("model.", "lm_head.")) else k): v for k, v in once.items()}
    again = model.sanitize(mlx_lm)
    assert again.keys() == once.keys() and all(mx.array_equal(again[k], v) for k, v in once.items())
