"""Rank 0's runner and prefix cache under tensor parallelism: each call that runs the model (or changes what the
prefix cache holds) is sent to the other ranks before it runs here (a lookup, which runs none, after, with what it
found), and they replay it (follower.py).

Replicated, each as the op of its name that replay.py's Replayer handles: the runner's open, prefill,
prefill_scored, join, park, close, reset_batch, step (with its drafts: speculative decoding), flush and kv_layout,
and the prefix cache's lookup, insert and clear; and building either (the ops "runner" and "prefix_cache",
leader.py). Not replicated, as they change nothing a forward pass reads: new_cache, cache_of, batch_rows and
has_work (an insert names its caches by the row that cache_of or close gave them for).

Why the runner is the seam: it is the only caller of the model and deterministic given its calls, so the ranks
stay in lockstep with no scheduler, queue or clock of their own; every forward pass runs on every rank in the
same order, which is what each all_sum needs.

Sampling runs on every rank, identically: rank 0 fixes each row's seed (drawing one when the request has none)
and the logits are the same on every rank (the hidden state after each all_sum is, and the LM head is
replicated). A rank thus has its next input token without another message per step, and the decode pipeline
(step n+1 queued before step n is read) stays as it is. A constrained row's grammar goes with its open call and
every rank builds the same matcher (constraints.py), so every rank masks the same tokens. Rank 0 sends the
tokens it read with each step, and a follower that read others stops the group (a divergence is a bug, never
silent).

Prefix-cache hits: every rank keeps its own prefix cache (its share of each snapshot) and rank 0's inserts,
lookups and clears are replayed on it in order, so they hold the same entries and a lookup finds the same prefix.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from mlxd.engine.constraint import TokenConstraint
from mlxd.engine.kv_budget import KvLayout
from mlxd.engine.prefix_cache import PrefixCache
from mlxd.engine.request import TokenLogprob
from mlxd.engine.runner import ChunkImage, RowId, Runner, StepResult
from mlxd.engine.vision import ImageEncoder
from mlxd.generation.params import SamplingParams
from mlxd.models.cache import LayerCache
from mlxd.models.protocol import LanguageModel
from mlxd.parallel.codec import encode_images, encode_sampling, read_tokens
from mlxd.parallel.constraints import encode_constraint

Send = Callable[[dict], None]


class ReplicatingRunner(Runner):
    def __init__(self, model: LanguageModel, vocab_size: int, image_encoder: ImageEncoder | None, send: Send):
        super().__init__(model, vocab_size, image_encoder)
        self._send = send
        self._read: list[int] = []                                  # the tokens the last step read, by row order
        self.last_caches: tuple[list[LayerCache] | None, RowId] = (None, -1)  # what cache_of/close gave last

    def open(self, row: RowId, sampling: SamplingParams, prompt_ids: list[int], top_logprobs: int | None,
             cache: list[LayerCache] | None = None, constraint: TokenConstraint | None = None) -> None:
        spec = None if constraint is None else encode_constraint(constraint)  # the same matcher on every rank
        if sampling.seed is None:
            sampling = replace(sampling, seed=secrets.randbits(63))
        self._send({"op": "open", "row": row, "sampling": encode_sampling(sampling), "prompt_ids": prompt_ids,
                    "top_logprobs": top_logprobs, "restored": cache is not None, "constraint": spec})
        super().open(row, sampling, prompt_ids, top_logprobs, cache, constraint)

    def prefill(self, row: RowId, ids: list[int], images: Sequence[ChunkImage] = ()) -> None:
        self._send({"op": "prefill", "row": row, "ids": ids, "images": encode_images(images)})
        super().prefill(row, ids, images)

    def prefill_scored(self, row: RowId, ids: list[int], targets: list[int], top_k: int,
                       images: Sequence[ChunkImage] = ()) -> list[TokenLogprob]:
        self._send({"op": "prefill_scored", "row": row, "ids": ids, "targets": targets, "top_k": top_k,
                    "images": encode_images(images)})
        return super().prefill_scored(row, ids, targets, top_k, images)

    def cache_of(self, row: RowId) -> list[LayerCache]:
        caches = super().cache_of(row)
        self.last_caches = (caches, row)
        return caches

    def join(self, row: RowId, last_token: int) -> None:
        self._send({"op": "join", "row": row, "token": last_token})
        super().join(row, last_token)

    def park(self, row: RowId) -> None:
        self._send({"op": "park", "row": row})
        super().park(row)

    def close(self, row: RowId, keep_cache: bool = False) -> list[LayerCache] | None:
        self._send({"op": "close", "row": row, "keep_cache": keep_cache})
        caches = super().close(row, keep_cache)
        self.last_caches = (caches, row)
        return caches

    def reset_batch(self) -> None:
        self._send({"op": "reset_batch"})
        super().reset_batch()

    def step(self, drafts: Mapping[RowId, list[int]] | None = None) -> list[StepResult]:
        # Drafts go with the step: the other ranks verify the same tokens (a draft model runs on rank 0 only).
        sent = {str(row): list(tokens) for row, tokens in drafts.items()} if drafts else None
        self._send({"op": "step", "check": self._read, "drafts": sent})
        return self._reading(super().step(drafts))

    def flush(self) -> list[StepResult]:
        self._send({"op": "flush", "check": self._read})
        return self._reading(super().flush())

    def _reading(self, results: list[StepResult]) -> list[StepResult]:
        self._read = read_tokens(results)
        return results

    def kv_layout(self) -> KvLayout:
        self._send({"op": "kv_layout"})
        return super().kv_layout()


class ReplicatingPrefixCache(PrefixCache):
    def __init__(self, budget_bytes: int, runner: ReplicatingRunner, send: Send) -> None:
        self._runner = runner
        self._send: Send = lambda message: None  # PrefixCache.__init__ clears: nothing to tell the followers yet
        super().__init__(budget_bytes)
        self._send = send

    def lookup(self, tokens: Sequence[int], make_cache: Callable[[], list]) -> tuple[int, list | None]:
        found = super().lookup(tokens, make_cache)
        self._send({"op": "lookup", "tokens": list(tokens), "found": found[0]})
        return found

    def insert(self, tokens: Sequence[int], caches: list, wait: bool = True) -> None:
        held, row = self._runner.last_caches
        if caches is not held:
            raise RuntimeError("a prefix-cache insert of caches the runner did not just give")
        self._send({"op": "insert", "tokens": list(tokens), "row": row, "wait": wait})
        super().insert(tokens, caches, wait)

    def clear(self) -> None:
        self._send({"op": "clear"})
        super().clear()
