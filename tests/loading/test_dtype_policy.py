"""plan_dtype: which dtype the weights are held in, as a table of machine facts and requests."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest

from mlxd.errors import ModelLoadError
from mlxd.loading.loader import load_model, plan_dtype

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"

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


# A MoE model on the CPU: MLX's gather_mm multiplies float experts in float32 only, its gather_qmm in any dtype.
# requested, checkpoint dtype, quantized, float32 bytes -> dtype (None: as stored), dequantize; None: refused
EXPERT_CASES = [
    ("auto", "bfloat16", False, 2 * GiB, "float32", False),
    ("auto", "bfloat16", True, 2 * GiB, "float32", True),
    ("auto", "bfloat16", True, 100 * GiB, None, False),   # too big for float32: stays quantized
    ("bfloat16", "float32", True, 2 * GiB, "bfloat16", False),  # the rest cast, the experts kept quantized
    ("keep", "bfloat16", True, 2 * GiB, None, False),
    ("bfloat16", "float32", False, 2 * GiB, None, None),
    ("auto", "bfloat16", False, 100 * GiB, None, None),   # too big for float32, and float experts
    ("keep", "float16", False, 2 * GiB, None, None),
    ("float32", "bfloat16", False, 2 * GiB, "float32", False),
]


@pytest.mark.parametrize("requested,checkpoint,quantized,f32_bytes,dtype,dequantize", EXPERT_CASES)
def test_plan_dtype_for_experts_on_the_cpu(requested, checkpoint, quantized, f32_bytes, dtype, dequantize):
    def plan():
        return plan_dtype(requested, on_gpu=False, checkpoint_dtype=checkpoint, quantized=quantized,
                          float32_bytes=f32_bytes, ram_bytes=16 * GiB, experts=True)
    if dequantize is None:
        with pytest.raises(ModelLoadError, match="float experts in float32 only: use --dtype float32"):
            plan()
        return
    assert (plan().dtype, plan().dequantize) == (dtype, dequantize)


def test_experts_on_a_gpu_follow_the_request():
    plan = plan_dtype("bfloat16", on_gpu=True, checkpoint_dtype="float32", quantized=False, float32_bytes=2 * GiB,
                      ram_bytes=16 * GiB, experts=True)
    assert (plan.dtype, plan.dequantize) == ("bfloat16", False)


@pytest.mark.skipif(mx.default_device() != mx.cpu, reason="the CPU's rule")
def test_a_moe_folder_in_bfloat16_on_the_cpu_is_refused_float_and_kept_quantized():
    with pytest.raises(ModelLoadError, match="float experts in float32 only"):
        load_model(PARITY / "qwen3_moe", dtype="bfloat16")
    loaded = load_model(PARITY / "gpt_oss", dtype="bfloat16")  # MXFP4 experts
    assert loaded.quantized and "keeping the weights quantized" in loaded.load_note
    logits = loaded.model(mx.array([[1, 5, 9]]), cache=loaded.model.make_cache())
    assert logits.dtype == mx.bfloat16 and bool(mx.isfinite(logits).all())
