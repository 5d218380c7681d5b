"""A rank other than 0: load this rank's share of the model, then replay rank 0's runner and prefix-cache calls
(replication.py) in order until rank 0 says exit. It serves nothing itself.

It stops with rank 0: started by `mlxd serve --tensor-parallel N` it dies with its parent (PR_SET_PDEATHSIG, also
when rank 0 is SIGKILLed), and on any host it exits when the side channel closes, even while it waits in a
collective. SIGTERM alone does not stop it: rank 0 drains first, then tells every rank to exit (code 0).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from mlxd.parallel import channel
from mlxd.parallel.group import environment_rank, init_group

log = logging.getLogger("mlxd.follower")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlxd-follower", description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--leader", required=True, help="rank 0's side channel, host:port")
    parser.add_argument("--backend", default="ring")
    parser.add_argument("--image-cache-bytes", type=int, default=256 << 20)
    parser.add_argument("--die-with-parent", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    rank = environment_rank()
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    if rank is None or rank == 0:
        log.error("a follower needs MLX_RANK > 0 and its group's environment")
        return 2
    if args.die_with_parent:
        _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: log.info("SIGTERM: rank 0 drains, then stops this rank"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    end = channel.connect(args.leader, rank)
    inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    threading.Thread(target=_read, args=(end.sock, inbox, end.loaded), name="side-channel", daemon=True).start()
    try:
        replayer = _load(args)
        end.say_loaded()
        while True:
            message = inbox.get()
            if message["op"] == "exit":
                break
            replayer.handle(message)
    except BaseException:
        log.exception("rank %d failed", rank)
        _exit(1)
    log.info("rank %d exits", rank)
    _exit(0)
    return 0


def _load(args: argparse.Namespace) -> Any:
    import mlx.core as mx

    from mlxd.engine.vision import ImageEncoder
    from mlxd.loading.loader import load_model
    from mlxd.loading.model_source import load_model_tokenizer
    from mlxd.parallel.constraints import FollowerGrammars
    from mlxd.parallel.replay import Replayer

    mx.set_default_stream(mx.new_stream(mx.default_device()))
    group = init_group(args.backend)
    loaded = load_model(args.model, dtype=args.dtype, fuse=True, group=group)
    vision = loaded.vision_language
    encoder = ImageEncoder(vision, args.image_cache_bytes) if vision is not None else None
    log.info("rank %d of %d loaded its share of %s", group.rank(), group.size(), args.model)
    # The tokenizer only for constrained rows' grammars; their tables built as this rank loads (constraints.py),
    # with the EOS ids rank 0's compiler gets (LoadedModel.end_token_ids).
    tokenizer = load_model_tokenizer(args.model)
    grammars = FollowerGrammars(lambda: tokenizer.serialized, loaded.vocab_size)
    grammars.prepare(loaded.end_token_ids(tokenizer.eos_token_ids))
    return Replayer(loaded.model, loaded.vocab_size, encoder, grammars)


def _read(sock: socket.socket, inbox: queue.SimpleQueue, loaded: threading.Event) -> None:
    """Frames into `inbox` (rank 0's heartbeats dropped); when rank 0 is gone, or silent once it has accepted this
    rank (its first frame: it beats from then on) for LOAD_TIMEOUT while either has not loaded (`loaded`: this
    rank; rank 0's first runner call says it of rank 0), HEARTBEAT_TIMEOUT after, exit at once (the main thread may
    be waiting in a collective)."""
    accepted = leader_loaded = False

    def allowed() -> float | None:
        if not accepted:
            return None
        return channel.HEARTBEAT_TIMEOUT if leader_loaded and loaded.is_set() else channel.LOAD_TIMEOUT

    while True:
        try:
            message = channel.next_frame(sock, allowed)
        except TimeoutError as e:  # Silent, or a frame begun and cut short
            seconds = e.seconds if isinstance(e, channel.Silent) else channel.HEARTBEAT_TIMEOUT
            loading = "" if seconds == channel.HEARTBEAT_TIMEOUT else " while it loads"
            log.error("rank 0 stalled: nothing from it for %.0f s%s; exiting", seconds, loading)
            _exit(1)
        except (OSError, ValueError):
            message = None
        if message is None:
            log.error("rank 0 is gone: exiting")
            _exit(1)
        if not accepted:  # rank 0's first frame: it has accepted this rank and beats from now on
            accepted = True
            sock.settimeout(channel.HEARTBEAT_TIMEOUT)  # bounds a frame once begun (next_frame)
        leader_loaded = leader_loaded or message != channel.HEARTBEAT  # a runner call
        if message == channel.HEARTBEAT:
            continue
        inbox.put(message)
        if message.get("op") == "exit":
            return


def _die_with_parent() -> None:
    """SIGKILL this process when its parent (rank 0) dies, however it dies (Linux; elsewhere the side channel's
    end stops it)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the call
        _exit(1)


def _exit(code: int) -> NoReturn:
    # Skip the interpreter's teardown (MLX's static destructors may abort with a collective in flight).
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
