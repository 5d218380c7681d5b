"""MLX arrays a decode step's masks are written into through NumPy, without the GIL (engine/masks.py upload_masks).

Why: `mx.array(numpy)` copies holding the GIL, and a 16-row mask of a 128k vocabulary (256 KB) took ~0.17 ms of an
H100 host's time so (MLX's CUDA buffers are managed memory, so the copy's pages fault in). The mask thread does
that copy while the worker launches the forward pass, but over gRPC the worker, the mask thread and the service's
event loop share the one GIL, so it still delays the others. NumPy's copy into an array's memory releases the GIL.

How: arrays made once per masks' row shape and dtype, DEPTH of them used in turn, each with room for the most rows
seen so far (a batch's size changes as rows join and leave: a step's masks fill the first rows, and the backend
selects with those rows of it). A step's masks are written only after the step before's tokens were read
(engine/constrained_rows.py tell_then_fill reads, then fills, then uploads), so the device is done with every mask
but the last one queued; DEPTH 3 leaves that one and the one before untouched. MLX does not donate their memory to
a graph's outputs while these references hold them. On CUDA the arrays' memory may be advised (ADVISE) to stay on
the host, mapped for the device (models/managed_memory.py: a kernel reading a host-written managed buffer otherwise
waits for its pages); an advised array is never given back to MLX (one outgrown is kept), and at most SHAPES row
shapes are served. Where an array's memory cannot be written through NumPy (a backend whose buffers the host
cannot see), `write` returns None and the caller copies with mx.array as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxd.models import managed_memory

DEPTH = 3      # arrays per row shape, used in turn (see above)
SHAPES = 4     # row shapes served (masks' words, a bias's width: one or two a model); others are copied
# On CUDA, the arrays' memory advised to stay on the host, mapped for the device (see above); False: left where MLX's
# managed memory puts it, faulted to the device at each read. Verified on an H100 (session 51): the CUDA test below
# and 60 random 16-row steps selected as mx.array's copies; a 16 x 128k masked step's device time 0.77-0.82 ms
# written unadvised, 0.44-0.45 advised, 0.35 for a mask never written (`bench mask_memory`).
ADVISE = True


@dataclass
class _Ring:
    slots: list[tuple[mx.array, np.ndarray]]   # the arrays and their writable views
    rows: int                                  # the rows each has room for
    advised: bool                              # its memory advised to stay on the host (never given back)
    turn: int = 0


class MaskBuffers:
    """MLX arrays written through their NumPy views, DEPTH per row shape and dtype; used from one thread."""

    def __init__(self) -> None:
        self._rings: dict[tuple[tuple[int, ...], str], _Ring] = {}
        self._outgrown: list[_Ring] = []   # advised rings outgrown: kept, never given back to MLX (see above)
        self._writable = True   # False once an array could not be written through NumPy: never tried again
        self.advised = ADVISE and managed_memory.on_cuda()   # whether new arrays' memory is advised to stay on the host

    def write(self, values: np.ndarray) -> mx.array | None:
        """An MLX array whose first len(values) rows hold `values` (int32 mask words or a float32 bias, any layout;
        rows past them, if any, hold an earlier step's), copied without the GIL; the caller selects with the rows
        it wrote (`rows_of`). None where this backend's arrays cannot be written through NumPy."""
        if not self._writable or not values.ndim:
            return None
        rows, key = values.shape[0], (tuple(values.shape[1:]), values.dtype.str)
        ring = self._rings.get(key)
        if ring is None or ring.rows < rows:
            if ring is None and len(self._rings) >= SHAPES:
                return None
            ring = self._grow(key, max(rows, 2 * ring.rows) if ring is not None else rows, ring)
            if ring is None:
                return None
        array, view = ring.slots[ring.turn]
        ring.turn = (ring.turn + 1) % DEPTH
        np.copyto(view[:rows], values)  # releases the GIL (a plain copy of a non-object dtype)
        return array

    def _grow(self, key: tuple[tuple[int, ...], str], rows: int, old: _Ring | None) -> _Ring | None:
        made = [_writable_array((rows, *key[0]), key[1]) for _ in range(DEPTH)]
        slots = [(array, view) for array, view in made if view is not None]
        if len(slots) < DEPTH:
            self._writable = False
            return None
        if self.advised:
            self.advised = all(managed_memory.keep_on_host(view) for _, view in slots)
        if old is not None and old.advised:
            self._outgrown.append(old)
        ring = self._rings[key] = _Ring(slots, rows, self.advised)
        return ring


def rows_of(array: mx.array, rows: int) -> mx.array:
    """The first `rows` rows of an array MaskBuffers wrote (a view, no copy), for the select's graph."""
    return array if array.shape[0] == rows else array[:rows]


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
