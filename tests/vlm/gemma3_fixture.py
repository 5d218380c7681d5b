"""The tiny random Gemma 3 VLM of tests/fixtures/parity/gemma3: paths, special token ids, folder copies.

A module of its own (not conftest.py) so test files can import it: several conftest.py files share one name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

GEMMA3 = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "gemma3"
IMAGE_PNG = GEMMA3 / "image.png"
BOI, IMAGE, EOI = 317, 319, 318


def model_folder(layout: str, dest: Path) -> Path:
    """A copy of the fixture whose config.json is in the transformers 5 ("v5") or 4 ("v4") layout."""
    shutil.copytree(GEMMA3, dest)
    if layout == "v4":
        shutil.copyfile(GEMMA3 / "config_v4.json", dest / "config.json")
    return dest
