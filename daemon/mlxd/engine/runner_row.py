"""What the runner (engine/runner.py) keeps of each row it has open."""

from __future__ import annotations

from dataclasses import dataclass

from mlxd.engine.constraint import TokenConstraint
from mlxd.generation.sampling import Sampler
from mlxd.models.cache import LayerCache, RowState


@dataclass
class RunnerRow:
    sampler: Sampler
    top_logprobs: int | None              # None: no logprobs for its tokens
    cache: list[LayerCache]               # its own cache, until it joins the batch
    state: list[RowState] | None = None   # its batch columns while parked out of the batch
    position: int = 0                     # while parked: positions its columns hold
    next_token: int = 0                   # the token it feeds when it joins the batch
    constraint: TokenConstraint | None = None
    failure: Exception | None = None      # its constraint's, reported with its next result
