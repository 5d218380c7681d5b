"""Many random serving scenarios (tests/engine/scenarios.py) per architecture: each request batched among others
must yield what it yields alone. Prints each failing scenario whole, then a line per architecture; exit 1 on any.

    .venv/bin/python -m tests.stress.scenarios --seeds 200 [--first 0] [--arch llama qwen3_5 ...] [--draft llama]
        [--mask-processes N] [--threaded | --service]

--draft: speculate with that fixture as the draft model (every fixture has the same 320-token vocabulary).
Requests carry real grammars too (llguidance), their masks filled in --mask-processes processes (default 0).
--threaded: through the worker thread, each request's client a thread (tests/engine/threaded_scenarios.py).
--service: over gRPC to a daemon process per scenario (tests/service/service_scenarios.py; text models only).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

from mlxd.loading.model_source import load_model_and_tokenizer
from tests.engine.scenarios import ARCHITECTURES, check
from tests.engine.threaded_scenarios import check_threaded
from tests.helpers.parity import PARITY, fixture_grammars, fixture_runtime
from tests.service import service_scenarios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--arch", nargs="+", default=ARCHITECTURES)
    parser.add_argument("--draft", help="a fixture to draft with (attention layers only: llama, mistral, qwen3)")
    parser.add_argument("--mask-processes", type=int, default=0)
    parser.add_argument("--threaded", action="store_true")
    parser.add_argument("--service", action="store_true")
    args = parser.parse_args()
    failed = 0
    for arch in args.arch:
        runtime = fixture_runtime(arch)
        if args.draft:
            runtime.draft_model = load_model_and_tokenizer(PARITY / args.draft, dtype="float32")[0].model
        grammars = fixture_grammars(arch, runtime, args.mask_processes)
        alone = service_scenarios.alone_daemon(arch) if args.service else None
        start, bad = time.perf_counter(), []
        for seed in range(args.first, args.first + args.seeds):
            if alone is not None:
                faults = service_scenarios.check(arch, seed, alone)
            elif args.threaded:
                faults = check_threaded(functools.partial(fixture_runtime, arch), runtime, seed, grammars)
            else:
                faults = check(runtime, seed, grammars)
            if faults:
                bad.append(seed)
                print(f"== {arch}, seed {seed}\n" + "\n".join(faults), flush=True)
        if alone is not None:
            alone.stop()
        failed += len(bad)
        print(f"{arch}: {args.seeds - len(bad)} of {args.seeds} scenarios pass ({time.perf_counter() - start:.0f} s)"
              f"{'; failing seeds ' + str(bad) if bad else ''}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
