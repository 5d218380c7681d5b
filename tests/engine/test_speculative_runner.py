"""Speculative verification in the runner: rows fed drafts (right and wrong ones, of any depth, beside rows without
any) yield exactly the tokens plain decoding yields, on every architecture's fixture (recurrent layers' too), with
rows of mixed lengths joining and leaving, across sliding windows and cache growth boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from mlxd.engine.runner import Runner
from mlxd.generation.params import SamplingParams
from mlxd.loading.loader import load_model
from mlxd.models.batch_cache import BatchKVCache
from tests.helpers.parity import PARITY

ARCHS = ["llama", "qwen3", "gemma3_text", "gpt_oss", "mixtral", "qwen3_moe", "glm4_moe_lite", "gemma4",
         "qwen3_5", "qwen3_5_moe", "nemotron_h"]
# (prompt length, step it joins at, tokens it generates): prompts shorter and longer than the fixtures' windows
# (12 to 16 positions), generating past them.
ROWS = [(5, 0, 22), (19, 0, 30), (2, 3, 18), (33, 5, 25), (11, 9, 20)]
SAMPLINGS = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.0, repetition_penalty=1.3),
             SamplingParams(temperature=0.9, top_p=0.9, seed=7),
             SamplingParams(temperature=0.7, top_k=20, presence_penalty=0.5, seed=11),
             SamplingParams(temperature=1.0, seed=3, logit_bias={13: -5.0})]


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request):
    return load_model(PARITY / request.param, dtype="float32")


def _prompt(length: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, 317, length).tolist()


def _open(runner: Runner, row: int, prompt: list[int], logprobs: bool = False) -> None:
    runner.open(row, SAMPLINGS[row % len(SAMPLINGS)], prompt, 2 if logprobs else None)
    if len(prompt) > 1:
        runner.prefill(row, prompt[:-1])
    runner.join(row, prompt[-1])


def _alone(loaded, row: int, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    runner = Runner(loaded.model, loaded.vocab_size)
    _open(runner, row, prompt, logprobs=True)
    tokens: list[int] = []
    logprobs: list[float] = []
    while len(tokens) < n:
        for result in runner.step():
            tokens += result.tokens
            logprobs += [lp.logprob for lp in result.logprobs]
    runner.close(row)
    return tokens[:n], logprobs[:n]


def _drafts(rng: np.random.Generator, truth: list[int], done: int) -> list[int]:
    """Up to 4 tokens of what the row will generate, sometimes with a wrong one in them."""
    drafts = truth[done + 1:done + 1 + int(rng.integers(0, 5))]
    if drafts and rng.random() < 0.4:
        drafts[int(rng.integers(0, len(drafts)))] = int(rng.integers(3, 317))
    return drafts


def test_verified_drafts_yield_the_plain_tokens(loaded):
    _verify_against_plain(loaded)


def test_verify_steps_on_cuda_kernels_yield_the_plain_tokens(loaded, monkeypatch):
    """On CUDA a step of a few queries per row (a verify step, a short chunk) takes ops_mlx.grouped_attention
    instead of MLX's fused kernel (which plans every new key length there): the same tokens, with MLX's kernels
    (the CPU's float32 default is the NumPy backend) and that rule forced."""
    from mlxd.models import ops, ops_mlx

    monkeypatch.setattr(ops_mlx, "_plans_per_shape", lambda: True)
    with ops.using("mlx"):
        _verify_against_plain(loaded)


def _verify_against_plain(loaded) -> None:
    prompts = [_prompt(n, i) for i, (n, _, _) in enumerate(ROWS)]
    expected = [_alone(loaded, i, p, n) for i, (p, (_, _, n)) in enumerate(zip(prompts, ROWS))]
    runner = Runner(loaded.model, loaded.vocab_size)
    for cache in runner._caches:  # a small growth step: verify steps write across growth boundaries
        if isinstance(cache, BatchKVCache):
            cache.step = 8
    rng = np.random.default_rng(0)
    got: dict[int, list[int]] = {i: [] for i in range(len(ROWS))}
    logprobs: dict[int, list[float]] = {i: [] for i in range(len(ROWS))}
    open_rows: set[int] = set()
    runs = []
    for step in range(200):
        for i, (_, join, _) in enumerate(ROWS):
            if join == step:
                _open(runner, i, prompts[i], logprobs=True)
                open_rows.add(i)
        # Every third step plain (pipelined), the others verify steps with drafts for some rows.
        drafts = None if step % 3 == 2 else {
            i: _drafts(rng, expected[i][0], len(got[i]) - 1 if got[i] else -1) for i in open_rows if rng.random() < 0.8}
        for result in runner.step(drafts):
            got[result.row] += result.tokens
            runs.append(len(result.tokens))
            logprobs[result.row] += [lp.logprob for lp in result.logprobs]
        for i in list(open_rows):
            if len(got[i]) >= ROWS[i][2]:
                runner.close(i)
                open_rows.discard(i)
        if not runner.has_work() and step > max(j for _, j, _ in ROWS):
            break
    assert max(runs) == 5 and sum(runs) > 1.3 * len(runs)  # drafts were accepted, up to full runs
    for i, (tokens, values) in enumerate(expected):
        assert got[i][:len(tokens)] == tokens, f"row {i}"
        np.testing.assert_allclose(logprobs[i][:len(values)], values, atol=1e-4, err_msg=f"row {i}")
