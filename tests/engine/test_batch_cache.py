"""Batched decode gives every row the logits it gets alone: mixed prompt lengths, rows joining and leaving
mid-stream, sliding windows smaller than the sequences (gemma3_text: 12, mistral and gpt_oss: 16, gemma4: 14 with
KV-shared layers, gemma4_moe: 13)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxd.loading.loader import load_model
from mlxd.models.batch_cache import BatchKVCache, BatchPositions
from mlxd.models.cache import KVCache, RotatingKVCache
from tests.helpers.daemon_process import FIXTURES

STEPS = 24
# (prompt length, step it joins at, step it leaves at); the first row joins with nothing seen before the batch
# holds any keys, beside rows that bring theirs.
ROWS = [(1, 0, 20), (3, 0, 24), (29, 0, 10), (9, 4, 24), (1, 6, 18), (40, 12, 24)]


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen3", "gemma3_text", "qwen3_moe", "mixtral",
                                                     "gpt_oss", "glm4_moe_lite", "gemma4", "gemma4_moe"])
def model(request):
    return load_model(FIXTURES / "parity" / request.param, dtype="float32").model


def _prefilled(model, prompt: list[int]) -> list:
    cache = model.make_cache()
    if len(prompt) > 1:
        model(mx.array([prompt[:-1]], dtype=mx.int32), cache=cache)
        mx.eval([a for c in cache for a in c.state])
    return cache


def _alone(model, prompt: list[int], fed: list[int], steps: int) -> list[np.ndarray]:
    """Logits of each decode step for one sequence with its own cache, fed fixed tokens."""
    cache = _prefilled(model, prompt)
    out, token = [], prompt[-1]
    for i in range(steps):
        logits = model(mx.array([[token]], dtype=mx.int32), cache=cache)[0, -1]
        out.append(np.array(logits))
        token = fed[i]
    return out


def test_batched_rows_match_their_own_decode(model):
    rng = np.random.default_rng(0)
    vocab = model.args.vocab_size if hasattr(model, "args") else 100
    prompts = [rng.integers(0, vocab, n).tolist() for n, _, _ in ROWS]
    fed = [rng.integers(0, vocab, STEPS).tolist() for _ in ROWS]
    expected = [_alone(model, p, f, leave - join) for p, f, (_, join, leave) in zip(prompts, fed, ROWS)]

    positions = BatchPositions()
    windows = [c.window if isinstance(c, RotatingKVCache) else None for c in model.make_cache()]
    caches = [BatchKVCache(positions, w, step=8) for w in windows]  # a small step exercises growth and cuts
    rows: list[int] = []          # sequence index of each batch row
    done = [0] * len(ROWS)        # decode steps each sequence has had
    for step in range(STEPS):
        keep = [i for i, s in enumerate(rows) if step < ROWS[s][2]]
        if keep != list(range(len(rows))):
            for c in caches:
                c.keep_rows(keep)
        for c in caches:
            c.compact()
        values = [positions.values[i] for i in keep]
        rows = [rows[i] for i in keep]
        for s, (n, join, _) in enumerate(ROWS):
            if join == step:
                for c, own in zip(caches, _prefilled(model, prompts[s])):
                    c.add_row(own.kept())
                values.append(n - 1)
                rows.append(s)
        positions.set(values)
        inputs = [prompts[s][-1] if done[s] == 0 else fed[s][done[s] - 1] for s in rows]
        logits = model(mx.array(inputs, dtype=mx.int32)[:, None], cache=caches)[:, -1]
        positions.advance()
        for r, s in enumerate(rows):
            np.testing.assert_allclose(np.array(logits[r]), expected[s][done[s]], atol=2e-5,
                                       err_msg=f"sequence {s} at its decode step {done[s]}")
            done[s] += 1
    assert done == [leave - join for _, join, leave in ROWS]


def test_row_cache_is_the_rows_own_keys():
    """A row leaving the batch hands out its positions as a single-sequence cache (for the prefix cache);
    a sliding-window layer does not, since it may have cut the row's oldest columns."""
    positions = BatchPositions()
    full, sliding = BatchKVCache(positions, None), BatchKVCache(positions, 4)
    own = []
    for n in (5, 2, 7):
        cache = KVCache()
        keys = mx.random.normal((1, 2, n, 8))
        cache.update_and_fetch(keys, keys + 1)
        full.add_row(cache.kept())
        own.append(keys)
    full.update_and_fetch(mx.ones((3, 2, 1, 8)), mx.ones((3, 2, 1, 8)))  # one decode step for every row
    for r, keys in enumerate(own):
        row = full.row_cache(r)
        assert row.offset == keys.shape[2] + 1
        assert mx.array_equal(row.keys[:, :, :-1], keys) and mx.array_equal(row.values[:, :, :-1], keys + 1)
        assert mx.array_equal(row.keys[:, :, -1:], mx.ones((1, 2, 1, 8)))
    sliding.add_row(None)
    assert sliding.row_cache(0) is None


def test_holes_are_squeezed_out_once_a_step_of_columns_would_go():
    """Rows that rolled back different counts leave holes; compaction between steps gathers each row's columns
    back together only once `step` columns would go (it copies the whole cache), and then keeps every row's keys."""
    cache = BatchKVCache(BatchPositions(), None, step=5)
    kept = []
    for _ in range(2):
        single = KVCache()
        keys = mx.random.normal((1, 1, 3, 2))
        single.update_and_fetch(keys, keys)
        cache.add_row(single.kept())
        kept.append([keys])
    for accepted in ([1, 5], [5, 1]):             # two verify steps of five columns, each row keeping some
        drafts = mx.random.normal((2, 1, 5, 2))
        cache.update_and_fetch(drafts, drafts)
        cache.rollback(accepted)
        cache.compact()
        assert cache._valid is not None           # freed 0, then 4: fewer than `step` columns, no copy yet
        for r in range(2):
            kept[r].append(drafts[r:r + 1, :, :accepted[r]])
    cache.keep_rows([0, 1])                       # forced: any column no row sees goes now
    assert cache._valid is None and cache.starts == [0, 0] and cache.end == 9
    for r in range(2):
        assert mx.array_equal(cache.row_state(r)[0], mx.concatenate(kept[r], axis=2))
