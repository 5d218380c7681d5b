"""Turn a decoded image (images/decode.py) into the vision tower's normalized pixels.

Matches transformers' Gemma3ImageProcessor (no pan-and-scan): convert to RGB over a white background,
resize with the checkpoint's PIL filter, rescale, normalize, channels first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mlxd.errors import ModelLoadError


@dataclass(frozen=True)
class ProcessorConfig:
    """The fields of preprocessor_config.json that the pixels depend on."""

    height: int
    width: int
    resample: int = Image.Resampling.BILINEAR
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, d: dict[str, Any], default_size: int) -> ProcessorConfig:
        size = d.get("size") or {}
        height = int(size.get("height", size.get("shortest_edge", default_size)))
        width = int(size.get("width", size.get("shortest_edge", default_size)))
        return cls(height=height, width=width, resample=int(d.get("resample", Image.Resampling.BILINEAR)),
                   do_rescale=bool(d.get("do_rescale", True)), rescale_factor=float(d.get("rescale_factor", 1 / 255)),
                   do_normalize=bool(d.get("do_normalize", True)),
                   image_mean=tuple(d.get("image_mean", (0.5, 0.5, 0.5))),
                   image_std=tuple(d.get("image_std", (0.5, 0.5, 0.5))))


def load_processor_config(folder: Path, default_size: int) -> ProcessorConfig:
    """preprocessor_config.json of a model folder; the vision tower's size with Gemma's defaults without it."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return ProcessorConfig(height=default_size, width=default_size)
    try:
        return ProcessorConfig.from_dict(json.loads(path.read_text()), default_size)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}") from exc


def content_digest(data: bytes) -> str:
    """Identity of an encoded image, for the worker's cache of encoded images."""
    return hashlib.sha256(data).hexdigest()


def preprocess(image: Image.Image, config: ProcessorConfig) -> np.ndarray:
    """Normalized float32 pixels [3, height, width] of an RGB or L image. A gray image is resized first and
    converted after: the filters work per channel, so the pixels equal those of its RGB conversion resized."""
    if image.size != (config.width, config.height):
        image = image.resize((config.width, config.height), resample=config.resample)
    pixels = np.asarray(image.convert("RGB"))
    if config.do_rescale:
        # transformers rescales in float64 and casts after; the same order keeps the result bit-identical.
        pixels = (pixels.astype(np.float64) * config.rescale_factor).astype(np.float32)
    pixels = pixels.astype(np.float32)
    if config.do_normalize:
        mean = np.asarray(config.image_mean, dtype=np.float32)
        std = np.asarray(config.image_std, dtype=np.float32)
        pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
