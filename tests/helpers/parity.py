"""The parity fixtures: tiny random models saved as model folders, with transformers' float32 results."""

from __future__ import annotations

import shutil
from pathlib import Path

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"


def copy_model_folder(arch: str, layout: str, dest: Path) -> Path:
    """A copy of the fixture folder whose config.json is in the requested transformers layout ("v4" or "v5")."""
    shutil.copytree(PARITY / arch, dest)
    if layout == "v4":
        shutil.copyfile(PARITY / arch / "config_v4.json", dest / "config.json")
    return dest
