"""MLX arrays a decode step's masks are written into through NumPy, without the GIL (engine/masks.py upload_masks).

Why: `mx.array(numpy)` copies holding the GIL, and a 16-row mask of a 128k vocabulary (256 KB) took ~0.17 ms of an
H100 host's time so (MLX's CUDA buffers are managed memory, so the copy's pages fault in). The mask thread does
that copy while the worker launches the forward pass, but over gRPC the worker, the mask thread and the service's
event loop share the one GIL, so it still delays the others. NumPy's copy into an array's memory releases the GIL.

How: arrays made once per masks' shape, DEPTH of them used in turn. A step's masks are written only after the step
before's tokens were read (engine/constrained_rows.py tell_then_fill reads, then fills, then uploads), so the
device is done with every mask but the last one queued; DEPTH 3 leaves that one and the one before untouched.
MLX does not donate their memory to a graph's outputs while these references hold them. Where an array's memory
cannot be written through NumPy (a backend whose buffers the host cannot see), `write` returns None and the
caller copies with mx.array as before.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

DEPTH = 3      # arrays per shape, used in turn (see above)
SHAPES = 4     # shapes kept (a batch's size changes as rows join and leave)


@dataclass
class _Ring:
    slots: list[tuple[mx.array, np.ndarray]]   # the arrays and their writable views
    turn: int = 0


class MaskBuffers:
    """MLX arrays written through their NumPy views, DEPTH per shape and dtype; used from one thread."""

    def __init__(self) -> None:
        self._rings: OrderedDict[tuple[tuple[int, ...], str], _Ring] = OrderedDict()
        self._writable = True   # False once an array could not be written through NumPy: never tried again

    def write(self, values: np.ndarray) -> mx.array | None:
        """An MLX array holding `values` (int32 mask words or a float32 bias, any layout), copied without the GIL;
        None where this backend's arrays cannot be written through NumPy."""
        if not self._writable:
            return None
        shape = (tuple(values.shape), values.dtype.str)
        ring = self._rings.get(shape)
        if ring is None:
            made = [_writable_array(*shape) for _ in range(DEPTH)]
            slots = [(array, view) for array, view in made if view is not None]
            if len(slots) < DEPTH:
                self._writable = False
                self._rings.clear()
                return None
            ring = self._rings[shape] = _Ring(slots)
            while len(self._rings) > SHAPES:
                self._rings.popitem(last=False)
        self._rings.move_to_end(shape)
        array, view = ring.slots[ring.turn]
        ring.turn = (ring.turn + 1) % DEPTH
        np.copyto(view, values)  # releases the GIL (a plain copy of a non-object dtype)
        return array


def _writable_array(shape: tuple[int, ...], dtype: str) -> tuple[mx.array, np.ndarray | None]:
    """A fresh array and a writable NumPy view of its memory: None where there is none, or where a value written
    through it is not in the array (NumPy 1's copy=False may copy instead). Host work only: no graph is built here
    (this runs beside the worker's launches)."""
    array = mx.array(np.zeros(shape, dtype=np.dtype(dtype)))
    try:
        view = np.array(array, copy=False)
    except (TypeError, ValueError, RuntimeError):
        return array, None
    if not view.flags.writeable or view.shape != shape or not view.size:
        return array, None
    view.flat[0] = 1
    seen = int(np.array(array).flat[0])  # a copy of the array's own memory
    view.flat[0] = 0
    return array, view if seen == 1 else None
