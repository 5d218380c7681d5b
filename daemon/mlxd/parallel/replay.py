"""A follower's replay of rank 0's runner and prefix-cache calls (replication.py), message by message."""

from __future__ import annotations

import logging
from typing import Any

from mlxd.engine.prefix_cache import PrefixCache
from mlxd.engine.runner import Runner
from mlxd.engine.vision import ImageEncoder
from mlxd.models.cache import LayerCache
from mlxd.models.protocol import LanguageModel
from mlxd.parallel.codec import decode_images, decode_sampling, read_tokens
from mlxd.parallel.constraints import FollowerGrammars

log = logging.getLogger(__name__)


class Divergence(RuntimeError):
    """This rank computed other tokens or found another prefix than rank 0: the group must stop."""


class Replayer:
    def __init__(self, model: LanguageModel, vocab_size: int, image_encoder: ImageEncoder | None,
                 grammars: FollowerGrammars | None = None) -> None:
        self._model, self._vocab_size, self._images = model, vocab_size, image_encoder
        self._grammars = grammars  # None: a constrained open fails here (rank 0 then runs the row unmatched)
        self.runner = Runner(model, vocab_size, image_encoder)
        self.prefix = PrefixCache(0)
        self._kept: dict[int, list[LayerCache]] = {}   # caches close(keep_cache) gave, until the next step
        self._restored: list[LayerCache] | None = None  # what the last lookup found, for the next open
        self._read: list[int] = []

    def handle(self, message: dict[str, Any]) -> None:
        op = message["op"]
        try:
            getattr(self, f"_{op}")(message)
        except Divergence:
            raise
        except Exception:
            # Rank 0 met the same error in the same call and handles it (ends the request, resets the batch);
            # its next calls say what to do.
            log.warning("replaying %s failed as it must have on rank 0", op, exc_info=True)

    def _runner(self, m: dict[str, Any]) -> None:
        self.runner = Runner(self._model, self._vocab_size, self._images)
        self._kept, self._restored, self._read = {}, None, []

    def _prefix_cache(self, m: dict[str, Any]) -> None:
        self.prefix = PrefixCache(m["budget"])

    def _open(self, m: dict[str, Any]) -> None:
        cache, self._restored = (self._restored if m["restored"] else None), None
        spec, constraint = m.get("constraint"), None
        if spec is not None:
            if self._grammars is None:
                raise Divergence("rank 0 opened a constrained row; this rank cannot build its grammar")
            constraint = self._grammars.constraint(spec)
        self.runner.open(m["row"], decode_sampling(m["sampling"]), m["prompt_ids"], m["top_logprobs"], cache,
                         constraint)

    def _prefill(self, m: dict[str, Any]) -> None:
        self.runner.prefill(m["row"], m["ids"], decode_images(m["images"]))

    def _prefill_scored(self, m: dict[str, Any]) -> None:
        self.runner.prefill_scored(m["row"], m["ids"], m["targets"], m["top_k"], decode_images(m["images"]))

    def _join(self, m: dict[str, Any]) -> None:
        self.runner.join(m["row"], m["token"])

    def _park(self, m: dict[str, Any]) -> None:
        self.runner.park(m["row"])

    def _close(self, m: dict[str, Any]) -> None:
        caches = self.runner.close(m["row"], m["keep_cache"])
        if caches is not None:
            self._kept[m["row"]] = caches

    def _reset_batch(self, m: dict[str, Any]) -> None:
        self.runner.reset_batch()

    def _check(self, m: dict[str, Any]) -> None:
        if m["check"] != self._read:
            raise Divergence(f"rank 0 read tokens {m['check']}, this rank {self._read}")

    def _step(self, m: dict[str, Any]) -> None:
        self._check(m)
        self._kept.clear()  # lazy views of the batch: stale once another step runs
        drafts = {int(row): tokens for row, tokens in m["drafts"].items()} if m.get("drafts") else None
        self._read = read_tokens(self.runner.step(drafts))

    def _flush(self, m: dict[str, Any]) -> None:
        self._check(m)
        self._read = read_tokens(self.runner.flush())

    def _kv_layout(self, m: dict[str, Any]) -> None:
        self.runner.kv_layout()

    def _lookup(self, m: dict[str, Any]) -> None:
        found, self._restored = self.prefix.lookup(m["tokens"], self.runner.new_cache)
        if found != m["found"]:
            raise Divergence(f"rank 0's prefix cache had {m['found']} tokens of a prompt, this rank's {found}")

    def _insert(self, m: dict[str, Any]) -> None:
        row = m["row"]
        caches = self._kept.pop(row) if row in self._kept else self.runner.cache_of(row)
        self.prefix.insert(m["tokens"], caches, m["wait"])

    def _clear(self, m: dict[str, Any]) -> None:
        self.prefix.clear()
