"""The draft-model speculation policy (engine/speculation.py) stepped through rounds of requests at given step costs,
with no model: what the policy's probes and tries alone cost against plain decoding, at a chosen acceptance.

    python -m bench draft_policy [--streams 1,16] [--acceptance 0,0.05,0.5] [--rounds 6] [--tokens 96]
                                 [--plain-ms 5 --row-ms 0.5] [--verify-ratio 1.0 --width-ratio 0.03]
                                 [--draft-ms 2.5] [--catch-up-us 5]

Rounds of `--streams` requests start together (as `bench speculative`'s do) and each generates `--tokens` tokens;
the first round is a warm-up left out of the totals. A Speculator with a stand-in draft model (PolicyDraft) is asked
before every step, as the scheduler asks it (`wants_drafts`, `drafts`, `observe`, `timed`); each drafted token holds
with probability `--acceptance`. A plain step of B rows costs plain-ms + B x row-ms; a verify step of width L that
times verify-ratio x (1 + width-ratio x (L - 2)), plus the draft model's passes (draft-ms each) and its catch-up on
every token its rows took since they last drafted (catch-up-us each). Prints, per case, the tokens per second against
plain decoding of the same steps and the drafting steps among all steps. Where the daemon's ratio
(`gpu_steps.sh speculate-draft`, its step log at `LOG_LEVEL=DEBUG` gives the costs) falls below this one, the loss is
in the steps' own costs (new shapes compiling, a catch-up dearer than assumed), not in when the policy drafts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, cast

from bench import common
from mlxd.engine import draft_model
from mlxd.engine.speculation import Speculator


@dataclass
class Costs:
    plain_ms: float = 5.0       # a plain step's fixed part (a GPU's host-bound launch)...
    row_ms: float = 0.5         # ...and each row's
    verify_ratio: float = 1.0   # a verify step of width 2 against a plain step of the same rows...
    width_ratio: float = 0.03   # ...and each further drafted token
    draft_ms: float = 2.5       # one pass of the draft model (all rows)
    catch_up_us: float = 5.0    # the draft model taking in one pending token

    def plain(self, rows: int) -> float:
        return (self.plain_ms + self.row_ms * rows) / 1e3

    def verify(self, rows: int, width: int) -> float:
        return self.plain(rows) * self.verify_ratio * (1 + self.width_ratio * (width - 2))


@dataclass
class PolicyDraft:
    """Stands in for engine/draft_model.py's DraftModel: drafts random tokens and counts what a draft costs."""

    costs: Costs
    rng: random.Random
    pending: dict[int, int] = field(default_factory=dict)  # row -> tokens it has not taken in
    caught_up: float = 0.0
    last: float = 0.0           # seconds the last draft() took, its catch-up included

    def start(self, row: int, prompt: list[int]) -> None:
        self.pending[row] = len(prompt)

    def forget(self, row: int) -> None:
        self.pending.pop(row, None)

    def observe(self, row: int, drafted: list[int], tokens: list[int]) -> None:
        if row in self.pending:
            self.pending[row] += len(tokens)

    def draft(self, depths: dict[int, int]) -> dict[int, list[int]]:
        deepest = max(depths.values(), default=0)
        if not deepest:
            return {}
        # Every row in the caches takes its pending tokens in (DraftModel.draft); more than a few is a catch-up.
        backlog = sum(self.pending.values())
        caught_up = max(self.pending.values()) > draft_model._STEADY
        self.caught_up = backlog * self.costs.catch_up_us / 1e6 if caught_up else 0.0
        self.last = self.caught_up + deepest * self.costs.draft_ms / 1e3
        self.pending = dict.fromkeys(self.pending, 0)
        return {row: [self.rng.randrange(1 << 15) for _ in range(k)] for row, k in depths.items() if k}


def simulate(streams: int, acceptance: float, costs: Costs, rounds: int = 6, tokens: int = 96, prompt: int = 40,
             depth: int = 4, seed: int = 0) -> tuple[float, int, int]:
    """(tokens per second against plain decoding, drafting steps, steps) over the rounds after the first."""
    rng = random.Random(seed)
    draft = PolicyDraft(costs, rng)
    spec = Speculator(max_depth=depth, model=cast(draft_model.DraftModel, draft))
    spent = plain_spent = 0.0
    drafting = steps = 0
    next_row = 0
    for round_ in range(rounds):
        rooms = {}
        for _ in range(streams):
            spec.start(next_row, [1] * prompt, None)
            rooms[next_row] = tokens
            next_row += 1
        while rooms:
            rows = len(rooms)
            drafts = spec.drafts(rooms) if spec.wants_drafts(rooms) else {}
            width = 1 + max(map(len, drafts.values()), default=0)
            seconds = draft.last + costs.verify(rows, width) if width > 1 else costs.plain(rows)
            spec.timed(rows, width, seconds * rng.uniform(0.97, 1.03))  # a step's times spread a little
            for row in list(rooms):
                held = 0
                while held < len(drafts.get(row, [])) and rng.random() < acceptance:
                    held += 1
                got = min(held + 1, rooms[row])
                spec.observe(row, drafts.get(row, []), [1] * got)
                rooms[row] -= got
                if round_:
                    plain_spent += costs.plain(rows) / rows * got
                if not rooms[row]:
                    del rooms[row]
                    spec.forget(row)
            if round_:
                spent += seconds
                steps += 1
                drafting += width > 1
    return plain_spent / spent, drafting, steps


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--streams", default="1,16")
    p.add_argument("--acceptance", default="0,0.05,0.5")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seeds", type=int, default=3)
    defaults = Costs()
    for name in ("plain_ms", "row_ms", "verify_ratio", "width_ratio", "draft_ms", "catch_up_us"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    args = p.parse_args(argv)
    costs = Costs(args.plain_ms, args.row_ms, args.verify_ratio, args.width_ratio, args.draft_ms, args.catch_up_us)
    lines: list[list[Any]] = []
    for streams in [int(s) for s in args.streams.split(",")]:
        for acceptance in [float(a) for a in args.acceptance.split(",")]:
            runs = [simulate(streams, acceptance, costs, args.rounds, args.tokens, depth=args.depth, seed=seed)
                    for seed in range(args.seeds)]
            ratios = sorted(r for r, _, _ in runs)
            lines.append([streams, acceptance, ratios[len(ratios) // 2], ratios[0], runs[0][1], runs[0][2]])
    print(f"{costs}; depth {args.depth}, {args.tokens} tokens a request, rounds {args.rounds} (the first left out)")
    print(common.table(["streams", "acceptance", "x plain (median)", "lowest", "drafting steps", "steps"], lines))


if __name__ == "__main__":
    main()
