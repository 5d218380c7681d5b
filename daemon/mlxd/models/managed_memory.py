"""Where MLX's CUDA backend should keep a buffer the host writes every step and the device reads once: on the host,
mapped for the device (models/mask_buffers.py's arrays, a step's token masks).

Why: MLX's CUDA backend keeps arrays made from host data in managed memory (cudaMallocManaged) without a hint of
where they live, so such a buffer moves twice a step by page faults: to the host when it is written, to the device
when a kernel reads it, the kernel stalled meanwhile. On an H100 (session 50, 300 synchronous steps of a matmul and
the masked select of 16 x 128k logits), masks written so took 0.75-0.90 ms a step, masks made on the device and
never written 0.32-0.39 ms, and masks written into memory advised as here 0.41-0.46 ms.

How: CUDA's driver API through ctypes (libcuda.so.1 is wherever MLX's CUDA backend runs; MLX's Python package does
not expose the runtime): the range's preferred location set to the host, and the device set as one accessing it,
so the device reads it over the bus, without faults. An advised range must never go back to MLX's cache of freed
buffers (one reused for a kernel's output would be written over the bus too): the caller keeps its arrays for the
process's life. Anything missing or refused (no CUDA, an older driver): False, and the memory stays as it was.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import mlx.core as mx
import numpy as np

log = logging.getLogger(__name__)

# CUmem_advise and CUmemLocationType (cuda.h)
_SET_PREFERRED_LOCATION = 3
_SET_ACCESSED_BY = 5
_LOCATION_DEVICE = 1
_LOCATION_HOST = 2
DEVICE = 0  # the device that reads: each tensor-parallel rank sees only its own GPU, as device 0 (parallel/group.py)


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


def on_cuda() -> bool:
    """Whether MLX computes on a CUDA device."""
    return mx.default_device().type == mx.DeviceType.gpu and mx.cuda.is_available()


def keep_on_host(view: np.ndarray) -> bool:
    """Advise the memory under `view` (a buffer of MLX's, written through NumPy) to stay on the host, mapped for
    the device. True where CUDA took the advice."""
    driver = _driver()
    if driver is None or not view.nbytes:
        return False
    pointer = view.__array_interface__["data"][0]
    try:
        # The driver API acts on the calling thread's current context: the primary one, MLX's (the runtime's).
        if driver.cuCtxSetCurrent(_primary_context(driver)) != 0:
            return False
        return (driver.cuMemAdvise_v2(pointer, view.nbytes, _SET_PREFERRED_LOCATION, _Location(_LOCATION_HOST, 0)) == 0
                and driver.cuMemAdvise_v2(pointer, view.nbytes, _SET_ACCESSED_BY,
                                          _Location(_LOCATION_DEVICE, DEVICE)) == 0)
    except (OSError, ctypes.ArgumentError) as error:
        log.debug("CUDA's memory advice failed: %s", error)
        return False


@functools.cache
def _driver() -> ctypes.CDLL | None:
    if not on_cuda():
        return None
    try:
        driver = ctypes.CDLL("libcuda.so.1")
        driver.cuMemAdvise_v2.argtypes = [ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int, _Location]
        if driver.cuInit(0) != 0:
            return None
    except (OSError, AttributeError) as error:  # no driver library, or one older than CUDA 12.2's cuMemAdvise_v2
        log.info("masks stay in MLX's managed memory without advice: %s", error)
        return None
    return driver


@functools.cache
def _primary_context(driver: ctypes.CDLL) -> ctypes.c_void_p:
    context = ctypes.c_void_p()
    driver.cuDevicePrimaryCtxRetain(ctypes.byref(context), DEVICE)  # held for the process's life
    return context
