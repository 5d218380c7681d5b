"""Read a GGUF file: its metadata and its tensors, memory-mapped.

The header is parsed here rather than with `gguf.GGUFReader`, which builds a numpy view per array element and
takes ~8 s on SmolLM2's 49k-token vocabulary (~30 s on Gemma 3's 262k); this parser takes a fraction of a
second. Type codes, block sizes and magic come from the `gguf` package so the two cannot disagree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf.quants import OLLAMA_MXFP4, OLLAMA_MXFP4_CODE, OTHER_BLOCK_SIZES

_SCALARS: dict[int, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type_name: str  # GGML type name, e.g. "Q4_K"
    shape: tuple[int, ...]  # numpy order (ggml's dims reversed): (rows, columns) for a matrix
    # uint8, the tensor's bytes in order: memory-mapped, or a strided view of them (a part split off a fused
    # tensor, ollama.py), which tensors.py reads a block of rows at a time
    raw: np.ndarray

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


class _Cursor:
    """Sequential little-endian reads over the file's bytes."""

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        # Some converters wrote vocabularies with invalid UTF-8; llama.cpp keeps the bytes, we replace them.
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            etype, n = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALARS:  # numeric arrays in one read: vocabularies have 10^5 entries
                dtype = np.dtype(_SCALARS[etype])
                arr = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos)
                self.pos += n * dtype.itemsize
                return arr.tolist()
            return [self.value(etype) for _ in range(n)]
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        raise ModelLoadError(f"GGUF metadata value of unknown type {vtype}")


def _type_name(code: int) -> str:
    if code == OLLAMA_MXFP4_CODE:
        return OLLAMA_MXFP4
    try:
        return GGMLQuantizationType(code).name
    except ValueError:
        return f"unknown type {code}"


def _tensor_bytes(type_name: str, n_elements: int) -> int | None:
    if type_name in OTHER_BLOCK_SIZES:
        block, block_bytes = OTHER_BLOCK_SIZES[type_name]
        return n_elements // block * block_bytes
    if type_name not in GGMLQuantizationType.__members__:
        return None
    sizes = GGML_QUANT_SIZES.get(GGMLQuantizationType[type_name])
    if sizes is None:
        return None
    block, block_bytes = sizes
    return n_elements // block * block_bytes


def read_gguf(path: Path) -> GGUFFile:
    """Parse the header of `path`; tensor bytes stay memory-mapped until converted."""
    path = Path(path)
    try:
        data = np.memmap(path, mode="r")
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read GGUF file {path}: {e}") from e
    cur = _Cursor(data.data)  # the array's memoryview (numpy types ndarrays as buffers only from Python 3.12)
    try:
        if cur.unpack("<I") != GGUF_MAGIC:
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic)")
        version = cur.unpack("<I")
        if version not in (2, 3):
            # Big-endian files read as a huge version here; version 1 used 32-bit counts.
            raise ModelLoadError(f"{path}: unsupported GGUF version {version} (expected 2 or 3, little-endian)")
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        metadata = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = [cur.unpack("<Q") for _ in range(cur.unpack("<I"))]
            infos.append((name, tuple(reversed(dims)), _type_name(cur.unpack("<I")), cur.unpack("<Q")))
    except struct.error as e:
        raise ModelLoadError(f"{path}: truncated GGUF header ({e})") from e
    alignment = int(metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
    start = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, shape, type_name, offset in infos:
        n_bytes = _tensor_bytes(type_name, int(np.prod(shape)))
        if n_bytes is None:
            raise ModelLoadError(f"tensor {name} in {path} has {type_name}, which this GGUF reader does not know")
        begin = start + offset
        if begin + n_bytes > data.size:
            raise ModelLoadError(f"tensor {name} in {path} runs past the end of the file (truncated download?)")
        tensors.append(GGUFTensor(name, type_name, shape, data[begin : begin + n_bytes]))
    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors)
