"""Image decoding and preprocessing: transformers' pixels, EXIF orientation, every mode to RGB, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mlxd.errors import InvalidRequest
from mlxd.images.decode import ImageLimits, decode_image, to_rgb
from mlxd.images.preprocess import ProcessorConfig, load_processor_config, preprocess
from tests.vlm.gemma3_fixture import GEMMA3, IMAGE_PNG

LIMITS = ImageLimits()


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def test_pixels_equal_transformers(expected):
    config = load_processor_config(GEMMA3, default_size=32)
    pixels = preprocess(decode_image(IMAGE_PNG.read_bytes(), 0, LIMITS), config)
    want = np.array(expected["pixel_values"][0])
    assert pixels.shape == want.shape == (3, 32, 32) and pixels.dtype == np.float32
    assert np.abs(pixels - want).max() < 1e-5


def test_processor_config_defaults_to_the_vision_size(tmp_path):
    config = load_processor_config(tmp_path, default_size=896)
    assert (config.height, config.width) == (896, 896)
    assert config.image_mean == (0.5, 0.5, 0.5)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    decoded = decode_image(encode(image, "PNG", exif=exif), 0, LIMITS)
    assert decoded.size == (2, 4)
    assert decoded.getpixel((1, 0)) == (255, 0, 0)  # the top-left pixel ends up top-right


@pytest.mark.parametrize("mode,value,want", [
    ("L", 128, (128, 128, 128)),
    ("LA", (10, 0), (255, 255, 255)),          # fully transparent: white, as transformers' convert_rgb
    ("RGBA", (0, 0, 255, 255), (0, 0, 255)),
    ("RGBA", (0, 0, 0, 0), (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("I;16", 65535, (255, 255, 255)),            # 16-bit scaled down, not clipped
    ("I;16", 32768, (128, 128, 128)),
    ("1", 1, (255, 255, 255)),
])
def test_modes_convert_to_rgb(mode, value, want):
    rgb = to_rgb(Image.new(mode, (2, 2), value))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == want


def test_palette_png_with_transparency_decodes_to_rgb():
    image = Image.new("P", (3, 3), 1)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    decoded = decode_image(encode(image, "PNG", transparency=0), 0, LIMITS)
    assert decoded.mode == "RGB" and decoded.getpixel((0, 0)) == (200, 10, 10)


def test_sixteen_bit_png_round_trip():
    # Gray images stay one byte a pixel (mode L) until preprocess resizes them.
    image = Image.fromarray(np.full((2, 2), 40000, dtype=np.uint16))
    assert decode_image(encode(image), 0, LIMITS).getpixel((0, 0)) == 156


def test_jpeg_and_webp_decode():
    for fmt in ("JPEG", "WEBP"):
        assert decode_image(encode(Image.new("RGB", (8, 8), (0, 200, 0)), fmt), 0, LIMITS).size == (8, 8)


def test_resize_uses_the_checkpoint_filter():
    image = Image.new("RGB", (64, 48), (255, 0, 0))
    pixels = preprocess(image, ProcessorConfig(height=16, width=16))
    assert pixels.shape == (3, 16, 16)
    assert np.allclose(pixels[0], 1.0) and np.allclose(pixels[1:], -1.0)


def _bad(data: bytes, limits: ImageLimits = LIMITS, index: int = 3) -> str:
    with pytest.raises(InvalidRequest) as error:
        decode_image(data, index, limits)
    assert f"image {index}" in str(error.value)
    return str(error.value)


def test_bad_images_name_their_index_and_reason():
    png = IMAGE_PNG.read_bytes()
    assert "empty" in _bad(b"")
    assert "truncated or corrupt" in _bad(png[: len(png) // 2])
    assert "supported format" in _bad(b"this is not an image at all")
    assert "supported format" in _bad(encode(Image.new("RGB", (4, 4)), "PPM"))
    assert "bytes; the limit is 100" in _bad(png, ImageLimits(max_bytes=100))
    assert "pixels; the limit is 1000" in _bad(png, ImageLimits(max_pixels=1000))


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (8000, 8000)))  # 64 M pixels in a few dozen kilobytes
    assert len(bomb) < 1 << 20
    assert "8000x8000 = 64000000 pixels; the limit is 50000000" in _bad(bomb)
    # Pillow's own guard stops far larger ones while reading the header.
    assert "too large" in _bad(encode(Image.new("1", (20000, 20000))))
