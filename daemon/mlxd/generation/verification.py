"""Speculative verification of one row: which of its drafted tokens the target model accepts, exactly.

A verify step runs the row's last token and its k drafts through the model in one pass, so the logits at position
j (0..k) are the target's for the token after drafts[:j]. At every position the row draws the token it would have
drawn decoding one token at a time: greedy, the argmax of its filtered logits; sampling, a categorical draw from
its sampling distribution (penalties seeing drafts[:j] as generated, bias, temperature, top-k/top-p/min-p: the
Sampler's) with the key its key chain would have used for that token. A draft is accepted while it equals the
drawn token; the first drawn token that differs (or the one after the last draft) ends the run: 1..k+1 tokens.

For a deterministic draft (n-gram lookup, a greedy draft model: q one-hot) this is standard speculative rejection
sampling in another coupling: draft d is accepted with probability p(d), and on a rejection the token is
distributed as p without d, renormalized, exactly the standard rule's residual. Drawing the target's token first
makes the output independent of what was drafted and of the depth chosen: a seeded request gives the same
tokens with and without speculation (up to float differences between a batched and a one-token forward pass),
and never depends on timing (adaptive depth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import mlx.core as mx

from mlxd.generation.sampling import Sampler


@dataclass
class VerifyPlan:
    """One row's lazy verification: the token it draws at each position; `accepted` reads it once evaluated."""

    drafts: list[int]
    choices: mx.array                 # int32 [k+1]
    sampler: Sampler | None = None    # to record the accepted run in (None: a plainly greedy row, no state)
    chain: list[mx.array] | None = None  # the sampler's key after each position's draw (sampling rows)

    def accepted(self) -> list[int]:
        """The row's tokens of this step: the accepted drafts, then the target's own token. Also takes them into
        the row's sampler (penalty state, key chain)."""
        tokens = accepted_run(self.drafts, cast(list[int], self.choices.tolist()))
        if self.sampler is not None:
            self.sampler.record(tokens)
            if self.chain is not None:
                self.sampler.resume(self.chain[len(tokens) - 1])
        return tokens


def accepted_run(drafts: list[int], choices: list[int]) -> list[int]:
    """The accepted drafts, then the target's own token: choices[j] is the token drawn at position j (>= k+1 of
    them; a plainly greedy row's are the argmax of its logits, read for the whole batch at once)."""
    for j, draft in enumerate(drafts):
        if draft != choices[j]:
            return drafts[:j] + [choices[j]]
    return drafts + [choices[len(drafts)]]


def sampler_plan(sampler: Sampler, logits: mx.array, drafts: list[int]) -> VerifyPlan:
    """Any row, through its sampler: logits [k+1, V] of the row's last token and its drafts."""
    filtered = sampler.filtered_after(logits, drafts)
    if sampler.params.greedy:
        return VerifyPlan(drafts, mx.argmax(filtered, axis=-1).astype(mx.int32), sampler)
    draws, chain = sampler.upcoming_keys(len(drafts) + 1)
    choices = mx.concatenate([mx.random.categorical(filtered[j], key=key).reshape(1)
                              for j, key in enumerate(draws)]).astype(mx.int32)
    return VerifyPlan(drafts, choices, sampler, chain)


def within_vocabulary(drafts: list[int], vocab_size: int) -> list[int]:
    """The drafts up to the first that is no token of the model's (a draft model's wider logits)."""
    for i, token in enumerate(drafts):
        if not 0 <= token < vocab_size:
            return drafts[:i]
    return drafts


def accept_runs(logits: mx.array, first: mx.array, rows: list[tuple[Sampler, bool]],
                drafts: list[list[int]]) -> list[list[int]]:
    """Each row's tokens of a verify step (logits [B, L, vocab]; rows: each one's sampler and whether it is
    constrained): a row without drafts samples from `first` (its position 0, masked) as in a plain step; the others
    verify theirs."""
    greedy = any(sampler.plain_greedy for sampler, _ in rows)
    argmax = mx.argmax(logits, axis=-1).astype(mx.int32) if greedy else None
    plans: list[VerifyPlan | mx.array | None] = []  # None: a plainly greedy row, read from argmax's rows
    for i, ((sampler, constrained), d) in enumerate(zip(rows, drafts)):
        if argmax is not None and sampler.plain_greedy and (d or not constrained):
            plans.append(None)
        elif not d:
            plans.append(sampler(first[i]))
        else:
            plans.append(sampler_plan(sampler, logits[i, :len(d) + 1], d))
    mx.eval([] if argmax is None else [argmax], [p.choices if isinstance(p, VerifyPlan) else p for p in plans])
    # One read for every greedy row: a slice and a read per row cost ~0.6 ms more at 16 rows (the 2-core CPU).
    chosen = cast(list[list[int]], argmax.tolist()) if argmax is not None else []
    return [accepted_run(d, chosen[i]) if p is None else p.accepted() if isinstance(p, VerifyPlan)
            else cast(list[int], p.tolist()) for i, (p, d) in enumerate(zip(plans, drafts))]
