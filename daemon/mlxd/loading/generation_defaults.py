"""Sampling defaults a checkpoint ships in generation_config.json (used when a request leaves a field unset)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def sampling_defaults(folder: Path) -> dict[str, Any]:
    path = folder / "generation_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    defaults = {key: config[key] for key in _KEYS if isinstance(config.get(key), (int, float))}
    if config.get("do_sample") is False:  # the checkpoint asks for greedy decoding
        defaults["temperature"] = 0.0
    for key in ("temperature", "top_p", "min_p", "repetition_penalty"):
        if key in defaults:
            defaults[key] = float(defaults[key])
    if "top_k" in defaults:
        defaults["top_k"] = int(defaults["top_k"])
    return defaults
