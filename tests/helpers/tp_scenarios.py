"""One rank of the random serving scenarios (tests/engine/scenarios.py) on a tensor-parallel group of two
(tests/helpers/ranks.py starts both): rank 0 serves each scenario, and each request alone, through schedulers
whose runner and prefix cache replicate every call (parallel/leader.py's ReplicatedParts), and prints a line per
fault; rank 1 replays the calls as a follower does (parallel/replay.py), so a scenario that drives the ranks apart
ends in a Divergence there.

    python -m tests.helpers.tp_scenarios OUT FIRST_SEED COUNT ARCH...   (as both ranks of one ring group)
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.vision import ImageEncoder
from mlxd.loading.model_source import load_model_and_tokenizer
from mlxd.parallel.channel import recv_frame, send_frame
from mlxd.parallel.constraints import FollowerGrammars
from mlxd.parallel.group import init_group
from mlxd.parallel.leader import ReplicatedParts
from mlxd.parallel.replay import Replayer
from tests.engine.scenarios import check
from tests.helpers.parity import PARITY, fixture_grammars
from tests.helpers.sharded_batch import side_channel

DONE = "scenarios_done"


def main(out: Path, first: int, count: int, archs: list[str]) -> None:
    group = init_group("ring")
    sock = side_channel(out, group.rank())
    for arch in archs:
        loaded, tokenizer = load_model_and_tokenizer(PARITY / arch, "float32", group)
        if group.rank() == 0:
            runtime = ModelRuntime.from_loaded(loaded, tokenizer)
            runtime.parts = ReplicatedParts(lambda message: send_frame(sock, message))
            grammars = fixture_grammars(arch, runtime)
            for seed in range(first, first + count):
                for fault in check(runtime, seed, grammars, replicable=True):
                    print(f"{arch} seed {seed}: {fault}", flush=True)
            send_frame(sock, {"op": DONE})
            continue
        vision = loaded.vision_language
        encoder = ImageEncoder(vision, 64 << 20) if vision is not None else None
        replayer = Replayer(loaded.model, loaded.vocab_size, encoder,
                            FollowerGrammars(lambda serialized=tokenizer.serialized: serialized, loaded.vocab_size))
        while (message := recv_frame(sock)) is not None and message["op"] != DONE:
            replayer.handle(message)
        if message is None:
            raise RuntimeError("rank 0 closed the side channel before it was done")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
