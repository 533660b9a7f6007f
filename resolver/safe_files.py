"""Reading files a stranger wrote: regular files only, and every read bounded.

A FIFO opened for reading blocks until a writer comes; `/dev/zero` never ends; a JSON file nested
100 000 deep overflows the parser; an 8-byte length field can claim an exabyte. Every config,
index and header the pack reads goes through here, so each of those is refused in one place, with
a code naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

MAX_JSON_BYTES = 16 * 1024 * 1024  # model_index.json / config.json are a few KB; tokenizer configs < 1 MB
MAX_JSON_DEPTH = 64  # real configs nest 3-4 deep


class FileProblem(ValueError):
    """A file that cannot be read safely: `code` says why, the message names the file."""

    def __init__(self, code: str, path: Path | str, message: str, suggestion: str = ""):
        self.code, self.path, self.suggestion = code, Path(path), suggestion
        super().__init__(message)


def os_problem(exc: OSError, path: Path | str) -> FileProblem:
    name = Path(path).name[:80]
    if exc.errno == errno.ELOOP:
        return FileProblem(
            "symlink_loop",
            path,
            f"{name} is a symbolic link that loops back on itself",
            "replace the link with the file or folder it should point at",
        )
    if exc.errno == errno.ENAMETOOLONG:
        return FileProblem(
            "name_too_long", path, f"{name}…: the path is longer than the file system allows", "use a shorter name"
        )
    if exc.errno == errno.ENOENT:
        linked = os.path.islink(path)
        return FileProblem(
            "file_missing",
            path,
            f"{name} is a link to nothing (its target is gone)" if linked else f"{name} does not exist",
            "re-download the pipeline, or fix the link",
        )
    return FileProblem("file_unreadable", path, f"{name} cannot be read ({exc.strerror})", "check its permissions")


def file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def regular_stat(path: Path | str) -> os.stat_result:
    """stat() of `path` (links followed) if it is a regular file, else FileProblem."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_problem(exc, path) from None
    except ValueError:  # an embedded NUL byte
        raise FileProblem("name_invalid", path, "the path contains a NUL character", "use a plain name") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileProblem(
            "not_a_regular_file",
            path,
            f"{Path(path).name} is {file_kind(st.st_mode)}, not a file",
            "replace it with the real file",
        )
    return st


def open_regular(path: Path | str) -> BinaryIO:
    """Open a regular file for reading. Non-blocking open, then fstat: a FIFO swapped in after a
    check cannot block the open, and is refused before the first read."""
    regular_stat(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise os_problem(exc, path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileProblem(
            "not_a_regular_file",
            path,
            f"{Path(path).name} is {file_kind(st.st_mode)}, not a file",
            "replace it with the real file",
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bytes(path: Path | str, limit: int) -> bytes:
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileProblem(
            "file_too_large",
            path,
            f"{Path(path).name} is larger than {limit:,} bytes, far more than such a file ever holds",
            "re-download the pipeline",
        )
    return data


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            depth = max(depth, level)
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return depth


def parse_json(raw: bytes | str, path: Path | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    name = Path(path).name
    try:
        value = json.loads(raw)
    except RecursionError:
        value = None
        too_deep = True
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise FileProblem(
            "json_invalid",
            path,
            f"{name} is not valid JSON ({str(exc)[:160]})",
            "re-download the pipeline or fix the file",
        ) from None
    else:
        too_deep = json_depth(value) > max_depth
    if too_deep:
        raise FileProblem(
            "json_too_deep",
            path,
            f"{name} nests more than {max_depth} levels deep: not a real config",
            "re-download the pipeline or fix the file",
        )
    return value


def read_json(path: Path | str, limit: int = MAX_JSON_BYTES) -> Any:
    return parse_json(read_bytes(path, limit), path)


def read_json_object(path: Path | str, limit: int = MAX_JSON_BYTES) -> dict:
    value = read_json(path, limit)
    if not isinstance(value, dict):
        raise FileProblem(
            "json_not_object",
            path,
            f"{Path(path).name} holds a JSON {type(value).__name__}, not an object",
            "re-download the pipeline or fix the file",
        )
    return value
