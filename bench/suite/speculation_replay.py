"""The n-gram speculation policy (engine/speculation.py) replayed over recorded greedy generations, with a cost per
verify width given, not timed: a deterministic comparison of drafting policies, where `speculative`'s timed runs on
a noisy machine cannot tell two policies apart (docs/performance.md, session 17).

    python -m bench speculation_replay [--model smollm2 --tasks rewrite,json,free --max-tokens 160]
                                       [--verify-costs 1,1.1,1.2,1.3,1.4] [--pause 0.5] [--recorded FILE]
                                       [--served 4 [--variant NAME:module.attribute=value;...]]
                                       [--cut 96 --end-ids 2]

Each task's prompt (the chat template rendered by the daemon's Tokenize) and its greedy output (plain decoding)
are recorded once from `mlxd serve`. Then a Speculator (adaptive, depth 4) steps through the output as the
scheduler would (`replay`): plain steps pipelined, so a step judges whether to draft before the row's newest token
is read; one that drafts reads it first, which costs `--pause` plain steps (the pipeline drains), then the recorded
output says how many drafts the model would accept, the step gives those plus one, and it costs
`--verify-costs[width - 1]` plain steps (measured costs fed to the policy the same way). Prints, per task, tokens per
plain-step-time against plain decoding (1.0), the acceptance, and the same for always drafting the full depth (the
policy's ceiling at these costs). --served N replays the tasks in turn N times through one Speculator, as one daemon
serves them (each new row starts from the acceptance the rows before it taught), as the policy stands and with each
--variant's settings; --recorded keeps the recorded generations in a file for the next run. --cut N replays each
output's first N tokens, ended after the first of --end-ids (SmolLM2's end of turn: 2): the answers `speculative`
times (96 tokens, ending at the model's end), where the recording goes on past the end (text a model writes after
its answer may copy more than the answer did).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench import common

# Free text beyond `speculative`'s one story (--more-free): one recorded answer decides too little about a policy for
# text that copies nothing.
MORE_FREE = {
    "free-email": "Write an email to a colleague asking to move Thursday's meeting to Friday afternoon.",
    "free-explain": "Explain how a refrigerator keeps food cold, for a ten-year-old.",
    "free-poem": "Write a poem about autumn rain in a city.",
    "free-tips": "Give some tips for someone learning to cook at home.",
    "free-history": "Describe what daily life was like in a medieval village.",
    "free-advice": "My friend and I argued about money. How can we make up?",
}


def record(model: Path, tasks: list[str], max_tokens: int, out: Path) -> dict[str, tuple[list[int], list[int]]]:
    """Each task's prompt tokens and greedy output tokens, from a daemon without speculation."""
    from bench.daemon import Daemon
    from bench.suite.speculative import TASKS
    from mlxd_client import Client
    from mlxd_client.chat import chat_messages
    from mlxd_proto.v1 import inference_pb2 as pb

    recorded = {}
    with Daemon(model, out, env=common.blas_env()) as daemon, Client(daemon.addr) as client:
        for task in tasks:
            output: list[int] = []
            messages = TASKS[task] if task in TASKS else [{"role": "user", "content": MORE_FREE[task]}]
            for response in client.generate(messages=messages, temperature=0.0, max_tokens=max_tokens,
                                            ignore_eos=True):
                if response.HasField("chunk"):
                    output += list(response.chunk.token_ids)
            request = pb.TokenizeRequest(chat=chat_messages(messages), add_special_tokens=True)
            prompt = list(client.stub.Tokenize(request).ids)  # the chat rendered as the daemon renders it
            recorded[task] = (prompt, output)
    return recorded


def speculator(costs: list[float], adaptive: bool) -> Any:
    """A Speculator (depth: the widest cost given) that has measured these costs, as the scheduler's would have."""
    from mlxd.engine.speculation import Speculator

    spec = Speculator(max_depth=len(costs) - 1, adaptive=adaptive)
    for width, cost in enumerate(costs, start=1):
        for _ in range(3):
            spec.timed(1, width, cost)
    return spec


def replay(prompt: list[int], output: list[int], costs: list[float], adaptive: bool,
           pause: float = 0.0, spec: Any = None, row: int = 0) -> tuple[float, float]:
    """(tokens per plain step's time against plain decoding, accepted / drafted) for one generation, stepped as
    the scheduler steps a row (engine/scheduler.py `_decode_one_step`): a plain step is pipelined, so the row's
    newest token is still being computed when the next step's drafts are judged (`wants_drafts`); a step that
    wants drafts first reads it (the pipeline drains: `pause` plain steps), then drafts and verifies, or, with no
    draft after all, queues a plain step. `spec`: a Speculator that served rows before (its prior theirs), else a
    new one."""
    if spec is None:
        spec = speculator(costs, adaptive)
    spec.start(row, prompt, cap=None)
    known, pending, time, drafted, accepted = 0, False, 0.0, 0, 0

    def read_pending() -> None:
        nonlocal known, pending
        spec.observe(row, [], output[known:known + 1])
        known, pending = known + 1, False

    # A token pending is never the output's last (that one is read as soon as it is queued), so a read leaves
    # tokens to generate.
    while known < len(output):
        if spec.wants_drafts({row: len(output) - known}, [row] if pending else []):
            if pending:
                read_pending()
                time += pause
            drafts = spec.drafts({row: len(output) - known}).get(row, [])
        else:
            drafts = []
        if drafts:
            right = 0
            while right < len(drafts) and drafts[right] == output[known + right]:
                right += 1
            spec.observe(row, drafts, output[known:known + right + 1])
            known += right + 1
            time += costs[len(drafts)]
            drafted, accepted = drafted + len(drafts), accepted + right
        else:  # a plain step: the one queued before is read, this one queued
            if pending:
                read_pending()
            pending = True
            time += 1.0
        if pending and known + 1 == len(output):  # the last token: read once computed
            read_pending()
    spec.forget(row)
    return len(output) / time, accepted / max(drafted, 1)


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    common.add_out_arg(p, "speculation_replay")
    p.add_argument("--tasks", default="rewrite,json,free")
    p.add_argument("--more-free", action="store_true", help="also MORE_FREE's prompts (free text of other kinds)")
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--verify-costs", default="1,1.1,1.2,1.3,1.4",
                   help="a step's cost in plain steps for widths 1 (plain), 2, ... (default: %(default)s)")
    p.add_argument("--pause", type=float, default=0.0,
                   help="what reading a pipelined step's token before drafting costs, in plain steps (the device's "
                        "part of a step, which the pipeline overlaps: ~0.5 on a GPU, ~0 on a CPU)")
    p.add_argument("--recorded", type=Path, help="a JSON file of the recorded generations: read if it exists, "
                                                    "else written after recording them")
    p.add_argument("--served", type=int, default=0,
                   help="also the tasks in turn, this many times over, by one Speculator (one daemon serving them: "
                        "each new row starts from the acceptance the rows before it showed); each task's median")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:SETTINGS",
                   help="with --served, also with these settings (module.attribute=value;...: common.patched)")
    p.add_argument("--cut", type=int, default=0, help="replay each output's first N tokens (0: all recorded)")
    p.add_argument("--end-ids", default="", help="with --cut, end each output after the first of these ids (a,b)")
    args = p.parse_args(argv)
    costs = [float(c) for c in args.verify_costs.split(",")]
    if args.recorded and args.recorded.exists():
        recorded = {task: (prompt, output) for task, (prompt, output) in json.loads(args.recorded.read_text()).items()}
    else:
        tasks = args.tasks.split(",") + (list(MORE_FREE) if args.more_free else [])
        recorded = record(common.resolve_model(args.model), tasks, args.max_tokens, args.out)
        if args.recorded:
            args.recorded.write_text(json.dumps(recorded))
    if args.cut:
        ends = {int(i) for i in args.end_ids.split(",") if i}
        recorded = {task: (prompt, answer(output[:args.cut], ends)) for task, (prompt, output) in recorded.items()}
    lines: list[list[Any]] = []
    for task, (prompt, output) in recorded.items():
        rate, acceptance = replay(prompt, output, costs, adaptive=True, pause=args.pause)
        full_rate, full_acceptance = replay(prompt, output, costs, adaptive=False, pause=args.pause)
        lines.append([task, len(output), rate, acceptance, full_rate, full_acceptance])
    print(f"verify costs (plain steps) for widths 1..{len(costs)}: {costs}; a pipeline pause {args.pause}")
    print(common.table(["task", "tokens", "adaptive x plain", "acceptance", "full depth x plain", "acceptance"],
                       lines))
    if args.served:
        served = [["as it is", *served_rates(recorded, costs, args.pause, args.served)]]
        for name, settings in map(common.variant, args.variant):
            with common.patched(settings):
                served.append([name, *served_rates(recorded, costs, args.pause, args.served)])
        print(f"\nthe tasks served in turn {args.served} times by one speculator: each task's median x plain")
        print(common.table(["policy", *recorded], served))


def answer(output: list[int], ends: set[int]) -> list[int]:
    """The output up to and with its first end id."""
    for i, token in enumerate(output):
        if token in ends:
            return output[:i + 1]
    return output


def served_rates(recorded: dict[str, tuple[list[int], list[int]]], costs: list[float], pause: float,
                 turns: int) -> list[float]:
    """Each task's median rate against plain when one Speculator serves the tasks in turn, `turns` times over."""
    spec, rates = speculator(costs, adaptive=True), {task: list[float]() for task in recorded}
    for turn in range(turns):
        for i, (task, (prompt, output)) in enumerate(recorded.items()):
            rates[task].append(replay(prompt, output, costs, True, pause, spec, row=turn * len(recorded) + i)[0])
    return [statistics.median(r) for r in rates.values()]


if __name__ == "__main__":
    main()
