"""Speculative decoding against plain decoding, over gRPC, in one daemon (`mlxd serve --speculate ...`): the same
requests with speculation on (the daemon's depth) and off (GenerationOptions.speculation = 0), alternating rounds.

    python -m bench speculative [--model smollm2|PATH] [--streams 1,16] [--tasks rewrite,json,free]
                                [--depth 8 --fixed] [--draft-model PATH] [--max-tokens 128 --rounds 3]
                                [--warm-rounds 0] [--ignore-eos]

Tasks: `rewrite` (a paragraph rewritten with small changes: copy-heavy), `json` (a JSON record filled from a given
text: keys and values copied), `json-schema` (the same, held to the record's JSON Schema: constrained rows
draft too), `free` (free text: little to copy). Each stream of a case sends that task's
prompt (greedy), all streams at once, and its answer ends where the model ends it or at --max-tokens (with
--ignore-eos always at --max-tokens: the text a model goes on with after its answer, free text whatever the task,
is counted too; sessions up to 35 measured so). Reports effective tok/s (completion tokens over the wall time from the
first request to the last token), its ratio to plain, and the acceptance rate (accepted / drafted tokens, from
Final.usage); then the ratio of the daemon's decode-phase rates (Final.timings, first token to last: what
speculation_inprocess reports) and the median times to first token, which tell a slower decode from a longer
start. The issue's H200 case: --model <8B folder> --draft-model <1B folder> (or the target as its own draft)
--streams 1,16. Without --draft-model the daemon drafts by n-gram prompt lookup.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from bench import common
from bench.daemon import Daemon
from mlxd_client import Client, pb

PARAGRAPH = ("The old lighthouse stood at the edge of the cliff, its white paint peeling in long strips. Every "
             "evening the keeper climbed the ninety steps to light the lamp, and every morning he wrote the weather "
             "in a small green notebook. Ships passed far out at sea, and none of them knew his name, but all of "
             "them trusted the light.")
RECORD = ("Maria Lopez, born 12 March 1987 in Valencia, Spain, works as a marine biologist at the Oceanographic "
          "Institute. Her email is maria.lopez@example.org and her phone number is +34 600 123 456. She speaks "
          "Spanish, English and Portuguese.")
TASKS = {
    "rewrite": [{"role": "user", "content": "Rewrite this paragraph, changing only 'keeper' to 'guardian' and "
                                            f"'green' to 'blue'. Keep everything else the same.\n\n{PARAGRAPH}"}],
    "json": [{"role": "user", "content": f"{RECORD}\n\nFill in this JSON record from the text above:\n"
                                         '{"name": "", "birth_date": "", "birth_place": "", "job": "", '
                                         '"employer": "", "email": "", "phone": "", "languages": []}'}],
    "free": [{"role": "user", "content": "Write a short story about a fox who learns to play the violin."}],
}
TASKS["json-schema"] = TASKS["json"]  # the same record, its output held to RECORD_SCHEMA (constrained rows draft)
_TEXT = {"type": "string", "maxLength": 60}
RECORD_SCHEMA = {"type": "object", "properties": {
    **{key: _TEXT for key in ("name", "birth_date", "birth_place", "job", "employer", "email", "phone")},
    "languages": {"type": "array", "items": _TEXT, "maxItems": 5}},
    "required": ["name", "birth_date", "birth_place", "job", "employer", "email", "phone", "languages"],
    "additionalProperties": False}


def _constraint(task: str) -> pb.Constraint | None:
    if task != "json-schema":
        return None
    return pb.Constraint(json_schema=json.dumps(RECORD_SCHEMA), max_whitespace=1)


def one_case(client: Client, contender: str, case: tuple[str, int], args: argparse.Namespace) -> common.Row:
    task, streams = case
    speculation = 0 if contender == "plain" else None

    def stream(_: int):
        return client.complete(messages=TASKS[task], temperature=0.0, max_tokens=args.max_tokens,
                               ignore_eos=args.ignore_eos, speculation=speculation, constraint=_constraint(task))

    start = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        done = list(pool.map(stream, range(streams)))
    elapsed = time.perf_counter() - start
    tokens = sum(d.final.usage.completion_tokens for d in done)
    drafted = sum(d.final.usage.drafted_tokens for d in done)
    accepted = sum(d.final.usage.accepted_draft_tokens for d in done)
    timings = [d.final.timings for d in done]
    # The daemon's own decode-phase rate (first token to last, per stream, summed over the streams: they run
    # together) beside the wall-clock one: in-process benchmarks report the decode phase, and a short request's wall
    # time holds its time to first token too.
    return {"tok_s": tokens / elapsed, "tokens": tokens, "drafted": drafted, "accepted": accepted,
            "acceptance": accepted / drafted if drafted else 0.0,
            "decode_tok_s": sum(t.decode_tokens_per_second for t in timings),
            "ttft_ms": 1e3 * statistics.median(t.time_to_first_token_seconds for t in timings)}


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--streams", default="1", help="comma-separated stream counts (default: %(default)s)")
    p.add_argument("--tasks", default="rewrite,json,free", help="comma-separated, of: " + ", ".join(TASKS))
    p.add_argument("--depth", type=int, default=0,
                   help="`--speculate-depth` (default: the daemon's, engine/speculation.py default_depth)")
    p.add_argument("--fixed", action="store_true", help="`--speculate-fixed`: always the full depth")
    p.add_argument("--draft-model", help="`--draft-model PATH` instead of n-gram lookup")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warm-rounds", type=int, default=0,
                   help="rounds run first and left out of the medians (their ratios printed after the table, their "
                        "runs in warm.jsonl): a fresh daemon's first speculative requests meet new shapes "
                        "(default: %(default)s)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="every answer --max-tokens long, past the model's end of it (see the top)")
    p.add_argument("--log-level", default="INFO", help="the daemon's (DEBUG: a line per step on speculation)")
    common.add_out_arg(p, "speculative")
    args = p.parse_args(argv)
    model = common.resolve_model(args.model)
    method = ["--draft-model", args.draft_model] if args.draft_model else ["--speculate", "ngram"]
    depth = str(args.depth) if args.depth else "default"
    serve = ["--dtype", args.dtype, *method, *(["--speculate-depth", depth] if args.depth else []),
             *(["--speculate-fixed"] if args.fixed else []),
             "--max-batch-size", str(max(int(s) for s in args.streams.split(","))), "--log-level", args.log_level]
    cases = [(task, int(n)) for task in args.tasks.split(",") for n in args.streams.split(",")]
    with Daemon(model, args.out, *serve) as daemon, Client(daemon.addr) as client:
        client.complete(messages=TASKS["free"], max_tokens=8)  # warm-up
        def run(contender: str, case: tuple[str, int], _: int) -> common.Row:
            return one_case(client, contender, case, args)

        warm = common.alternate(args.warm_rounds, cases, ["speculative", "plain"], run, args.out / "warm.jsonl")
        rows = common.alternate(args.rounds, cases, ["speculative", "plain"], run, args.out / "runs.jsonl")

    print(f"\n{model.name}, {' '.join(method)} depth {depth}{' fixed' if args.fixed else ' adaptive'}, "
          f"at most {args.max_tokens} tokens{' (ignoring the end token)' if args.ignore_eos else ''}, "
          f"medians of {args.rounds} rounds")
    lines = [[task, streams, common.median(rows, "tokens", case=(task, streams), contender="plain") / streams,
              common.median(rows, "tok_s", case=(task, streams), contender="plain"),
              common.median(rows, "tok_s", case=(task, streams), contender="speculative"),
              common.median_ratio(rows, "tok_s", "speculative", "plain", case=(task, streams)),
              common.median(rows, "acceptance", case=(task, streams), contender="speculative"),
              common.median_ratio(rows, "decode_tok_s", "speculative", "plain", case=(task, streams)),
              common.median(rows, "ttft_ms", case=(task, streams), contender="plain"),
              common.median(rows, "ttft_ms", case=(task, streams), contender="speculative")]
             for task, streams in cases]
    print(common.table(["task", "streams", "tokens a stream", "plain tok/s", "speculative tok/s", "ratio", "acceptance",
                        "decode-phase ratio", "plain ttft ms", "speculative ttft ms"], lines))
    noisy = [f"{task} x{streams} {moved:.0%}" for task, streams in cases
             if (moved := common.spread(rows, "tok_s", case=(task, streams), contender="plain")) > common.NOISY]
    if noisy:
        print("noisy: plain rounds spread " + ", ".join(noisy) + ": those ratios are not reliable")
    if warm:
        print(f"left out: {args.warm_rounds} warm round(s), ratios " + ", ".join(
            f"{task} x{streams} {common.median_ratio(warm, 'tok_s', 'speculative', 'plain', case=(task, streams)):.3f}"
            for task, streams in cases))


if __name__ == "__main__":
    main()
