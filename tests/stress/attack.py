"""The attacks of tests/availability at full size, with the figures they leave: health latency while each runs, the
daemon's resident memory, the longest pause of a running stream, what leaked (issue 15).

    .venv/bin/python -m tests.stress.attack [--model tests/fixtures/parity/llama] [--vlm tests/fixtures/parity/gemma3]
        [--only NAME ...] [--serve-arg=...]

Each attack gets a daemon of its own. A failed attack prints FAIL and the run exits 1.
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from mlxd_client import Client, MlxdClientError, pb
from tests.availability.attacks import (
    concurrent_calls,
    header_only_streams,
    health_latencies,
    heavy_stop_strings,
    idle_connections,
    quick_cancels,
    summary_ms,
    undeliverable_streams,
    watched_stream,
)
from tests.helpers.daemon_process import FIXTURES, Daemon, resident_bytes, start_daemon

TOKEN = "s3cret-token-0123456789abcdef"
MB = 1 << 20


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.failures: list[str] = []

    def daemon(self, *flags: str, model: Path | None = None, **kwargs) -> Daemon:
        return start_daemon(model or self.args.model, *flags, *self.args.serve_arg, **kwargs)


def peak_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def header_only(run: Run) -> None:
    folder = Path(tempfile.mkdtemp(prefix="mlxd-attack-"))
    token = folder / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    for label, flags, metadata_token in (("no token configured", (), None),
                                         ("token required, none sent", ("--auth-token-file", str(token)), TOKEN)):
        d = run.daemon(*flags)
        try:
            with header_only_streams(d.addr, run.args.streams):
                latencies = health_latencies(d.addr, run.args.checks, token=metadata_token)
                with Client(d.addr, token=metadata_token) as client:
                    done = client.complete(tokens=[5, 6], max_tokens=8, ignore_eos=True, timeout=60)
            print(f"  {run.args.streams} header-only streams ({label}): health {summary_ms(latencies)}; "
                  f"a generation meanwhile: {done.final.usage.completion_tokens} tokens")
        finally:
            d.stop()


def undeliverable(run: Run) -> None:
    d = run.daemon("--stalled-stream-seconds", str(run.args.stalled))
    try:
        for wave in range(2):
            with undeliverable_streams(d.addr, run.args.waves, max_tokens=64, prefix=f"wave{wave}"):
                latencies = health_latencies(d.addr, run.args.checks)
                started = time.monotonic()
                with Client(d.addr) as client:
                    while True:
                        try:
                            client.complete(tokens=[5, 6], max_tokens=8, ignore_eos=True, timeout=60)
                            break
                        except MlxdClientError as error:
                            if error.code.name != "RESOURCE_EXHAUSTED":
                                raise
                            time.sleep(0.1)
            print(f"  wave {wave + 1}: {run.args.waves} streams with a zero window: health {summary_ms(latencies)}; "
                  f"a newcomer served after {time.monotonic() - started:.1f} s")
    finally:
        d.stop()


def unread_memory(run: Run) -> None:
    d = run.daemon("--stalled-stream-seconds", str(run.args.stalled), "--max-queue", str(run.args.waves))
    try:
        health_latencies(d.addr, 5)
        before = resident_bytes(d.proc.pid)
        with undeliverable_streams(d.addr, run.args.waves, max_tokens=0, prefix="unread"):
            deadline = time.monotonic() + 120
            with Client(d.addr) as client:
                while any(client.cancel(f"unread-{i}") for i in range(run.args.waves)):
                    if time.monotonic() > deadline:
                        raise AssertionError("streams nobody reads are still held after 120 s")
                    time.sleep(0.5)
            during = resident_bytes(d.proc.pid)
        log = d.stderr()
        ended = log.count("so it is cancelled"), log.count("for its client; the call is ended")
        print(f"  {run.args.waves} streams never read, to the context length: resident {before / MB:.0f} -> "
              f"{during / MB:.0f} MB (peak {peak_bytes(d.proc.pid) / MB:.0f}); ended by the sink limit "
              f"{ended[0]}, by the stalled-write timer {ended[1]}")
    finally:
        d.stop()


def big_prompt(run: Run) -> None:
    d = run.daemon()
    try:
        text = "hello world " * (run.args.prompt_mb * MB // 12)
        with Client(d.addr) as client:
            started = time.monotonic()
            try:
                client.complete(text, max_tokens=1, timeout=300)
            except MlxdClientError as error:
                print(f"  a {len(text) / MB:.0f} MB prompt: {error.code.name} after "
                      f"{time.monotonic() - started:.2f} s ({error.details})")
        print(f"  health afterwards {summary_ms(health_latencies(d.addr, run.args.checks))}")
    finally:
        d.stop()


def heavy_preparation(run: Run) -> None:
    stops = heavy_stop_strings()
    for slots in run.args.preparing:
        d = run.daemon("--max-preparing", str(slots), "--max-queue", "64")
        try:
            with watched_stream(d.addr) as stream:
                time.sleep(1.0)
                quiet = stream.longest()
                latencies: list[float] = []
                checker = threading.Thread(target=functools.partial(_extend, latencies, d.addr, run.args.checks))
                started = time.monotonic()
                stream.arrivals.clear()
                checker.start()
                results = concurrent_calls(d.addr, run.args.heavy, lambda client, i: client.complete(
                    tokens=[5, 6], max_tokens=1, stop=stops, timeout=300))
                elapsed = time.monotonic() - started
                checker.join()
            refused = sum(isinstance(r, MlxdClientError) for r in results)
            print(f"  --max-preparing {slots}: {run.args.heavy} requests with 256 x 1,024-character stops took "
                  f"{elapsed:.1f} s ({refused} refused); longest pause of a running stream "
                  f"{stream.longest() * 1e3:.0f} ms (before: {quiet * 1e3:.0f} ms); health {summary_ms(latencies)}")
        finally:
            d.stop()


def _extend(latencies: list[float], addr: str, checks: int) -> None:
    latencies.extend(health_latencies(addr, checks))


def cancels(run: Run) -> None:
    d = run.daemon()
    try:
        with Client(d.addr) as client:
            leaked = quick_cancels(client, run.args.cancels)
        print(f"  {run.args.cancels} calls cancelled 0-4 ms after sending: {len(leaked)} leaked")
        if leaked:
            run.failures.append(f"cancels: {len(leaked)} leaked")
    finally:
        d.stop()


def idle(run: Run) -> None:
    d = run.daemon(open_files=1024)
    try:
        with idle_connections(d.addr, run.args.idle):
            latencies = health_latencies(d.addr, run.args.checks)
        print(f"  {run.args.idle} idle connections, daemon started with a soft limit of 1,024 open files: "
              f"health {summary_ms(latencies)}")
    finally:
        d.stop()


def images(run: Run) -> None:
    from PIL import Image
    d = run.daemon(model=run.args.vlm)
    try:
        pictures = {}
        for mode in ("I;16", "1"):
            out = io.BytesIO()
            Image.new(mode, (7000, 7000)).save(out, "PNG")
            pictures[mode] = out.getvalue()
        base = resident_bytes(d.proc.pid)
        for mode, data in pictures.items():
            request = pb.MultimodalGenerateRequest(prompt=pb.MultimodalPrompt(parts=[
                pb.ContentPart(image=pb.Image(data=data))]), options=pb.GenerationOptions(max_tokens=1))
            results = concurrent_calls(d.addr, 4, functools.partial(_multimodal, request))
            errors = [r for r in results if isinstance(r, Exception)]
            print(f"  4 at once of a {len(data) / 1024:.0f} KB {mode} PNG of 7000x7000: peak resident "
                  f"{peak_bytes(d.proc.pid) / MB:.0f} MB (idle {base / MB:.0f} MB); errors {errors[:1]}")
    finally:
        d.stop()


def _multimodal(request: pb.MultimodalGenerateRequest, client: Client, i: int) -> list:
    return list(client.stub.MultimodalGenerate(request, timeout=300))


def health_under_load(run: Run) -> None:
    d = run.daemon("--max-queue", "32")
    try:
        stop = threading.Event()

        def busy() -> None:
            with Client(d.addr) as client:
                while not stop.is_set():
                    client.complete(tokens=[5] * 64, max_tokens=256, ignore_eos=True, timeout=120)

        workers = [threading.Thread(target=busy) for _ in range(8)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        latencies = health_latencies(d.addr, run.args.checks * 10)
        stop.set()
        for w in workers:
            w.join()
        print(f"  health Check with 8 streams keeping the worker busy: {summary_ms(latencies)}")
    finally:
        d.stop()


ATTACKS: dict[str, Callable[[Run], None]] = {
    "header_only": header_only, "undeliverable": undeliverable, "unread_memory": unread_memory,
    "big_prompt": big_prompt, "heavy_preparation": heavy_preparation, "cancels": cancels,
    "idle": idle, "images": images, "health_under_load": health_under_load,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=FIXTURES / "parity" / "llama")
    parser.add_argument("--vlm", type=Path, default=FIXTURES / "parity" / "gemma3")
    parser.add_argument("--only", nargs="*", choices=sorted(ATTACKS), default=sorted(ATTACKS))
    parser.add_argument("--streams", type=int, default=120, help="header-only streams")
    parser.add_argument("--waves", type=int, default=80, help="undeliverable streams per wave")
    parser.add_argument("--stalled", type=float, default=5.0, help="--stalled-stream-seconds of those daemons")
    parser.add_argument("--prompt-mb", type=int, default=10)
    parser.add_argument("--heavy", type=int, default=16, help="concurrent requests with the largest stop strings")
    parser.add_argument("--preparing", type=int, nargs="*", default=[1, 2, 4], help="--max-preparing values")
    parser.add_argument("--cancels", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=1100)
    parser.add_argument("--checks", type=int, default=200, help="health Checks per measurement")
    parser.add_argument("--serve-arg", action="append", default=[], help="one more `mlxd serve` argument")
    args = parser.parse_args()
    run = Run(args)
    for name in args.only:
        print(f"{name}:", flush=True)
        try:
            ATTACKS[name](run)
        except Exception as error:  # report and go on to the next attack
            traceback.print_exc()
            run.failures.append(f"{name}: {type(error).__name__}: {error}")
    for failure in run.failures:
        print("FAIL", failure)
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
