"""Read a GGUF file's tensor table (names, shapes, types) without dequantizing anything.

Every length in a GGUF header is a stranger's number: a 100-byte file can claim a 2^40-item
array, and gguf's reader would allocate for each item. `check_header` walks the header first,
bounding every count and length by the bytes the file really has, before gguf's reader runs.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .safe_files import FileProblem, open_regular

MAX_ITEMS = 8_000_000  # array items in one header (an LLM tokenizer has ~250 000)
MAX_DIMS = 8
MAX_NESTING = 4
# GGUF value types: fixed sizes; 8 = string, 9 = array.
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class GGUFFileError(ValueError):
    def __init__(self, message: str, code: str = "gguf_file_unreadable"):
        self.code = code
        super().__init__(message)


BOUNDS = "gguf_header_bounds"  # a length in the header that the file cannot hold


# Tensor types that diffusers loads as plain tensors, cast to the load dtype (the rest stay packed).
UNQUANTIZED_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class GGUFSummary:
    path: Path
    tensors: int
    params: int
    quantized_bytes: int = 0  # the packed tensors, loaded as stored
    float_params: int = 0  # the F32/F16/BF16 tensors' elements, loaded at the load dtype

    def loaded_bytes(self, dtype_bytes: int) -> int:
        """What the model holds after loading this file (not the file's size: its float tensors,
        F32 on disk, take the load dtype's bytes, and the header takes none)."""
        return self.quantized_bytes + self.float_params * dtype_bytes


class _Cursor:
    def __init__(self, data, name: str, endian: str):
        self.data, self.pos, self.name, self.endian, self.items = data, 0, name, endian, 0

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > len(self.data):
            raise GGUFFileError(
                f"{self.name}: its header claims {what} of {n:,} bytes at byte {self.pos:,}, past the "
                f"end of the {len(self.data):,}-byte file: not a GGUF file, or truncated",
                BOUNDS,
            )
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        return struct.unpack_from(self.endian + fmt, self.data, self.take(size, what))[0]

    def count(self, what: str, each: int) -> int:
        """A count read from the header, bounded by what the remaining bytes could hold."""
        n = self.unpack("Q", what)
        left = len(self.data) - self.pos
        if n * each > left:
            raise GGUFFileError(
                f"{self.name}: its header claims {n:,} {what}, more than the {left:,} bytes left in "
                "the file can hold: not a GGUF file, or truncated",
                BOUNDS,
            )
        return n

    def string(self, what: str) -> None:
        self.take(self.count(f"bytes in {what}", 1), what)

    def value(self, kind: int, depth: int = 0) -> None:
        if kind in _FIXED:
            self.take(_FIXED[kind], "a value")
        elif kind == _STRING:
            self.string("a string value")
        elif kind == _ARRAY and depth < MAX_NESTING:
            item = self.unpack("I", "an array type")
            each = _FIXED.get(item, 8)
            n = self.count("array items", each)
            self.items += n
            if self.items > MAX_ITEMS:
                raise GGUFFileError(
                    f"{self.name}: its header holds more than {MAX_ITEMS:,} array items: not a model "
                    "file PipeQuant can read",
                    BOUNDS,
                )
            if item in _FIXED:
                self.take(n * each, "an array")
            else:
                for _ in range(n):
                    self.value(item, depth + 1)
        else:
            raise GGUFFileError(f"{self.name}: unknown value type {kind} in its header: not a GGUF file")


def check_header(data, name: str) -> None:
    """Walk a GGUF header (metadata and tensor table); raises GGUFFileError at the first length
    that does not fit in the file."""
    if bytes(data[:4]) != b"GGUF":
        raise GGUFFileError(f"{name} is not a GGUF file (it does not start with GGUF)")
    endian = "<" if struct.unpack_from("<I", data, 4)[0] < 65536 else ">"  # gguf-py writes either
    cur = _Cursor(data, name, endian)
    cur.take(4, "the magic")
    version = cur.unpack("I", "the version")
    if version not in (2, 3):
        raise GGUFFileError(f"{name} is GGUF version {version}; versions 2 and 3 are readable")
    n_tensors = cur.unpack("Q", "the tensor count")
    n_kv = cur.unpack("Q", "the metadata count")
    left = len(data) - cur.pos
    if n_kv * 13 > left or n_tensors * 24 > left:
        raise GGUFFileError(
            f"{name}: its header claims {n_kv:,} metadata entries and {n_tensors:,} tensors, more than "
            f"its {len(data):,} bytes can hold: not a GGUF file, or truncated",
            BOUNDS,
        )
    for _ in range(n_kv):
        cur.string("a metadata key")
        cur.value(cur.unpack("I", "a value type"))
    for _ in range(n_tensors):
        cur.string("a tensor name")
        dims = cur.unpack("I", "a dimension count")
        if dims > MAX_DIMS:
            raise GGUFFileError(f"{name}: a tensor with {dims:,} dimensions: not a GGUF file")
        cur.take(8 * dims, "tensor dimensions")
        cur.take(4 + 8, "a tensor type and offset")


def read_gguf(path: Path) -> GGUFSummary:
    """Raises GGUFFileError for a file that is not GGUF or shorter than its tensor table says."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise GGUFFileError(f"{path.name} is {size} bytes: too short to be a GGUF file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                check_header(data, path.name)
    except FileProblem as exc:
        raise GGUFFileError(str(exc)) from None
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/IndexError/OSError depending on how it is broken
        raise GGUFFileError(f"{path.name} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise GGUFFileError(f"{path.name} is truncated: its tensors need {end} bytes, the file has {size}")
    plain = [t for t in reader.tensors if t.tensor_type.name in UNQUANTIZED_TYPES]
    return GGUFSummary(
        path,
        len(reader.tensors),
        sum(int(t.n_elements) for t in reader.tensors),
        quantized_bytes=sum(int(t.n_bytes) for t in reader.tensors if t.tensor_type.name not in UNQUANTIZED_TYPES),
        float_params=sum(int(t.n_elements) for t in plain),
    )
