"""Batch caches fed several tokens per row per step, each row keeping a different number of them (a verify step's
accepted drafts), give every row the logits it gets alone: holes left by rejected columns stay hidden, across
growth boundaries (a small growth step), sliding windows smaller than the rows and the squeeze of holes; a row
with holes hands out exactly its own positions (prefix cache, parking)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxd.loading.loader import load_model
from mlxd.models.batch_cache import BatchKVCache, BatchPositions
from mlxd.models.cache import KVCache, RotatingKVCache
from tests.engine.test_batch_cache import _alone, _prefilled
from tests.helpers.daemon_process import FIXTURES

STEPS = 20
PROMPTS = [3, 29, 9, 1, 18]


@pytest.fixture(scope="module", params=["llama", "gemma3_text", "gpt_oss", "glm4_moe_lite", "gemma4"])
def model(request):
    return load_model(FIXTURES / "parity" / request.param, dtype="float32").model


def test_rows_keeping_different_runs_match_their_own_decode(model):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 300, n).tolist() for n in PROMPTS]
    fed = [rng.integers(0, 300, 4 * STEPS).tolist() for _ in PROMPTS]
    expected = [_alone(model, p, f, 4 * STEPS) for p, f in zip(prompts, fed)]

    positions = BatchPositions()
    windows = [c.window if isinstance(c, RotatingKVCache) else None for c in model.make_cache()]
    caches = [BatchKVCache(positions, w, step=8) for w in windows]
    for prompt in prompts:
        for c, own in zip(caches, _prefilled(model, prompt)):
            c.add_row(own.kept())
    positions.set([n - 1 for n in PROMPTS])
    done = [0] * len(PROMPTS)  # tokens each row has taken for good
    holes_seen = squeezed = False
    for _ in range(STEPS):
        for c in caches:
            holes = c._valid is not None
            c.compact()
            squeezed |= holes and c._valid is None
        length = int(rng.integers(1, 5))
        kept = [int(rng.integers(1, length + 1)) for _ in PROMPTS]
        inputs = [[prompts[r][-1] if done[r] == 0 else fed[r][done[r] - 1]]
                  + fed[r][done[r]:done[r] + length - 1] for r in range(len(PROMPTS))]
        logits = model(mx.array(inputs, dtype=mx.int32), cache=caches)
        for r, k in enumerate(kept):
            for j in range(k):  # the kept positions' logits are what the row gets alone
                np.testing.assert_allclose(np.array(logits[r, j]), expected[r][done[r] + j], atol=2e-5,
                                           err_msg=f"row {r}, token {done[r] + j}")
        for c in caches:
            c.rollback(kept)
        holes_seen |= any(c._valid is not None for c in caches)
        positions.advance(kept)
        done = [d + k for d, k in zip(done, kept)]
    assert holes_seen and squeezed
    for r, prompt in enumerate(prompts):  # each full layer's row cache holds exactly the row's own positions
        alone = _prefilled(model, prompt + fed[r][:done[r] - 1] + [0])  # prefills all but the last
        for c, own in zip(caches, alone):
            row = c.row_cache(r)
            if isinstance(own, KVCache) and row is not None:
                assert row.offset == own.offset
                np.testing.assert_allclose(np.array(row.keys), np.array(own.kept()[0]), atol=2e-5)
