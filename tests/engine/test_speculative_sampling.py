"""Sampling with speculation is exact: over many seeded rows, the tokens a verify step returns follow the target's
sampling distribution (a chi-squared test of the first token, and of the second given the first draft accepted),
whatever the drafts; and a seeded row draws the same tokens with drafts, without them, and on every run."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from mlxd.engine.runner import Runner
from mlxd.generation.params import SamplingParams
from mlxd.generation.sampling import Sampler
from mlxd.loading.loader import load_model
from tests.helpers.parity import PARITY

PROMPT = [5, 17, 200, 42, 42, 9, 131]
SAMPLING = dict(temperature=0.35, top_k=40, presence_penalty=0.8)
ROWS = 250          # rows per runner, each with its own seed
BATCHES = 8         # 2,000 samples


@pytest.fixture(scope="module")
def loaded():
    return load_model(PARITY / "llama", dtype="float32")


def _target(loaded, tokens: list[int]) -> np.ndarray:
    """The sampling distribution of the token after `tokens` (the row's filters, penalties seeing the tokens
    generated after the prompt)."""
    logits = loaded.model(mx.array([tokens], dtype=mx.int32))[0, -1]
    sampler = Sampler(SamplingParams(**SAMPLING, seed=0), loaded.vocab_size, PROMPT)
    generated = tokens[len(PROMPT):]
    filtered = sampler.filtered_after(mx.concatenate([mx.zeros((len(generated), logits.shape[0])), logits[None]]),
                                      generated)[-1]
    return np.array(mx.softmax(filtered))


def _sample(loaded, drafts: list[int] | None, seeds: range) -> list[list[int]]:
    """Each seed's tokens of one step (a verify step when drafts are given), rows batched."""
    runner = Runner(loaded.model, loaded.vocab_size)
    for seed in seeds:
        runner.open(seed, SamplingParams(**SAMPLING, seed=seed), PROMPT, None)
        runner.prefill(seed, PROMPT[:-1])
        runner.join(seed, PROMPT[-1])
    results = runner.step({seed: drafts for seed in seeds}) if drafts else runner.step() + runner.step()
    out: dict[int, list[int]] = {}
    for result in results:
        out.setdefault(result.row, []).extend(result.tokens)
    return [out[seed] for seed in seeds]


def _chi_squared_fits(counts: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(statistic, critical value at alpha = 0.001) of counts against probs, bins with < 5 expected merged."""
    expected = probs * counts.sum()
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    wanted = np.append(expected[big], expected[~big].sum())
    keep = wanted > 0
    statistic = float((((observed - wanted) ** 2)[keep] / wanted[keep]).sum())
    df = int(keep.sum()) - 1
    z = 3.090  # the normal quantile of 0.999; Wilson-Hilferty's approximation of the chi-squared quantile
    return statistic, df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_verified_tokens_follow_the_target_distribution(loaded):
    p0 = _target(loaded, PROMPT)
    likely = int(np.argmax(p0))
    p1 = _target(loaded, PROMPT + [likely])
    drafts = [likely, int(np.argsort(p1)[-2])]  # a likely first draft, a second one often wrong
    runs = [run for b in range(BATCHES) for run in _sample(loaded, drafts, range(b * ROWS, (b + 1) * ROWS))]
    first = np.bincount([run[0] for run in runs], minlength=len(p0))
    statistic, critical = _chi_squared_fits(first, p0)
    assert statistic < critical, f"first token: chi-squared {statistic:.1f} >= {critical:.1f}"
    second = np.bincount([run[1] for run in runs if run[0] == likely and len(run) > 1], minlength=len(p1))
    assert second.sum() > 200
    statistic, critical = _chi_squared_fits(second, p1)
    assert statistic < critical, f"second token: chi-squared {statistic:.1f} >= {critical:.1f}"
    accepted = sum(len(run) > 1 for run in runs) / len(runs)
    assert accepted == pytest.approx(p0[likely], abs=4 * math.sqrt(p0[likely] * (1 - p0[likely]) / len(runs)))


def test_seeded_rows_draw_the_same_tokens_with_and_without_drafts(loaded):
    seeds = range(40)
    plain = _sample(loaded, None, seeds)        # two plain steps: two tokens per row
    p0 = _target(loaded, PROMPT)
    drafts = [int(np.argmax(p0)), 7, 9]
    speculative = _sample(loaded, drafts, seeds)
    assert speculative == _sample(loaded, drafts, seeds)  # reproducible
    for ours, theirs in zip(speculative, plain):
        n = min(len(ours), len(theirs))
        assert ours[:n] == theirs[:n]
