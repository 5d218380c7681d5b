"""The parity fixtures: tiny random models saved as model folders, with transformers' float32 results."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the functions import them: a module that only wants PARITY does not load MLX
    from mlxd.constraints import GrammarCompiler
    from mlxd.engine.runtime import ModelRuntime

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"


def copy_model_folder(arch: str, layout: str, dest: Path) -> Path:
    """A copy of the fixture folder whose config.json is in the requested transformers layout ("v4" or "v5")."""
    shutil.copytree(PARITY / arch, dest)
    if layout == "v4":
        shutil.copyfile(PARITY / arch / "config_v4.json", dest / "config.json")
    return dest


def fixture_runtime(arch: str) -> ModelRuntime:
    """The fixture's model and tokenizer in float32, as the engine serves them."""
    from mlxd.engine.runtime import ModelRuntime
    from mlxd.loading.model_source import load_model_and_tokenizer
    loaded, tokenizer = load_model_and_tokenizer(PARITY / arch, dtype="float32")
    return ModelRuntime.from_loaded(loaded, tokenizer)


def fixture_grammars(arch: str, runtime: ModelRuntime, mask_processes: int = 0) -> GrammarCompiler:
    """A grammar compiler for the fixture's tokenizer (llguidance), its masks in `mask_processes` processes."""
    from mlxd.constraints import GrammarCompiler
    tokenizer_json = (PARITY / arch / "tokenizer.json").read_text(encoding="utf-8")
    return GrammarCompiler(tokenizer_json, runtime.vocab_size, sorted(runtime.eos_ids), mask_processes=mask_processes)
