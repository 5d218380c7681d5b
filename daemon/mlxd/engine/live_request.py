"""An admitted request as the scheduler (engine/scheduler.py) tracks it: its phase, how much of its prompt is
prefilled, its decode steps queued and whether the runner's batch holds it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mlxd.engine.constrained_rows import RowId
from mlxd.engine.output import RequestOutput
from mlxd.engine.request import GenerationRequest


class Phase(enum.Enum):
    PREFILL = 1
    DECODE = 2
    PAUSED = 3
    DONE = 4


@dataclass(eq=False)
class LiveRequest:
    """One admitted request as the scheduler tracks it (engine/scheduler.py)."""

    request: GenerationRequest
    output: RequestOutput
    row: RowId
    reserved: int                 # tokens its cache may grow to (prompt + token limit)
    phase: Phase = Phase.PREFILL
    prefilled: int = 0            # prompt tokens in its cache (all but the last go by prefill)
    queued: int = 0               # decode steps queued for it
    in_batch: bool = False        # the runner steps it
    paused_at: float = 0.0

    @property
    def prefix_cacheable(self) -> bool:
        """Image tokens are placeholders whose KV depends on the image, and prompt logprobs need every prompt
        position to run: such prompts neither come from nor go to the prefix cache."""
        return not self.request.images and not self.request.prompt_logprobs
