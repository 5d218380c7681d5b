"""Issue 15 item 7: image decoding has a memory and CPU budget. Sizes, bit depths and JPEG scans are checked before
decoding; gray images stay one byte a pixel; conversion goes by stripes with the same pixels; a cancelled request
stops decoding."""

import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import mlxd.images.decode as decode
from mlxd.errors import Cancelled, InvalidRequest
from mlxd.images.decode import ImageLimits, decode_bytes, decode_image
from mlxd.images.preprocess import ProcessorConfig, preprocess
from tests.helpers.daemon_process import daemon_env


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _peak_mb(code: str) -> int:
    """The growth of a fresh interpreter's peak resident set while it runs `code` (data, decode_image in scope)."""
    script = textwrap.dedent(f"""
        import io
        from PIL import Image
        from mlxd.images.decode import ImageLimits, decode_image
        from mlxd.images.preprocess import ProcessorConfig, preprocess
        def hwm():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024
        {code.strip()}
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=daemon_env(),
                         timeout=120, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("mode", ["I;16", "1"])
def test_tiny_files_of_huge_images_decode_within_a_small_budget(mode):
    # 7000x7000 in a few kilobytes: through RGBA the 16-bit one peaked at 1.3 GB, the 1-bit one at 843 MB.
    grew = _peak_mb(f"""
        out = io.BytesIO(); Image.new({mode!r}, (7000, 7000)).save(out, "PNG"); data = out.getvalue()
        base = hwm()
        preprocess(decode_image(data, 0, ImageLimits(), target=(896, 896)), ProcessorConfig(896, 896))
        print(hwm() - base)
    """)
    assert grew < 300, f"{mode}: peak +{grew} MB"


def test_the_memory_a_decode_needs_is_refused_before_decoding():
    data = _encode(Image.new("RGBA", (3000, 3000)))
    with pytest.raises(InvalidRequest) as info:
        decode_image(data, 2, ImageLimits(max_decode_bytes=64 << 20))
    assert "image 2 (3000x3000, mode RGBA) needs about 102 MB to decode; the limit is 64 MB" in str(info.value)
    gray16 = Image.open(io.BytesIO(_encode(Image.new("I;16", (1000, 1000)))))
    assert decode_bytes(gray16) == 1000 * 1000 * (2 + 1 + 1)   # 16-bit stored, 8-bit gray out, a rotated copy


def test_a_large_jpeg_decodes_at_a_reduced_scale_within_the_budget():
    data = _encode(Image.new("RGB", (4000, 3000), (200, 10, 10)), "JPEG")
    image = decode_image(data, 0, ImageLimits(max_decode_bytes=32 << 20), target=(896, 896))
    assert image.size == (2000, 1500)   # 1/2: 1/4 would make its height 750, below the target
    assert image.getpixel((10, 10))[0] > 150


def test_jpeg_scans_are_counted_before_decoding():
    progressive = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG", progressive=True)
    assert 2 < progressive.count(b"\xff\xda") < 20
    decode_image(progressive, 0, ImageLimits())
    with pytest.raises(InvalidRequest, match="image 0 is a JPEG of .* scans; the limit is 5"):
        decode_image(progressive, 0, ImageLimits(max_jpeg_scans=5))


def test_a_cancelled_request_stops_decoding():
    data = _encode(Image.new("L", (64, 64)))
    with pytest.raises(Cancelled):
        decode_image(data, 0, ImageLimits(), cancelled=lambda: True)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "1", "CMYK", "F"])
def test_stripes_give_the_pixels_of_the_whole_image(monkeypatch, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (90, 70), dtype=np.uint16))
    elif mode == "F":
        image = Image.fromarray(rng.uniform(-5, 300, (90, 70)).astype(np.float32), "F")
    else:
        image = Image.fromarray(rng.integers(0, 256, (90, 70, 4), dtype=np.uint8), "RGBA").convert(mode)
    data = _encode(image, "TIFF")
    config = ProcessorConfig(16, 16)
    whole = preprocess(decode_image(data, 0, ImageLimits()), config)
    monkeypatch.setattr(decode, "_STRIPE_BYTES", 70 * 16 * 7)   # 7 rows a stripe
    assert np.array_equal(preprocess(decode_image(data, 0, ImageLimits()), config), whole)
