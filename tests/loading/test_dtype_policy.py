"""plan_dtype: which dtype the weights are held in, as a table of machine facts and requests."""

from __future__ import annotations

import pytest

from mlxd.errors import ModelLoadError
from mlxd.loading.loader import plan_dtype

GiB = 2**30

# requested, on_gpu, checkpoint dtype, quantized, float32 bytes, RAM bytes -> dtype (None: as stored), dequantize
CASES = [
    ("auto", True, "bfloat16", False, 16 * GiB, 8 * GiB, None, False),
    ("auto", True, "bfloat16", True, 16 * GiB, 8 * GiB, None, False),
    ("auto", False, "bfloat16", False, 2 * GiB, 16 * GiB, "float32", False),
    ("auto", False, "float16", True, 2 * GiB, 16 * GiB, "float32", True),
    ("auto", False, "float32", False, 2 * GiB, 16 * GiB, None, False),
    ("auto", False, "bfloat16", False, 10 * GiB, 16 * GiB, None, False),  # 62.5% of RAM: too big
    ("auto", False, "bfloat16", True, 9 * GiB, 16 * GiB, "float32", True),  # 56%: fits
    ("auto", False, "bfloat16", False, 2 * GiB, None, "float32", False),  # RAM unknown: assume it fits
    ("keep", False, "bfloat16", True, 2 * GiB, 16 * GiB, None, False),
    ("keep", True, "float32", False, 2 * GiB, 16 * GiB, None, False),
    ("float16", False, "bfloat16", True, 2 * GiB, 16 * GiB, "float16", True),
    ("bfloat16", True, "float32", False, 2 * GiB, 16 * GiB, "bfloat16", False),
    ("float32", False, "bfloat16", False, 100 * GiB, 16 * GiB, "float32", False),  # forced even if too big
]


@pytest.mark.parametrize("requested,on_gpu,checkpoint,quantized,f32_bytes,ram,dtype,dequantize", CASES)
def test_plan_dtype(requested, on_gpu, checkpoint, quantized, f32_bytes, ram, dtype, dequantize):
    plan = plan_dtype(
        requested, on_gpu=on_gpu, checkpoint_dtype=checkpoint, quantized=quantized,
        float32_bytes=f32_bytes, ram_bytes=ram,
    )
    assert (plan.dtype, plan.dequantize) == (dtype, dequantize)
    assert plan.note and "\n" not in plan.note


def test_plan_note_says_why_it_kept_the_checkpoint_dtype():
    plan = plan_dtype("auto", on_gpu=False, checkpoint_dtype="bfloat16", quantized=False,
                      float32_bytes=40 * GiB, ram_bytes=32 * GiB)
    assert "60%" in plan.note and "40.0 GiB" in plan.note


def test_unknown_dtype_is_named():
    with pytest.raises(ModelLoadError, match="'int8'"):
        plan_dtype("int8", on_gpu=False, checkpoint_dtype="float32", quantized=False, float32_bytes=0, ram_bytes=1)
