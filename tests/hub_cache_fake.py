"""A fake Hugging Face hub cache built from a local pipeline folder (for the tests)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def add_snapshot(cache: Path, repo: str, source: Path, rev: str = "0123456789abcdef") -> Path:
    """`cache/models--org--name` with `source`'s files as blobs, linked from snapshots/<rev> the
    way huggingface_hub links them (relative links `../../blobs/<sha256>`); returns the snapshot."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    blobs, snapshot = folder / "blobs", folder / "snapshots" / rev
    blobs.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(source).rglob("*")):
        if not path.is_file():
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = blobs / digest
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(rev)
    return snapshot
