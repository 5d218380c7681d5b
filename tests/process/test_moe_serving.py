"""The random-weight MoE fixtures served by `mlxd serve` over gRPC: concurrent greedy streams of mixed prompt
lengths (one decode batch, prompts in prefill chunks of 16) give the tokens the model gives in-process, the
fixture prompt transformers' tokens, and a repeated prompt hits the prefix cache with the same tokens. gpt_oss is
served from its MXFP4 files (dequantized to float32 on the CPU), with sliding windows of 16 that the prompts cross."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import numpy as np
import pytest

from mlxd.loading.loader import load_model
from mlxd_client import Client
from tests.helpers.daemon_process import FIXTURES, start_daemon
from tests.helpers.parity_checks import greedy_with_cache

pytestmark = pytest.mark.process

NEW_TOKENS = 12


@pytest.fixture(scope="module", params=["qwen3_moe", "mixtral", "gpt_oss"])
def served(request, tmp_path_factory):
    folder = FIXTURES / "parity" / request.param
    daemon = start_daemon(folder, "--prefill-chunk", "16", "--max-batch-size", "4",
                          workdir=tmp_path_factory.mktemp(request.param))
    yield folder, daemon
    assert daemon.stop() == 0, daemon.stderr()


def _greedy(client: Client, ids: list[int]):
    return client.complete(tokens=ids, temperature=0.0, ignore_eos=True, max_tokens=NEW_TOKENS)


def test_concurrent_greedy_streams_equal_the_in_process_model(served):
    folder, daemon = served
    expected = mx.load(str(folder / "expected.safetensors"))
    rng = np.random.default_rng(0)
    prompts = [expected["input_ids"][0].tolist()] + [rng.integers(3, 320, n).tolist() for n in (7, 23, 61)]
    model = load_model(folder, fuse=True).model  # as served: float32 on the CPU, projections fused
    want = [greedy_with_cache(model, mx.array([p]), NEW_TOKENS) for p in prompts]
    assert want[0] == expected["greedy_ids"][:NEW_TOKENS].tolist()
    with Client(daemon.addr) as client, ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda p: _greedy(client, p), prompts))
        assert [r.token_ids for r in results] == want
        again = _greedy(client, prompts[3])
    assert again.token_ids == want[3] and again.final.usage.cached_tokens > 0


def test_model_info_reports_the_experts(served):
    folder, daemon = served
    with Client(daemon.addr) as client:
        info = client.model_info()
    config = json.loads((folder / "config.json").read_text())
    experts = config.get("num_experts") or config["num_local_experts"]
    assert (info.num_experts, info.experts_per_token) == (experts, config["num_experts_per_tok"])
    assert list(info.quantization_modes) == []  # float32 on the CPU
