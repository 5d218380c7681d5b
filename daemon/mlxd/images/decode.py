"""Decode untrusted image bytes within a memory and CPU budget.

Before any pixel is decoded: the encoded size, the pixel count, JPEG's number of scans (each one a pass over the
whole image: 8,000 scans cost ~10 s of CPU), and the memory decoding will take, from the size, the mode and its bit
depth. Conversion then goes stripe by stripe into an 8-bit image, gray images stay one byte a pixel until they are
resized (a 6 KB 1-bit PNG of 7000x7000 took 843 MB through RGBA, a 97 KB 16-bit one 1.3 GB), and a
cancellation is honoured between reads of the encoded bytes and between stripes.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from mlxd.errors import Cancelled, InvalidRequest

# Formats worth a decoder's attack surface; everything else is refused before a plugin parses it.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_GRAY_MODES = ("1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")
_STRIPE_BYTES = 8 << 20
_MB = 1 << 20
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 << 20           # encoded size of one image
    max_pixels: int = 50_000_000        # decoded width * height (decompression bombs)
    max_images: int = 16                # per request
    max_decode_bytes: int = 512 << 20   # memory one image may take while it is decoded and converted
    max_jpeg_scans: int = 100           # progressive JPEGs have about 10


def never() -> bool:
    return False


class _CancellableBytes(io.BytesIO):
    """Pillow reads the encoded bytes in blocks while it decodes: a cancelled request stops at the next block."""

    def __init__(self, data: bytes, cancelled: Callable[[], bool]) -> None:
        super().__init__(data)
        self._cancelled = cancelled

    def read(self, size: int | None = -1) -> bytes:
        if self._cancelled():
            raise Cancelled("the request was cancelled while its image was decoded")
        return super().read(size)


def decode_image(data: bytes, index: int, limits: ImageLimits, *, target: tuple[int, int] | None = None,
                 cancelled: Callable[[], bool] = never) -> Image.Image:
    """The first frame of `data`, upright, in mode RGB, or L for gray images (the same pixels once converted to
    RGB, in a quarter of the memory). target (width, height): the size it will be resized to; a JPEG too large
    to decode whole within the budget is decoded at a reduced scale no smaller than that. InvalidRequest naming
    `index` and the reason when the image is refused."""
    if not data:
        raise InvalidRequest(f"image {index} is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InvalidRequest(f"image {index} has {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            # Pillow warns on large images; our own max_pixels check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(_CancellableBytes(data, cancelled), formats=FORMATS)
            _check_budget(image, data, index, limits, target)
            image.seek(0)  # animated images: the first frame
            image.load()
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except UnidentifiedImageError:
        raise InvalidRequest(f"image {index} is not a readable image in a supported format "
                             f"({', '.join(FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise InvalidRequest(f"image {index} is too large to decode: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports truncated and corrupt files with these, depending on the format's plugin.
        raise InvalidRequest(f"image {index} is truncated or corrupt: {exc}") from None
    converted = _convert(image, cancelled)
    del image
    return converted.transpose(_ORIENTATION[orientation]) if orientation in _ORIENTATION else converted


def _check_budget(image: Image.Image, data: bytes, index: int, limits: ImageLimits,
                  target: tuple[int, int] | None) -> None:
    width, height = image.size
    if width == 0 or height == 0:
        raise InvalidRequest(f"image {index} has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise InvalidRequest(f"image {index} is {width}x{height} = {width * height} pixels; the limit is "
                             f"{limits.max_pixels}")
    if image.format == "JPEG":
        # Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so this counts the
        # start-of-scan markers (and any in an embedded thumbnail: an upper bound).
        scans = data.count(b"\xff\xda")
        if scans > limits.max_jpeg_scans:
            raise InvalidRequest(f"image {index} is a JPEG of {scans} scans; the limit is {limits.max_jpeg_scans}")
        if decode_bytes(image) > limits.max_decode_bytes and target is not None:
            image.draft(None, target)   # DCT scaling: 1/2, 1/4 or 1/8 of the size, never below target
    need = decode_bytes(image)
    if need > limits.max_decode_bytes:
        raise InvalidRequest(f"image {index} ({image.size[0]}x{image.size[1]}, mode {image.mode}) needs about "
                             f"{need // _MB} MB to decode; the limit is {limits.max_decode_bytes // _MB} MB")


def decode_bytes(image: Image.Image) -> int:
    """Memory that decoding and converting `image` takes at most: the decoded frame as Pillow stores it, the
    8-bit image it converts to, and a copy of that for an EXIF rotation (known only once it is decoded)."""
    stored = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    out = 1 if _gray(image) else 4
    converted = 0 if image.mode in ("RGB", "L") else out
    return image.size[0] * image.size[1] * (stored + converted + out)


def _gray(image: Image.Image) -> bool:
    return image.mode in _GRAY_MODES and "transparency" not in image.info


def _convert(image: Image.Image, cancelled: Callable[[], bool]) -> Image.Image:
    """L or RGB, converted one stripe of rows at a time: the conversions are per pixel, so stripes give the
    same pixels as the whole image, without its temporaries."""
    target = "L" if _gray(image) else "RGB"
    if image.mode == target:
        return image
    convert = _to_gray if target == "L" else to_rgb
    width, height = image.size
    rows = max(1, _STRIPE_BYTES // (width * 16))
    out = Image.new(target, image.size)
    for top in range(0, height, rows):
        if cancelled():
            raise Cancelled("the request was cancelled while its image was converted")
        out.paste(convert(image.crop((0, top, width, min(top + rows, height)))), (0, top))
    return out


def _to_gray(image: Image.Image) -> Image.Image:
    if image.mode in ("1", "L"):
        return image.convert("L")
    values = np.asarray(image)
    if image.mode == "F":
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    # 16-bit (and 32-bit integer) values scale down to 8 bits; Pillow's own conversion clips them at 255.
    return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency over white, as transformers' convert_rgb does."""
    if image.mode == "RGB":
        return image
    if image.mode in _GRAY_MODES[2:]:
        image = _to_gray(image)
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
