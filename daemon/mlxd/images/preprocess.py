"""Decode untrusted image bytes safely and turn them into the vision tower's normalized pixels.

Matches transformers' Gemma3ImageProcessor (no pan-and-scan): convert to RGB over a white background,
resize with the checkpoint's PIL filter, rescale, normalize, channels first.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mlxd.errors import InvalidRequest, ModelLoadError

# Formats worth a decoder's attack surface; everything else is refused before a plugin parses it.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 << 20           # encoded size of one image
    max_pixels: int = 50_000_000        # decoded width * height (decompression bombs)
    max_images: int = 16                # per request


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
    def from_dict(cls, d: dict[str, Any], default_size: int) -> "ProcessorConfig":
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


def decode_image(data: bytes, index: int, limits: ImageLimits) -> Image.Image:
    """The first frame of `data` as an upright RGB image; InvalidRequest naming `index` and the reason otherwise."""
    if not data:
        raise InvalidRequest(f"image {index} is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InvalidRequest(f"image {index} has {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            # Pillow warns on large images; our own max_pixels check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > limits.max_pixels:
                raise InvalidRequest(f"image {index} is {width}x{height} = {width * height} pixels; the limit is "
                                     f"{limits.max_pixels}")
            image.seek(0)  # animated images: the first frame
            image.load()
    except UnidentifiedImageError:
        raise InvalidRequest(f"image {index} is not a readable image in a supported format ({', '.join(FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise InvalidRequest(f"image {index} is too large to decode: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports truncated and corrupt files with these, depending on the format's plugin.
        raise InvalidRequest(f"image {index} is truncated or corrupt: {exc}") from None
    if width == 0 or height == 0:
        raise InvalidRequest(f"image {index} has no pixels ({width}x{height})")
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency over white, as transformers' convert_rgb does."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255; scale the range down instead.
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        image = Image.fromarray(values.astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def preprocess(image: Image.Image, config: ProcessorConfig) -> np.ndarray:
    """Normalized float32 pixels [3, height, width] of an RGB image."""
    if image.size != (config.width, config.height):
        image = image.resize((config.width, config.height), resample=config.resample)
    pixels = np.asarray(image)
    if config.do_rescale:
        # transformers rescales in float64 and casts after; the same order keeps the result bit-identical.
        pixels = (pixels.astype(np.float64) * config.rescale_factor).astype(np.float32)
    pixels = pixels.astype(np.float32)
    if config.do_normalize:
        mean = np.asarray(config.image_mean, dtype=np.float32)
        std = np.asarray(config.image_std, dtype=np.float32)
        pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
