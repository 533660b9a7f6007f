"""A safetensors header read again is parsed once (issue 25 item 1: a disk-cache entry's header is
read by the entry check and again by the reader); the answer still follows the file as it is now."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pipequant.resolver.files import safetensors_header
from pipequant.resolver.files.safetensors_header import HeaderError, read_spans


def test_a_header_is_parsed_once_and_a_changed_or_truncated_file_is_seen(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4, 4), "b": torch.ones(8, dtype=torch.bfloat16)}, str(path))
    parses = []
    real = safetensors_header._parse
    monkeypatch.setattr(safetensors_header, "_parse", lambda raw, p: parses.append(p) or real(raw, p))
    safetensors_header._parsed.cache_clear()

    first, again = read_spans(path), read_spans(path)
    assert first == again and len(parses) == 1
    first[0].append("mine")  # callers get their own lists
    assert len(read_spans(path)[0]) == 2

    save_file({"a": torch.zeros(2, 2)}, str(path))  # rewritten in place: new header bytes
    assert [s.info.shape for s in read_spans(path)[0]] == [(2, 2)] and len(parses) == 2

    data = path.read_bytes()
    path.write_bytes(data[:-4])  # same header, data cut short
    with pytest.raises(HeaderError, match="truncated"):
        read_spans(path)
    path.write_bytes(data[:20])  # cut inside the header
    with pytest.raises(HeaderError):
        read_spans(path)
