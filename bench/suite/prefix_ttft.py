"""Time to first token with a long shared prefix cached, against the same prefix cold (the anchor): a request
with a new prefix, then another with that prefix and a different question, through `mlxd serve` over gRPC.

    python -m bench prefix_ttft [--model smollm2|PATH --prefix-tokens 2000 --rounds 3] [--answer-tokens 256]

Each round uses a prefix never seen before, so its first request is cold. With --answer-tokens, each round also
plays a chat's next turn: the first request generates that many tokens, then a request resends prefix,
question and that answer plus a new question (the answer's KV comes from the cache), against one that sends
as many other tokens in the answer's place (only the prefix can come from the cache). Prints a table last.
"""

from __future__ import annotations

import argparse

from bench import common
from bench.daemon import Daemon
from mlxd_client import Client

QUESTION, OTHER_QUESTION, NEXT_QUESTION = [11, 12, 13, 14], [21, 22, 23, 24], [31, 32, 33, 34]


def one_round(client: Client, vocab: int, round_: int, args: argparse.Namespace) -> common.Row:
    prefix = common.prompt_ids(vocab, args.prefix_tokens, salt=round_)
    cold = common.timed_stream(client, prefix + QUESTION, max(4, args.answer_tokens))
    cached = common.timed_stream(client, prefix + OTHER_QUESTION, 4)
    row = {"cold_ms": cold["ttft_s"] * 1e3, "cold_cached": cold["cached_tokens"],
           "cached_ms": cached["ttft_s"] * 1e3, "cached_cached": cached["cached_tokens"]}
    if args.answer_tokens:
        answer = cold["tokens"]
        other = common.timed_stream(client, prefix + QUESTION + [(t + 1) % vocab for t in answer] + NEXT_QUESTION, 4)
        turn = common.timed_stream(client, prefix + QUESTION + answer + NEXT_QUESTION, 4)
        row |= {"turn_ms": turn["ttft_s"] * 1e3, "turn_cached": turn["cached_tokens"],
                "other_ms": other["ttft_s"] * 1e3, "other_cached": other["cached_tokens"]}
    return row


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--prefix-tokens", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--answer-tokens", type=int, default=0, help="also time a chat's next turn (see above)")
    common.add_out_arg(p, "prefix_ttft")
    args = p.parse_args(argv)
    model = common.resolve_model(args.model)
    with Daemon(model, args.out, "--dtype", args.dtype) as daemon, Client(daemon.addr) as client:
        vocab = client.model_info().vocab_size
        common.timed_stream(client, [5] * 64, 4)  # warm-up
        rows = common.alternate(args.rounds, [args.prefix_tokens], ["mlxd"],
                                lambda _, __, round_: one_round(client, vocab, round_, args), args.out / "runs.jsonl")

    print(f"\n{model.name}, {args.prefix_tokens}-token shared prefix, medians of {args.rounds} rounds")
    print(common.table(["cold TTFT ms", "cached TTFT ms", "cached / cold", "cached tokens"],
                       [[common.median(rows, "cold_ms"), common.median(rows, "cached_ms"),
                         common.median(rows, "cached_ms") / common.median(rows, "cold_ms"),
                         int(common.median(rows, "cached_cached"))]]))
    if args.answer_tokens:
        turn, other = common.median(rows, "turn_ms"), common.median(rows, "other_ms")
        print(f"next turn after a {args.answer_tokens}-token answer: {turn:.1f} ms with the answer cached "
              f"({common.median(rows, 'turn_cached'):.0f} tokens), {other:.1f} ms with another answer in its place "
              f"({common.median(rows, 'other_cached'):.0f} cached; {turn / other:.3f})")
