"""Sampling: pure logit filters, and a per-sequence Sampler built from lazy MLX ops.

Nothing here syncs with the device (.item(), .tolist(), mx.eval): the decoder queues step n+1 before it reads
the token of step n, so every filter and every piece of penalty state stays a lazy MLX array.
"""

from __future__ import annotations

import math
import secrets

import mlx.core as mx

from mlxd.generation.params import SamplingParams

# -- pure filters: logits [..., V] float32 in, logits out; -inf marks a removed token ----------------------------


def apply_repetition_penalty(logits: mx.array, recent_ids: mx.array, penalty: float) -> mx.array:
    """CTRL-style: each distinct recent id gets its logit divided by penalty if positive, multiplied if not."""
    selected = logits[..., recent_ids]
    penalized = mx.where(selected > 0, selected / penalty, selected * penalty)
    out = mx.array(logits)
    out[..., recent_ids] = penalized  # duplicate ids write the same value, so each id is penalized once
    return out


def apply_presence_frequency(logits: mx.array, counts: mx.array, presence: float, frequency: float) -> mx.array:
    """OpenAI: subtract frequency * count, and presence once for every id generated at least once."""
    return logits - frequency * counts - presence * (counts > 0).astype(logits.dtype)


def apply_logit_bias(logits: mx.array, ids: mx.array, values: mx.array) -> mx.array:
    return logits.at[..., ids].add(values)


def apply_temperature(logits: mx.array, temperature: float) -> mx.array:
    return logits / temperature


def apply_top_k(logits: mx.array, k: int) -> mx.array:
    """Keep the k largest logits (ties with the k-th are kept too, as in transformers); k >= V keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = mx.topk(logits, k, axis=-1).min(axis=-1, keepdims=True)
    return mx.where(logits < kth, -mx.inf, logits)


def apply_top_p(logits: mx.array, p: float) -> mx.array:
    """Nucleus: keep the most probable ids until their mass reaches p (a token is kept while the mass
    strictly above it is < p, so the most probable id always survives)."""
    if p >= 1.0:
        return logits
    order = mx.argsort(-logits, axis=-1)
    sorted_logits = mx.take_along_axis(logits, order, axis=-1)
    probs = mx.softmax(sorted_logits, axis=-1)
    mass_above = mx.cumsum(probs, axis=-1) - probs
    sorted_kept = mx.where(mass_above < p, sorted_logits, -mx.inf)
    return mx.put_along_axis(mx.full(logits.shape, -mx.inf, logits.dtype), order, sorted_kept, axis=-1)


def apply_min_p(logits: mx.array, min_p: float) -> mx.array:
    """Drop ids whose probability is below min_p times the top probability (compared in log space)."""
    if min_p <= 0.0:
        return logits
    threshold = logits.max(axis=-1, keepdims=True) + math.log(min_p)
    return mx.where(logits < threshold, -mx.inf, logits)


def logprobs(logits: mx.array) -> mx.array:
    """log_softmax in float32 of the raw model logits (before any penalty or filter)."""
    x = logits.astype(mx.float32)
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


def top_logprobs(logprobs: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """The k best ids of logprobs [..., V] (k >= 1) and their values, best first; int32 ids."""
    k = min(k, logprobs.shape[-1])
    ids = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[..., :k]
    values = mx.take_along_axis(logprobs, ids, axis=-1)
    order = mx.argsort(-values, axis=-1)
    return (mx.take_along_axis(ids, order, axis=-1).astype(mx.int32),
            mx.take_along_axis(values, order, axis=-1))


# -- the per-sequence sampler ----------------------------------------------------------------------------------------


class Sampler:
    """Samples the tokens of one sequence; `__call__` also records the sampled token in the penalty state,
    lazily, so the engine never calls anything else. Randomness comes from the sampler's own key chain:
    a seeded request draws the same tokens whatever else ran in the process."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_ids: list[int]) -> None:
        # vocab_size is the width of the model's logits (it may exceed the tokenizer's vocabulary).
        self.params = params
        self.vocab_size = vocab_size
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self._key = mx.random.key(self.seed)
        self._window = params.repetition_window if params.repetition_penalty != 1.0 else 0
        self._recent_len = min(self._window, len(prompt_ids))
        self._recent = mx.array(prompt_ids[len(prompt_ids) - self._recent_len:], dtype=mx.int32)
        self._counts: mx.array | None = None
        if params.presence_penalty or params.frequency_penalty:
            self._counts = mx.zeros((vocab_size,), dtype=mx.float32)
        self._bias: tuple[mx.array, mx.array] | None = None
        if params.logit_bias:
            self._bias = (mx.array(list(params.logit_bias.keys()), dtype=mx.int32),
                          mx.array(list(params.logit_bias.values()), dtype=mx.float32))

    @property
    def plain_greedy(self) -> bool:
        """Greedy with no penalty or bias: an argmax of the raw logits, which a batch can take for many rows
        at once (and no state to record)."""
        return self.params.greedy and not self._window and self._counts is None and self._bias is None

    def __call__(self, logits: mx.array) -> mx.array:
        """logits [V] or [1, V] → the sampled token, int32 [1]. Order: penalties → logit_bias → greedy argmax,
        or temperature → top_k → top_p → min_p → categorical."""
        x = self.filtered(logits.reshape(-1), self._recent, self._counts)
        if self.params.greedy:
            token = mx.argmax(x, axis=-1)
        else:
            token = mx.random.categorical(x, key=self.next_key())
        token = token.reshape(1).astype(mx.int32)
        self._record(token)
        return token

    def filtered(self, logits: mx.array, recent: mx.array, counts: mx.array | None) -> mx.array:
        """logits [V] after the penalties (given the recent ids and counts they see), the bias and, when
        sampling, the temperature and the top-k/top-p/min-p filters: the distribution a token is drawn from (or
        whose argmax a greedy row takes)."""
        p = self.params
        x = logits.astype(mx.float32)
        if self._window and recent.size:
            x = apply_repetition_penalty(x, recent, p.repetition_penalty)
        if counts is not None:
            x = apply_presence_frequency(x, counts, p.presence_penalty, p.frequency_penalty)
        if self._bias is not None:
            x = apply_logit_bias(x, *self._bias)
        if p.greedy:
            return x
        return apply_min_p(apply_top_p(apply_top_k(apply_temperature(x, p.temperature), p.top_k), p.top_p), p.min_p)

    def filtered_after(self, logits: mx.array, drafts: list[int]) -> mx.array:
        """logits [k + 1, V] of a verify step → each position's filtered logits [k + 1, V], position j's penalties
        seeing drafts[:j] as generated (what __call__ would have applied had they been sampled)."""
        rows = []
        for j in range(len(drafts) + 1):
            ahead = mx.array(drafts[:j], dtype=mx.int32)
            recent = self._recent
            if self._window and j:
                recent = mx.concatenate([recent, ahead])
                if recent.size > self._window:  # never slice by the window itself: it may exceed int32
                    recent = recent[recent.size - self._window:]
            counts = self._counts
            if counts is not None and j:
                counts = counts.at[ahead].add(1.0)
            rows.append(self.filtered(logits[j], recent, counts))
        return mx.stack(rows)

    def next_key(self) -> mx.array:
        """A fresh key from the sampler's chain (a seeded request draws the same ones every run)."""
        keys = mx.random.split(self._key)
        self._key = keys[0]
        return keys[1]

    def upcoming_keys(self, n: int) -> tuple[list[mx.array], list[mx.array]]:
        """The keys the next n draws would take from the chain, and the chain's key after each, without
        advancing it (a verify step keeps as many as it accepted tokens: `resume`)."""
        draws, chain, key = [], [], self._key
        for _ in range(n):
            keys = mx.random.split(key)
            key = keys[0]
            draws.append(keys[1])
            chain.append(key)
        return draws, chain

    def resume(self, key: mx.array) -> None:
        self._key = key

    def record(self, tokens: list[int]) -> None:
        """Take tokens chosen outside __call__ (a verify step's accepted run) into the penalty state."""
        if self._window or self._counts is not None:
            for token in tokens:
                self._record(mx.array([token], dtype=mx.int32))

    def _record(self, token: mx.array) -> None:
        if self._window:
            # Drop the oldest token only once the window is full: a window beyond int32 (repetition_window is a
            # uint32) must never become a slice index, which MLX refuses.
            self._recent = mx.concatenate([self._recent, token])
            if self._recent_len == self._window:
                self._recent = self._recent[1:]
            else:
                self._recent_len += 1
        if self._counts is not None:
            self._counts = self._counts.at[token].add(1.0)
