"""Text written from the backend catalogue: node tooltips, and the backend tables of the README
and of the nodes' help pages (web/docs/). Nothing here is typed by hand twice.

The tables sit between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` markers;
``python -m pipequant.resolver.known.catalogue_text`` rewrites them, and tests/test_catalogue_text.py
fails when a file drifts from the catalogue.
"""

from __future__ import annotations

import re
import sys
from fractions import Fraction
from pathlib import Path

from . import catalogue
from .backends.base import DIFFUSERS, Backend

ROOT = Path(__file__).resolve().parents[2]


def _names(items) -> str:
    return ", ".join(items)


def _libraries(libraries) -> str:
    return " and ".join(libraries) + " models"


def cpu_text(b: Backend) -> str:
    """Where the backend runs without a GPU."""
    if b.gpu_only_libraries:
        rest = [lib for lib in b.libraries if lib not in b.gpu_only_libraries]
        why = " (diffusers' loader needs a GPU)" if DIFFUSERS in b.gpu_only_libraries else ""
        return f"{_libraries(rest)} only{why}" if rest else "no"
    cuda = [q.name for q in b.quant_types if q.needs_cuda]
    return f"yes, except {' / '.join(cuda)}" if cuda else "yes"


def save_text(b: Backend) -> str:
    """What save_pretrained can write of it."""
    if b.needs_file:
        return "— (the file is the saved form)"
    if not b.savable:
        return "no"
    kept = [q.name for q in b.quant_types if not q.savable]
    where = "yes" if set(b.savable) >= set(b.libraries) else _libraries(b.savable) + " only"
    return f"{where}, except {' / '.join(kept)}" if kept else where


def _quant_type_text(b: Backend) -> str:
    if b.needs_file:
        return _names(q.label for q in b.quant_types)
    out = []
    for q in b.quant_types:
        needs = (["CUDA"] if q.needs_cuda else []) + (["bf16"] if q.compute_dtypes == ("bfloat16",) else [])
        if q.min_compute_capability:
            needs.append("cc ≥ " + ".".join(map(str, q.min_compute_capability)))
        out.append(q.name + (f" ({', '.join(needs)})" if needs else ""))
    return _names(out)


def _memory_text(b: Backend) -> str:
    if b.needs_file:
        return "what the file holds"
    shares = sorted({Fraction(int(q.bits), 16) for q in b.quant_types}, reverse=True)
    text = [f"{s.numerator}/{s.denominator}" for s in shares]
    return text[0] if len(text) == 1 else f"{text[0]} … {text[-1]}"


def backends_table() -> str:
    """The README's table: one row per backend."""
    rows = [
        "| backend | quant types | options | memory vs bf16 | runs on CPU | saved pre-quantized |",
        "|---|---|---|---|---|---|",
    ]
    for b in _all():
        options = _names(f"`{o.name}`" for o in b.options) or "—"
        rows.append(
            f"| `{b.name}` | {_quant_type_text(b)} | {options} | {_memory_text(b)} | {cpu_text(b)} | {save_text(b)} |"
        )
    return "\n".join(rows)


def save_list() -> str:
    """The Save page's list of what can be saved."""
    lines = []
    for b in _all():
        if b.needs_file:
            what = "its components come from a file already"
        elif not b.savable:
            what = "cannot be saved"
        else:
            kept = [q.name for q in b.quant_types if not q.savable]
            what = _libraries(b.savable) + (f", except {' / '.join(kept)}" if kept else "")
        lines.append(f"- {b.label} (`{b.name}`): {what}.")
    return "\n".join(lines)


def backend_tooltip() -> str:
    """The Backend node's `backend` tooltip."""
    parts = []
    for b in _all():
        types = "a pre-quantized file" if b.needs_file else _names(q.name for q in b.quant_types)
        cuda = [q.name for q in b.quant_types if q.needs_cuda]
        if b.gpu_only_libraries:
            types += f" ({' and '.join(b.gpu_only_libraries)} models need a GPU)"
        elif cuda:
            types += f" ({' and '.join(cuda)} need CUDA)"
        parts.append(f"{b.name}: {types}")
    return "Quantization library. " + "; ".join(parts) + "."


def save_summary() -> str:
    """One sentence for the Save node: which backends' copies can be written."""
    parts = []
    for b in _all():
        if not b.savable:
            continue
        kept = [q.name for q in b.quant_types if not q.savable]
        note = (["except " + " / ".join(kept)] if kept else []) + (
            [_libraries(b.savable) + " only"] if not set(b.savable) >= set(b.libraries) else []
        )
        parts.append(b.name + (f" ({'; '.join(note)})" if note else ""))
    return "Works for " + ", ".join(parts[:-1]) + " and " + parts[-1] + "."


def _all() -> list[Backend]:
    return [catalogue.get_backend(n) for n in catalogue.backend_names()]


# -- generated sections of the docs ------------------------------------------------------------
SECTIONS = {  # file -> {section name: text}
    "README.md": {"backends": backends_table},
    "web/docs/PipeQuantBackend.md": {"backends": backends_table},
    "web/docs/PipeQuantSavePipeline.md": {"savable": save_list},
}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- generated:{name} -->\n)(.*?)(<!-- /generated:{name} -->)", re.S)


def render(path: str, text: str) -> str:
    """`text` (the file at `path`) with each generated section rewritten from the catalogue."""
    for name, make in SECTIONS[path].items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise ValueError(f"{path} has no <!-- generated:{name} --> section")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(3), text)
    return text


def main() -> int:
    for path in SECTIONS:
        file = ROOT / path
        old = file.read_text()
        new = render(path, old)
        if new != old:
            file.write_text(new)
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
