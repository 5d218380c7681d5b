"""The line protocol between a benchmark and an engine in a process of its own (bench/anchors/*).

The child loads its model, prints one JSON line {"ready": true, ...}, then answers each JSON job on stdin with
one JSON line on stdout; its logs go to stderr. A process per engine keeps each engine's thread pools and memory
off the others', and loads the model once however many rounds the benchmark alternates.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Job = dict[str, Any]


def serve(handle: Callable[[Job], Job], info: Job) -> None:
    """The child's side: announce readiness, then answer jobs until stdin closes."""
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        print(json.dumps(handle(json.loads(line))), flush=True)


class EngineProcess:
    """The benchmark's side: `python -m bench.anchors.<module> ARGS` with `env`, its stderr in `log`; a context
    manager that closes its stdin (the child exits) at the end."""

    def __init__(self, module: str, args: list[str], env: dict[str, str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", f"bench.anchors.{module}", *args], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        self.name = f"{module} {' '.join(args[:2])}"
        self.log = log
        self.info = self._read()
        print(f"{module} ready: {self.info}", file=sys.stderr)

    def ask(self, job: Job) -> Job:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> Job:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited with {self.proc.wait()}; see {self.log}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(60)

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def config_vocab_size(config: dict[str, Any]) -> int:
    """An mlx-lm folder's vocabulary size: top-level, or under `text_config` in the vision-language layout that
    Qwen3.5 and Gemma 4 checkpoints are published in."""
    return int(config.get("vocab_size") or config["text_config"]["vocab_size"])
