"""What a row leaving the batch leaves in the prefix cache (engine/prefix_memory.py `remember_answer`): prompt and
answer, also when a verify step fed tokens after the answer's end (an end token or a stop string inside its accepted
run). On an H200, SmolLM2 rewriting a paragraph with n-gram speculation ended so in 2 of its 4 speculating requests,
whose answers were not stored (an error logged): the next turn of those chats prefilled them again."""

from __future__ import annotations

import logging

import mlx.core as mx
import numpy as np
import pytest

from mlxd.engine.prefix_cache import PrefixCache
from mlxd.engine.prefix_memory import PrefixMemory
from mlxd.models.cache import KVCache
from mlxd.models.recurrent_cache import RecurrentCache

PROMPT = list(range(100, 130))
ANSWER = list(range(200, 220))


def _caches(positions: int, layers: int = 2) -> list[KVCache]:
    """Layers of one sequence's keys, position p's keys all equal to p (so what a lookup restores is readable)."""
    keys = mx.broadcast_to(mx.arange(positions, dtype=mx.float32)[None, None, :, None], (1, 2, positions, 4))
    caches = []
    for _ in range(layers):
        cache = KVCache()
        cache.update_and_fetch(keys, keys * 2)
        caches.append(cache)
    return caches


def _memory() -> PrefixMemory:
    return PrefixMemory(PrefixCache(64 << 20), runner=None, recurrent_snapshot_period=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("past_end", [0, 1, 3])
def test_prompt_and_answer_are_stored_without_the_positions_fed_past_the_answer(past_end, caplog):
    memory = _memory()
    caches = _caches(len(PROMPT) + len(ANSWER) + past_end)
    with caplog.at_level(logging.DEBUG, logger="mlxd.engine.prefix_memory"):
        memory.remember_answer(PROMPT, ANSWER, caches)
    assert not caplog.records
    turn = PROMPT + ANSWER + [7, 8]  # the next turn: the same conversation and more
    found, restored = memory._cache.lookup(turn, lambda: [KVCache(), KVCache()])
    assert found == len(PROMPT) + len(ANSWER)
    assert restored is not None and restored[0].offset == found
    keys = np.array(restored[0].keys[0, 0, :found, 0])
    assert keys.tolist() == list(range(found))  # positions 0..found-1, the prompt's and the answer's


def test_an_answer_whose_last_token_was_not_fed_is_stored_to_the_token_before():
    memory = _memory()
    caches = _caches(len(PROMPT) + len(ANSWER) - 1)
    memory.remember_answer(PROMPT, ANSWER, caches)
    found, _ = memory._cache.lookup(PROMPT + ANSWER + [7], lambda: [KVCache(), KVCache()])
    assert found == len(PROMPT) + len(ANSWER) - 1


def test_recurrent_states_past_the_answer_are_not_stored(caplog):
    """A recurrent layer's state took in the tokens past the answer: it cannot be cut back, so nothing is stored
    (a debug line says why; no error)."""
    memory = _memory()
    caches: list = _caches(len(PROMPT) + len(ANSWER) + 2, layers=1)
    recurrent = RecurrentCache()
    recurrent.advance(mx.zeros((1, 3, 8)), mx.zeros((1, 2, 4, 4)), len(PROMPT) + len(ANSWER) + 2)
    with caplog.at_level(logging.DEBUG, logger="mlxd.engine.prefix_memory"):
        memory.remember_answer(PROMPT, ANSWER, [recurrent, *caches])
    assert memory._cache.entries == 0
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert caches[0].offset == len(PROMPT) + len(ANSWER) + 2  # left as they were
