"""The `mlxd` command: `serve` runs the daemon; `generate`, `health`, `info` are client commands."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mlxd_client.cli import add_client_commands, run

if TYPE_CHECKING:
    from mlxd.engine.worker import RuntimeFactory
    from mlxd.parallel.launch import Ranks


def _mask_processes(text: str) -> int:
    """`--mask-processes`: N >= 0, or auto (-1: constraints/mask_pool.py processes_for decides; its module loads
    llguidance, which the client commands need not)."""
    if text == "auto":
        return -1
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a count or auto, got {text!r}")
    return int(text)


def _prefill_chunk(text: str) -> int:
    """`--prefill-chunk`: N >= 1, or auto (0: the kernels chosen at load decide, models/ops.py prefill_chunk)."""
    return 0 if text == "auto" else _count(1)(text)


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`. A daemon started with --max-batch-size 0 (or a
    backlog, a prefill chunk, a preparation slot of 0) served nothing: every request waited for its deadline."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _amount(positive: bool) -> Callable[[str], float]:
    """An argparse type: a number above 0 (`positive`), or at least 0; seconds and sizes."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or not (value > 0 if positive else value >= 0):
            raise argparse.ArgumentTypeError(f"must be {'above' if positive else 'at least'} 0 and finite, "
                                             f"got {text!r}")
        return value
    return parse


def _add_serve(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve a model over gRPC")
    serve.add_argument("--model", type=Path,
                       help="a Hugging Face or MLX model folder, or a .gguf file; default: SmolLM2-135M-Instruct "
                            "(Q4_1 GGUF, fetched once into ~/.cache/mlxd/models)")
    serve.add_argument("--addr", default="127.0.0.1:50051",
                       help="host:port (port 0 picks a free one) or unix:/path/to.sock (unix: alone = a socket in a "
                            "new private directory); an address other than loopback needs TLS or a token")
    serve.add_argument("--dtype", default="auto", choices=["auto", "keep", "float32", "float16", "bfloat16"],
                       help="weight dtype; auto = float32 on a Linux CPU (fast BLAS path), the checkpoint's on a GPU")
    serve.add_argument("--speculate", default="", choices=["", "ngram"],
                       help="speculative decoding: ngram = draft by prompt lookup (exact; depth adapts per request)")
    serve.add_argument("--speculate-depth", type=_count(1), default=0,
                       help="most tokens drafted per request per step (default: 8 by ngram, 4 by a draft model or "
                            "with recurrent layers)")
    serve.add_argument("--draft-model", type=Path,
                       help="speculative decoding by this smaller model (a folder or GGUF with the same vocabulary)")
    serve.add_argument("--speculate-fixed", action="store_true",
                       help="always draft --speculate-depth tokens, never adapt (benchmarks and tests)")
    serve.add_argument("--mask-processes", type=_mask_processes, default=-1, metavar="N|auto",
                       help="fill constrained rows' masks (structured output) in N processes beside the worker's "
                            "own thread, in parallel: for hosts with cores to spare, where a batch's masks take "
                            "longer than the forward pass's launch; 0 = the worker's thread alone; auto (default) "
                            "= 3 on a GPU host with 8 or more cores, else 0 (constraints/mask_pool.py AUTO)")
    serve.add_argument("--max-queue", type=_count(0), default=64,
                       help="requests waiting beyond this get RESOURCE_EXHAUSTED")
    serve.add_argument("--prefill-chunk", type=_prefill_chunk, default=0, metavar="N|auto",
                       help="prompt tokens per prefill step; the streams already decoding wait at most one chunk; "
                            "auto (default) = 2048 on a CUDA GPU, else 512 (models/ops.py prefill_chunk)")
    serve.add_argument("--max-batch-size", type=_count(1), default=16, help="most sequences decoding together")
    serve.add_argument("--kv-cache-mb", type=_count(0), default=0,
                       help="KV-cache memory admission may promise to running requests (prompt + max_tokens each); "
                            "0 = half the memory left after loading (divided among --tensor-parallel ranks that "
                            "share one device)")
    serve.add_argument("--prefix-cache-mb", type=_count(0), default=2048,
                       help="memory for KV snapshots of earlier prompts, reused by prompts that start the same "
                            "way (multi-turn chats, shared system prompts); 0 turns it off")
    serve.add_argument("--max-prompt-tokens", type=_count(0), default=0, help="0 = the model's context length")
    serve.add_argument("--max-message-mb", type=_count(1), default=64, help="largest gRPC message accepted")
    serve.add_argument("--max-image-mb", type=_amount(True), default=20, help="largest encoded image accepted")
    serve.add_argument("--max-image-pixels", type=_count(1), default=50_000_000,
                       help="largest decoded image (width x height) accepted; guards against decompression bombs")
    serve.add_argument("--max-images", type=_count(0), default=16, help="most images in one request")
    serve.add_argument("--max-image-decode-mb", type=_amount(True), default=512,
                       help="memory one image may take while it is decoded (width x height x bytes per pixel of "
                            "its mode, with the conversion to RGB); larger JPEGs decode at a reduced scale")
    serve.add_argument("--image-cache-mb", type=_count(0), default=256,
                       help="memory for encoded images kept for the next request (vision-language models)")
    serve.add_argument("--max-preparing", type=_count(1), default=2,
                       help="requests prepared at once (tokenizing, chat templates, stop strings, image decoding); "
                            "the rest wait their turn, and leave the line when their client goes")
    serve.add_argument("--max-stream-backlog", type=_count(1), default=256,
                       help="events a stream's client may leave unread before its sequence pauses")
    serve.add_argument("--stalled-stream-seconds", type=_amount(True), default=60.0,
                       help="a sequence paused this long because its client stopped reading is cancelled")
    serve.add_argument("--max-connections", type=_count(0), default=0,
                       help="client connections held at once; 0 = the open-file limit (raised to its hard limit "
                            "at start) less a reserve for the daemon itself")
    serve.add_argument("--max-streams-per-connection", type=_count(1), default=1024,
                       help="concurrent calls on one connection")
    serve.add_argument("--idle-connection-seconds", type=_amount(True), default=60.0,
                       help="a connection without calls this long is closed (clients reconnect when they need to)")
    serve.add_argument("--grace-period", type=_amount(False), default=10.0,
                       help="seconds in-flight streams may finish after SIGTERM before they are cancelled")
    serve.add_argument("--stall-timeout", type=_amount(True), default=60.0,
                       help="health turns NOT_SERVING when pending work sees no progress this long")
    serve.add_argument("--exit-on-stdin-eof", action="store_true", help="also exit when stdin closes")
    serve.add_argument("--auth-token-file", type=Path,
                       help="require `authorization: Bearer <token>` metadata with the token in this file")
    serve.add_argument("--auth-exempt-health", action="store_true", help="let health checks through without the token")
    serve.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate (chain)")
    serve.add_argument("--tls-key", type=Path, help="the PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path, help="mutual TLS: clients need a certificate this CA signed")
    serve.add_argument("--tensor-parallel", type=_count(1), default=1, metavar="N",
                       help="split the model across N ranks on this host (processes on the CPU, one GPU each on "
                            "CUDA): each holds 1/N of the weights; see docs/tensor-parallel.md")
    serve.add_argument("--tp-backend", default="auto", choices=("auto", "nccl", "ring"),
                       help="how the ranks of --tensor-parallel talk: auto (NCCL on CUDA, else MLX's ring), or ring "
                            "on CUDA to let the ranks share one GPU (slow: for correctness runs)")
    serve.add_argument("--tp-leader", metavar="HOST:PORT",
                       help="with mlx.launch on several hosts: rank 0's side-channel address, reachable from every "
                            "rank; rank 0 serves, the others follow it (docs/tensor-parallel.md)")
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument("--log-requests", action="store_true",
                       help="log each generation's prompt and output (truncated) at INFO; without it no prompt or "
                            "output text reaches the log, and tracebacks leave out exception messages")
    serve.add_argument("--log-requests-max-chars", type=_count(0), default=1000,
                       help="client text kept per logged field with --log-requests")
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace, load: RuntimeFactory | None = None) -> int:
    from mlxd.launcher import reexec_with_blas
    reexec_with_blas()
    from mlxd.service.request_log import RequestLog, configure_logging
    configure_logging(args.log_level, args.log_requests)
    if args.model is None:
        from mlxd.demo_models import fetch_model
        from mlxd.errors import ModelLoadError
        try:
            args.model = fetch_model()
        except ModelLoadError as error:
            print(f"mlxd: cannot fetch the default model: {error}", file=sys.stderr)
            return 1
    ranks, load = _tensor_parallel(args, load)
    if isinstance(ranks, int):
        return ranks  # this process was a follower, and is done
    from mlxd.engine.worker import WorkerOptions
    from mlxd.images.decode import ImageLimits
    from mlxd.service.connections import ConnectionLimits
    from mlxd.service.limits import Limits
    from mlxd.service.server import ServeOptions, serve
    from mlxd.service.tls import TlsFiles
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca and args.tls_cert is None):
        print("mlxd: --tls-cert and --tls-key go together, and --tls-client-ca needs them", file=sys.stderr)
        return 1
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    images = ImageLimits(max_bytes=int(args.max_image_mb * (1 << 20)), max_pixels=args.max_image_pixels,
                         max_images=args.max_images, max_decode_bytes=int(args.max_image_decode_mb * (1 << 20)))
    limits = Limits(max_prompt_tokens=args.max_prompt_tokens, max_message_bytes=args.max_message_mb << 20,
                    images=images)
    worker = WorkerOptions(model_path=args.model, dtype=args.dtype, max_queue=args.max_queue,
                           prefill_chunk_size=args.prefill_chunk, max_batch_size=args.max_batch_size,
                           kv_cache_bytes=args.kv_cache_mb << 20, prefix_cache_bytes=args.prefix_cache_mb << 20,
                           kv_cache_sharing=ranks.sharing_device if ranks is not None else 1,
                           image_cache_bytes=args.image_cache_mb << 20, max_stream_backlog=args.max_stream_backlog,
                           stalled_stream_seconds=args.stalled_stream_seconds, speculate=args.speculate,
                           speculate_depth=args.speculate_depth, speculate_adaptive=not args.speculate_fixed,
                           draft_model_path=args.draft_model, mask_processes=args.mask_processes)
    connections = ConnectionLimits(max_connections=args.max_connections,
                                   max_streams_per_connection=args.max_streams_per_connection,
                                   idle_seconds=args.idle_connection_seconds)
    code = serve(ServeOptions(worker=worker, addr=args.addr, limits=limits, grace_seconds=args.grace_period,
                              stall_seconds=args.stall_timeout, exit_on_stdin_eof=args.exit_on_stdin_eof,
                              tls=tls, auth_token_file=args.auth_token_file,
                              auth_exempt_health=args.auth_exempt_health,
                              request_log=RequestLog(args.log_requests, args.log_requests_max_chars),
                              connections=connections, preparation_slots=args.max_preparing, load=load))
    if ranks is not None:
        code = ranks.stop(code)
    # Everything is shut down by now. Skip the interpreter's teardown: on CUDA, MLX's static destructors abort
    # ("terminate called without an active exception") when a thread other than main used the device.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _tensor_parallel(args: argparse.Namespace,
                     load: RuntimeFactory | None) -> tuple[Ranks | int | None, RuntimeFactory | None]:
    """(the ranks this process leads, rank 0's runtime factory) under tensor parallelism; (None, load) without;
    (exit code, None) when mlx.launch started this process as another rank, which it then ran as a follower."""
    from mlxd.parallel.group import environment_rank

    if args.tensor_parallel <= 1 and args.tp_leader is None:
        return None, load
    from mlxd.parallel import launch
    from mlxd.parallel.leader import leader_runtime

    follower = launch.FollowerArgs(args.model, args.dtype, args.image_cache_mb << 20, args.log_level)
    if args.tp_leader is not None:
        rank = environment_rank()
        if rank is None:
            raise SystemExit("mlxd: --tp-leader needs the environment of mlx.launch (MLX_RANK, MLX_HOSTFILE)")
        if rank > 0:
            from mlxd.parallel.follower import main as follow
            return follow(launch.follower_argv(follower, args.tp_leader)), None
        ranks = launch.start_launched(args.tp_leader)
    else:
        try:
            ranks = launch.start_local(args.tensor_parallel, follower, args.tp_backend)
        except ValueError as error:
            raise SystemExit(f"mlxd: --tensor-parallel {args.tensor_parallel}: {error}") from None
    return ranks, leader_runtime(ranks.leader, ranks.backend)


def main(argv: list[str] | None = None, load: RuntimeFactory | None = None) -> int:
    """`load` replaces how `serve` builds its model runtime: a test entry point serves a faulty model through it."""
    parser = argparse.ArgumentParser(prog="mlxd", description=__doc__)
    sub = parser.add_subparsers(required=True)
    _add_serve(sub)
    add_client_commands(sub)
    args = parser.parse_args(argv)
    return _serve(args, load) if args.run is _serve else run(args)
