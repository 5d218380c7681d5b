"""The runner: the only code that calls the model (DESIGN.md §1). It knows rows by id, never requests.

A row is opened with its sampling settings and a cache of its own, prefills its prompt in chunks into that cache
(`prefill`), then joins the decode batch (`join`), where every row advances one token per step in one batched
forward pass (`step`). Steps are pipelined like a single sequence's: `step()` queues step n+1 for every row
before it reads the tokens of step n, so the device never waits for Python. Rows join and leave between steps;
a row closed while a step of it was queued gets that token back with the step's other results, and the caller
drops it. On the CPU (`pipelined` False) `step()` also reads the step it queues: MLX computes most of a CPU step
in `async_eval` (SmolLM2: 155-190 ms, then 42 to read), so there the pipeline only delayed every token a step.

Beside that plain pipeline:
- **Token constraints** (engine/constraint.py), per row from `open`: a batch holding one builds step n+1's forward
  graph and launches it while another thread reads step n, tells each constraint its row's token and fills the
  masks (engine/masks.py); then the step's sampling, the masks applied, is queued before the call returns.
  Unpipelined, plainly greedy constrained rows take their argmax as free rows and have it checked
  (engine/checked_greedy.py).
- **Speculative verification** (`step(drafts)`): each row feeds its last token and its drafts, [B, 1 + max k],
  synchronously; generation/verification.py accepts each row's run and the batch caches roll the rejected columns
  back. Rows without drafts share the pass.
- **Caches** are touched only through the `LayerCache` / `BatchLayerCache` protocols (models/cache.py,
  models/batch_cache.py), which recurrent layers (models/recurrent_cache.py) implement with their state arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import mlx.core as mx

from mlxd.engine import checked_greedy
from mlxd.engine.constrained_rows import (
    RowId,
    StepResult,
    apply_step_masks,
    tell_constraints,
    tell_then_fill,
    verify_masks,
)
from mlxd.engine.constraint import TokenConstraint
from mlxd.engine.kv_budget import KvLayout
from mlxd.engine.mask_thread import HandOff, MaskThread
from mlxd.engine.masks import FilledMasks
from mlxd.engine.queued_step import CheckedStep, QueuedStep
from mlxd.engine.request import PromptImage, TokenLogprob
from mlxd.engine.runner_row import RunnerRow
from mlxd.engine.scores import row_logprobs, run_logprobs, tops
from mlxd.engine.vision import ImageEncoder
from mlxd.generation.params import SamplingParams
from mlxd.generation.sampling import Sampler
from mlxd.generation.verification import accept_runs, within_vocabulary
from mlxd.models import ops
from mlxd.models.batch_cache import BatchKVCache, BatchPositions, batched
from mlxd.models.cache import LayerCache
from mlxd.models.protocol import LanguageModel
from mlxd.models.recurrent_cache import BatchRecurrentCache

# (position of the image's first token within the prefill chunk, the image)
ChunkImage = tuple[int, PromptImage]


class Runner:
    def __init__(self, model: LanguageModel, vocab_size: int, image_encoder: ImageEncoder | None = None,
                 pipelined: bool = True) -> None:
        self._model = model
        self._pipelined = pipelined  # False: a plain step is read as soon as it is queued (see step)
        self._vocab_size = vocab_size
        self._images = image_encoder
        self._rows: dict[RowId, RunnerRow] = {}
        self._positions = BatchPositions()
        self._caches = [batched(c, self._positions) for c in model.make_cache()]
        self._order: list[RowId] = []         # batch rows in cache row order: the rows of the step queued last
        self._joining: list[RowId] = []
        self._leaving: set[RowId] = set()     # rows to drop from the batch at the next step
        self._pending: QueuedStep | None = None
        self._mask_thread: MaskThread | None = None  # made for the first constrained step

    # -- rows ----------------------------------------------------------------------------------------------------

    def open(self, row: RowId, sampling: SamplingParams, prompt_ids: list[int], top_logprobs: int | None,
             cache: list[LayerCache] | None = None, constraint: TokenConstraint | None = None) -> None:
        """Start a row: a fresh cache, or `cache` holding a prefix of the prompt (a prefix-cache hit); its tokens
        drawn within `constraint` when given."""
        if row in self._rows:
            raise ValueError(f"row {row} is already open")
        own = cache if cache is not None else self._model.make_cache()
        self._rows[row] = RunnerRow(Sampler(sampling, self._vocab_size, prompt_ids), top_logprobs, own,
                               constraint=constraint)

    def new_cache(self) -> list[LayerCache]:
        """An empty cache for one sequence (what a prefix-cache lookup restores into)."""
        return self._model.make_cache()

    def prefill(self, row: RowId, ids: list[int], images: Sequence[ChunkImage] = ()) -> None:
        """Run ids through the model into the row's cache; evaluates only the cache (no logits are needed)."""
        r = self._rows[row]
        self._forward(r, ids, images)
        mx.eval([a for c in r.cache for a in c.state])

    def prefill_scored(self, row: RowId, ids: list[int], targets: list[int], top_k: int,
                       images: Sequence[ChunkImage] = ()) -> list[TokenLogprob]:
        """Like prefill, but also score targets[i] (the token after ids[i]): prompt logprobs."""
        r = self._rows[row]
        logits = self._forward(r, ids, images)[0]
        mx.eval([logits] + [a for c in r.cache for a in c.state])
        chosen, top_ids, top_values = ops.prompt_scores(logits, targets, top_k)
        return [TokenLogprob(t, value, tops(i, v)) for t, value, i, v in zip(targets, chosen, top_ids, top_values)]

    def cache_of(self, row: RowId) -> list[LayerCache]:
        """The row's own cache before it joins the batch (for a prefix-cache snapshot of its prompt)."""
        return self._rows[row].cache

    def join(self, row: RowId, last_token: int) -> None:
        """Decode the row from the next step on, feeding `last_token` first: the prompt's last token after a
        prefill, or the last token generated when a parked row comes back."""
        self._joining.append(row)
        self._rows[row].next_token = last_token

    def park(self, row: RowId) -> None:
        """Take the row out of the batch at the next step, keeping its keys (a stream whose reader fell behind);
        `join` brings it back. A step of it already queued still returns its token."""
        r = self._rows[row]
        if row in self._joining:
            self._joining.remove(row)
            return
        index = self._order.index(row)
        r.state = [cache.row_state(index) for cache in self._caches]
        r.position = self._positions.values[index]
        self._leaving.add(row)

    def close(self, row: RowId, keep_cache: bool = False) -> list[LayerCache] | None:
        """Forget the row. With keep_cache, first its cache as single-sequence caches holding every position it
        saw (lazy views: read them before the next step), or None when a layer cannot give them all."""
        r = self._rows.pop(row, None)
        if r is None:
            return None
        kept: list[LayerCache] | None = None
        if row in self._joining:
            self._joining.remove(row)
            kept = r.cache if keep_cache else None
        elif row in self._order and row not in self._leaving:
            index = self._order.index(row)
            if keep_cache:
                caches = [cache.row_cache(index) for cache in self._caches]
                whole: list[LayerCache] = [c for c in caches if c is not None]
                kept = whole if len(whole) == len(caches) else None
            self._leaving.add(row)
        elif keep_cache and r.state is None:
            kept = r.cache
        return kept

    def batch_rows(self) -> set[RowId]:
        """Rows the batch holds or will hold: in it, joining, or in the step still to be read."""
        self._settle()
        return set(self._order) | set(self._joining) | set(self._pending.rows if self._pending else [])

    def has_work(self) -> bool:
        return bool(self._order or self._joining or self._pending)

    def reset_batch(self) -> None:
        """Forget every batch row and its keys (after a failed step: the caches' state is unknown)."""
        for row in self.batch_rows():  # which settles first: no constraint is touched after this returns
            self._rows.pop(row, None)
        self._order, self._joining, self._leaving, self._pending = [], [], set(), None
        self._positions.set([])
        for cache in self._caches:
            cache.keep_rows([])

    # -- the decode step -----------------------------------------------------------------------------------------

    @property
    def can_speculate(self) -> bool:
        """Whether rows may be given drafts: every layer's cache can roll rejected positions back (a recurrent
        layer's keeps the states after each position of a verify step)."""
        return all(isinstance(cache, (BatchKVCache, BatchRecurrentCache)) for cache in self._caches)

    def flush(self) -> list[StepResult]:
        """The tokens of the step queued last, queueing none (before a verify step, whose drafts need them)."""
        return self._flush()

    def _flush(self) -> list[StepResult]:
        # step() flushes through this one: a subclass's flush (parallel/replication.py's) runs only where called.
        self._settle()
        previous, self._pending = self._pending, None
        return self._final(previous) if previous is not None else []

    def _final(self, step: QueuedStep) -> list[StepResult]:
        """A queued step's tokens, final (checked_greedy.check), told to the constraints; next tokens set."""
        results = step.read()
        checked_greedy.check(step, results)
        return self._next_tokens(tell_constraints(results, step.owners))

    def _next_tokens(self, results: list[StepResult]) -> list[StepResult]:
        """Each open row's next token set from its results (they are on the host: the next step may feed them)."""
        for result in results:
            if (r := self._rows.get(result.row)) is not None:
                r.next_token = result.tokens[-1]
        return results

    def step(self, drafts: Mapping[RowId, list[int]] | None = None) -> list[StepResult]:
        """Queue the next decode step for every batch row, then return the tokens of the step queued before.

        With `drafts` (tokens proposed to follow each row's last one; rows left out have none) the step is a
        verify step instead: it runs synchronously and returns its own tokens, 1..k+1 per row (after those of a
        step still queued, if any)."""
        if drafts and self.can_speculate and any(drafts.get(row) for row in self._order + self._joining):
            return self._flush() + self._verify(drafts)
        self._settle()
        previous, self._pending = self._pending, None
        keep = [i for i, row in enumerate(self._order) if row not in self._leaving]
        joiners, self._joining, self._leaving = self._joining, [], set()
        self._regroup(keep, joiners)
        rows = [self._rows[row] for row in self._order]
        constrained = any(r.constraint for r in rows)
        if constrained and checked_greedy.checks(rows, self._pipelined):
            results = self._checked_step(previous, keep, joiners, rows)
        elif constrained:
            return self._constrained_step(previous, keep, joiners, rows)
        else:
            if rows:
                self._pending = self._sample(self._forward_step(self._inputs(previous, keep, joiners)), rows)
                self._positions.advance()
            results = tell_constraints(previous.read(), previous.owners) if previous is not None else []
        return results if self._pipelined else results + self._flush()

    def _checked_step(self, previous: QueuedStep | None, keep: list[int], joiners: list[RowId],
                      rows: list[RunnerRow]) -> list[StepResult]:
        """Constrained rows decoded as free ones, unpipelined (checked_greedy.py): the step before (a masked one, if
        any: a checking step is read within its call) told, this step's masks filled for the check of its tokens
        when it is read (`_flush`)."""
        assert previous is None or previous.check is None, "a forward built on unchecked tokens"
        logits = self._forward_step(self._inputs(previous, keep, joiners))
        results = previous.read() if previous is not None else []
        greedy = checked_greedy.argmax_logits(logits, rows)  # asks the grammars: before the mask thread has them
        told, masks = self._tell_then_fill(results.copy, previous, rows, upload=False)  # read on the host only
        self._pending = self._sample(logits, rows, greedy_logits=greedy)
        self._pending.check = CheckedStep(logits, masks)
        self._positions.advance()
        return told.result()

    def _constrained_step(self, previous: QueuedStep | None, keep: list[int], joiners: list[RowId],
                          rows: list[RunnerRow]) -> list[StepResult]:
        """A step of a batch holding constrained rows: the forward graph is built, then launched while the mask
        thread reads the step before (waiting for the device), tells its tokens to the constraints and fills the
        masks; then the sampling, masks applied, is queued, and this call returns the told tokens. Why this order
        (docs/performance.md, sessions 11, 21, 38): the fill must overlap the launch (16 rows' masks ~3.6 ms against
        a ~3.1 ms launch on an H200), and the launch must not wait for the device (a random 8B's 16-row step waited
        1.6 ms when the worker read the step before first). The mask thread reads `previous.tokens` through a node
        of their own (`QueuedStep.readback`) as the worker walks them; a free step's (a constrained row just
        joined) have none and are read here, before the launch."""
        logits = self._forward_step(self._inputs(previous, keep, joiners))
        if previous is None:
            read: Callable[[], list[StepResult]] = list
        elif previous.readback is not None:  # a constrained step's sampling: read on the mask thread
            read = previous.read
        else:  # a free step's (a constrained row joined): read here, before the launch walks its tokens
            results = previous.read()
            read = results.copy
        told, masks = self._tell_then_fill(read, previous, rows)
        try:
            mx.async_eval(logits)  # waits without the GIL: the fill's thread gets going meanwhile
            self._positions.advance()
            results, filled = told.result(), masks.result()
        except BaseException:
            masks.wait()  # the mask thread done with the constraints before the failed step's caller resets them
            raise
        # Sampled before this call returns, not by the next call (as until session 51): the readers of the results
        # the caller hands out then take the GIL during the next forward's long launch, not this short one, which
        # the worker waited ~1.5 ms for (docs/performance.md, session 51).
        self._pending = self._sample(apply_step_masks(logits, rows, filled), rows, apart=True)
        return results

    def _tell_then_fill(self, read: Callable[[], list[StepResult]], previous: QueuedStep | None, rows: list[RunnerRow],
                        upload: bool = True) -> tuple[HandOff[list[StepResult]], HandOff[FilledMasks]]:
        """Hand the mask thread the step before's tokens (`read`) to tell its rows' constraints, then this step's
        masks to fill (constrained_rows.tell_then_fill): the told results and the masks, each as they come."""
        if self._mask_thread is None:
            self._mask_thread = MaskThread()
        told: HandOff[list[StepResult]] = HandOff()
        owners = previous.owners if previous is not None else []
        return told, self._mask_thread.submit(tell_then_fill, read, owners, rows, self._vocab_size, told, upload)

    def _settle(self) -> None:
        """Wait for a checking step's masks: before anything reads or changes the batch, and before anything
        touches a constraint on this thread."""
        if self._pending is not None and self._pending.check is not None:
            self._pending.check.masks.wait()

    def _verify(self, drafts: Mapping[RowId, list[int]]) -> list[StepResult]:
        """One synchronous step feeding each row its last token and its drafts (rows with fewer fill up with
        copies, which they reject): [B, 1 + max k] through the model, each row's drafts verified, the cache
        columns of rejected ones rolled back."""
        keep = [i for i, row in enumerate(self._order) if row not in self._leaving]
        joiners, self._joining, self._leaving = self._joining, [], set()
        self._regroup(keep, joiners)
        rows = [self._rows[row] for row in self._order]
        fed = [within_vocabulary(drafts.get(row, []), self._vocab_size) for row in self._order]
        length = 1 + max(len(d) for d in fed)
        inputs = [[r.next_token, *d] + [r.next_token] * (length - 1 - len(d)) for r, d in zip(rows, fed)]
        logits = self._model(mx.array(inputs, dtype=mx.int32), cache=self._caches)
        if any(r.constraint for r in rows):
            mx.async_eval(logits)  # the masks are filled while the device runs the pass
            logits, fed = verify_masks(logits, rows, fed)
        first = logits[:, 0, :]
        tokens = accept_runs(logits, first, [(r.sampler, r.constraint is not None) for r in rows], fed)
        for cache in self._caches:
            cache.rollback([len(t) for t in tokens])
        self._positions.advance([len(t) for t in tokens])
        for r, run in zip(rows, tokens):
            r.next_token = run[-1]
        scored = [None if r.top_logprobs is None else
                  run_logprobs(logits[i, :len(run)] if d else first[i:i + 1], run, r.top_logprobs)
                  for i, (r, run, d) in enumerate(zip(rows, tokens, fed))]
        results = [StepResult(row, run, lp) for row, run, lp in zip(self._order, tokens, scored)]
        return tell_constraints(results, rows)

    def _regroup(self, keep: list[int], joiners: list[RowId]) -> None:
        if keep != list(range(len(self._order))):
            for cache in self._caches:
                cache.keep_rows(keep)
        for cache in self._caches:
            cache.compact()
        positions = [self._positions.values[i] for i in keep]
        for row in joiners:
            r = self._rows[row]
            states = r.state if r.state is not None else [c.kept() for c in r.cache]
            for cache, state in zip(self._caches, states):
                cache.add_row(state)
            positions.append(r.position if r.state is not None else r.cache[0].offset)
            r.cache, r.state = [], None  # the batch holds its keys now
        self._positions.set(positions)
        self._order = [self._order[i] for i in keep] + joiners

    def _inputs(self, previous: QueuedStep | None, keep: list[int], joiners: list[RowId]) -> mx.array:
        parts = []
        if keep and previous is None:  # the step before was a verify step: its tokens are on the host
            parts.append(mx.array([self._rows[row].next_token for row in self._order[:len(keep)]], dtype=mx.int32))
        elif keep:
            assert previous is not None
            tokens = previous.tokens
            parts.append(tokens if keep == list(range(tokens.shape[0])) else tokens[mx.array(keep, dtype=mx.int32)])
        if joiners:
            parts.append(mx.array([self._rows[row].next_token for row in joiners], dtype=mx.int32))
        return parts[0] if len(parts) == 1 else mx.concatenate(parts)

    def _forward_step(self, inputs: mx.array) -> mx.array:
        """The graph of one decode step's forward pass for every row (inputs int32 [B]): logits [B, vocab]."""
        return self._model(inputs.reshape(-1, 1), cache=self._caches)[:, -1, :]

    def _sample(self, logits: mx.array, rows: list[RunnerRow], apart: bool = False,
                greedy_logits: mx.array | None = None) -> QueuedStep:
        """Sample every row's next token from logits [B, vocab] and start computing it. Each row samples with its
        own sampler; rows that are plainly greedy share one argmax (of `greedy_logits` where given). `apart`: the
        tokens to be read on the mask thread (a `readback` node of their own)."""
        plain = [r.sampler.plain_greedy for r in rows]
        if not any(plain):
            tokens = mx.concatenate([r.sampler(logits[i]) for i, r in enumerate(rows)])
        else:
            argmax = mx.argmax(logits if greedy_logits is None else greedy_logits, axis=-1).astype(mx.int32)
            tokens = argmax if all(plain) else mx.concatenate(
                [argmax[i:i + 1] if plain[i] else r.sampler(logits[i]) for i, r in enumerate(rows)])
        scored = [None if r.top_logprobs is None else row_logprobs(logits[i], tokens[i], r.top_logprobs)
                  for i, r in enumerate(rows)]
        readback = mx.stop_gradient(tokens) if apart else None  # an identity: the same buffer, its own node
        mx.async_eval(tokens, *([readback] if readback is not None else []),
                      *[a for arrays in scored if arrays for a in arrays])
        return QueuedStep(list(self._order), tokens, scored, rows, readback)

    # -- the rest that needs the model ---------------------------------------------------------------------------

    def _forward(self, r: RunnerRow, ids: list[int], images: Sequence[ChunkImage]) -> mx.array:
        inputs = mx.array([ids], dtype=mx.int32)
        if not images:
            return self._model(inputs, cache=r.cache)
        assert self._images is not None, "images reached a text-only model"
        embedded = [(start, self._images.encode(image)) for start, image in images]
        return self._images.model(inputs, cache=r.cache, images=embedded)

    def kv_layout(self) -> KvLayout:
        """What each layer stores per position: one token run through a fresh cache, read off its shapes."""
        cache = self._model.make_cache()
        self._model(mx.array([[0]], dtype=mx.int32), cache=cache)
        mx.eval([a for c in cache for a in c.state])
        return KvLayout.of(cache)
