"""Read a GGUF file's tensor table (names, shapes, types) without dequantizing anything."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class GGUFFileError(ValueError):
    pass


@dataclass(frozen=True)
class GGUFSummary:
    path: Path
    tensors: int
    params: int
    qtypes: tuple[str, ...]
    architecture: str | None


def read_gguf(path: Path) -> GGUFSummary:
    """Raises GGUFFileError for a file that is not GGUF or shorter than its tensor table says."""
    import gguf

    path = Path(path)
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/IndexError/OSError depending on how it is broken
        raise GGUFFileError(f"{path.name} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise GGUFFileError(f"{path.name} is truncated: its tensors need {end} bytes, the file has {size}")
    arch_field = reader.fields.get("general.architecture")
    arch = None
    if arch_field is not None:
        try:
            arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
        except Exception:
            arch = None
    return GGUFSummary(path, len(reader.tensors), sum(int(t.n_elements) for t in reader.tensors),
                       tuple(sorted({t.tensor_type.name for t in reader.tensors})), arch)
