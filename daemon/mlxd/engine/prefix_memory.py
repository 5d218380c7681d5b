"""What the scheduler keeps in the prefix cache (engine/prefix_cache.py), and when: the prompt once prefilled,
snapshots within a long prompt for models with recurrent layers, and prompt + answer when a row leaves the batch.
The lookup at admission stays in the scheduler."""

from __future__ import annotations

import logging

from mlxd.engine.prefix_cache import PrefixCache
from mlxd.engine.runner import RowId, Runner
from mlxd.models.cache import KVCache
from mlxd.models.recurrent_cache import RecurrentCache

log = logging.getLogger(__name__)

_MIN_PREFIX_TOKENS = 16  # shorter prompts or answers are cheaper to prefill again than to snapshot


class PrefixMemory:
    def __init__(self, cache: PrefixCache, runner: Runner, recurrent_snapshot_period: int) -> None:
        self._cache, self._runner, self._period = cache, runner, recurrent_snapshot_period
        self._recurrent: bool | None = None  # whether the model has recurrent layers, once asked

    def snapshot_period(self, cacheable: bool) -> int:
        """Tokens between the snapshots taken within a request's prompt, 0 for none: only a model with recurrent
        layers needs them (a key/value snapshot of the whole prompt serves every prefix of it)."""
        if not self._period or not cacheable or self._cache.budget_bytes == 0:
            return 0
        if self._recurrent is None:
            self._recurrent = any(isinstance(c, RecurrentCache) for c in self._runner.new_cache())
        return self._period if self._recurrent else 0

    def snapshot(self, row: RowId, tokens: list[int]) -> None:
        """Store the row's cache, which holds `tokens` (a point within its prompt)."""
        self._store(tokens, self._runner.cache_of(row), wait=True)

    def prompt_prefilled(self, row: RowId, prompt: list[int], cached_tokens: int, cacheable: bool) -> None:
        """Store the KV of a prompt just prefilled, unless it adds few tokens to what came from the cache (a copy
        of the whole prefix then costs more than those few tokens' prefill)."""
        prefix = prompt[:-1]
        if cacheable and len(prefix) - cached_tokens >= _MIN_PREFIX_TOKENS:
            self.snapshot(row, prefix)

    def keeps_answer(self, cacheable: bool, answer_tokens: int) -> bool:
        """Whether a row leaving the batch should hand its cache over for remember_answer."""
        return self._cache.budget_bytes > 0 and cacheable and answer_tokens >= _MIN_PREFIX_TOKENS

    def remember_answer(self, prompt: list[int], answer: list[int], caches: list) -> None:
        """Store the KV of prompt and answer of a row leaving the batch: the next turn of a chat resends both,
        and gets them from the cache up to where its tokens differ (a trimmable snapshot). Not for
        sliding-window models (the runner gives no caches: a row may have lost its oldest columns)."""
        # The cache holds the prompt and the answer but, when no step fed it yet, the answer's last token.
        held = caches[0].offset
        past_end = held - len(prompt) - len(answer)
        if past_end > 0:
            # A verify step fed tokens after the answer's end (an end token or a stop string inside its accepted
            # run): their positions come last, so the rest is the KV of prompt + answer. A recurrent layer's state
            # has taken them in for good.
            if not all(isinstance(c, KVCache) for c in caches):
                log.debug("a leaving row's recurrent states hold %d tokens past its answer; not stored", past_end)
                return
            for c in caches:
                c.trim(past_end)
            held -= past_end
        if not len(prompt) <= held <= len(prompt) + len(answer):
            log.error("a leaving row holds %d positions for %d prompt and %d answer tokens; not stored",
                      held, len(prompt), len(answer))
            return
        # Not waiting: a sync here would stall the decode step already queued for the other rows.
        self._store((list(prompt) + answer)[:held], caches, wait=False)

    def _store(self, tokens: list[int], caches: list, wait: bool) -> None:
        try:
            self._cache.insert(tokens, caches, wait=wait)
        except Exception:  # a cache that cannot store is a lost speed-up, never a failed request
            log.exception("could not store a prefix-cache snapshot")
