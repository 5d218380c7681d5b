"""Tensor parallelism on the CPU: every architecture's parity fixture split across 2 ranks of a TCP ring on
loopback gives the logits of 1 rank within 1e-4 at every position, and the same greedy tokens."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from mlxd.loading.loader import load_model
from tests.helpers.parity import copy_model_folder
from tests.helpers.ranks import run_ranks
from tests.helpers.sharded_batch import HIT_TOKENS
from tests.helpers.sharded_logits import run

pytestmark = pytest.mark.process

# Dense, MoE, hybrid (recurrent + attention), MLA and vision-language: every architecture mlxd serves.
ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3", "qwen3_moe", "mixtral", "gpt_oss",
         "gpt_oss_dense", "qwen3_5", "qwen3_5_moe", "qwen3_next", "nemotron_h", "gemma4", "gemma4_moe",
         "glm4_moe_lite")
TOLERANCE = 1e-4


# Kept quantized: llama with 8-bit affine layers wherever a rank's half of a row holds whole groups of 32 (the
# MLP's down projection, 160 wide, stays float), and gpt-oss's MXFP4 experts as published.
QUANTIZED = ("llama-q8-keep", "gpt_oss-keep")


def _quantized_llama(folder: Path) -> None:
    model = load_model(folder, dtype="float32").model
    nn.quantize(model, 32, 8, class_predicate=lambda _, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % 64 == 0)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"quantization": {"group_size": 32, "bits": 8}}))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """(1-rank, 2-rank) results per architecture: every fixture run by one pair of rank processes."""
    root = tmp_path_factory.mktemp("tensor_parallel")
    folders = [copy_model_folder(arch, "v5", root / "models" / arch) for arch in ARCHS]
    folders.append(copy_model_folder("llama", "v5", root / "models" / QUANTIZED[0]))
    _quantized_llama(folders[-1])
    folders.append(copy_model_folder("gpt_oss", "v5", root / "models" / QUANTIZED[1]))
    single, sharded = root / "single", root / "sharded"
    single.mkdir()
    sharded.mkdir()
    run(single, folders, None)
    run_ranks("tests.helpers.sharded_logits", [str(sharded), *map(str, folders)], 2, root, timeout=300)
    return {arch: (mx.load(str(single / f"{arch}.safetensors")), mx.load(str(sharded / f"{arch}.safetensors")))
            for arch in ARCHS + QUANTIZED}


@pytest.mark.parametrize("arch", ARCHS + QUANTIZED)
def test_two_ranks_match_one(results, arch):
    one, two = results[arch]
    delta = mx.abs(one["logits"] - two["logits"]).max().item()
    assert delta <= TOLERANCE, f"{arch}: max |Δlogit| {delta:.2e} between 1 and 2 ranks"
    assert one["greedy_ids"].tolist() == two["greedy_ids"].tolist()
    print(f"{arch}: max |Δlogit| {delta:.2e}")


@pytest.mark.parametrize("arch", ARCHS + QUANTIZED)
def test_batched_rows_and_a_prefix_hit_match_one_rank(results, arch):
    """The engine's runner and prefix cache on 2 ranks (tests/helpers/sharded_batch.py): rows of mixed lengths
    joining and leaving a batch give 1 rank's greedy tokens, and a prefix-cache hit gives the cold row's."""
    one, two = results[arch]
    rows = sorted(k for k in one if k.startswith("batch_row"))
    assert rows == sorted(k for k in two if k.startswith("batch_row")) and len(rows) == 4
    for row in rows:
        assert one[row].tolist() == two[row].tolist(), f"{arch}: {row}'s tokens differ between 1 and 2 ranks"
    cold, hit = one["batch_row0"].tolist(), one["batch_row3"].tolist()
    assert len(hit) >= HIT_TOKENS and hit[:HIT_TOKENS] == cold[:HIT_TOKENS], f"{arch}: hit {hit}, cold {cold}"
