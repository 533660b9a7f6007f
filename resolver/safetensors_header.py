"""Read a safetensors file's header (names, dtypes, shapes) without touching its tensors."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
MAX_HEADER = 100 * 1024 * 1024


class HeaderError(ValueError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 4)


def read_header(path: Path) -> list[TensorInfo]:
    """Tensors listed in the header; raises HeaderError if the file is not safetensors or is
    shorter than its header says (a truncated download)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise HeaderError(f"{path.name} is {size} bytes: too short to be safetensors")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise HeaderError(f"{path.name} has a header of {n} bytes but the file is {size} bytes: not safetensors, or truncated")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise HeaderError(f"{path.name} has an unreadable header ({exc})") from None
    tensors, end = [], 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            tensors.append(TensorInfo(name, meta["dtype"], tuple(meta["shape"])))
            end = max(end, meta["data_offsets"][1])
        except (KeyError, TypeError, IndexError):
            raise HeaderError(f"{path.name}: malformed header entry for {name!r}") from None
    if 8 + n + end > size:
        raise HeaderError(f"{path.name} is truncated: its header needs {8 + n + end} bytes, the file has {size}")
    return tensors
