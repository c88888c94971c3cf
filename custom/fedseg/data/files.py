"""What a path is, and bounded reading of the small JSON files a site supplies.

Everything here looks before it reads: a directory, FIFO, socket or device is named as what it
is (opening a FIFO would block the check), and a JSON file is refused when it is larger or
nested deeper than any datalist or ``dataset.json`` needs, before the parser sees it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedseg.errors import DataError

MAX_JSON_BYTES = 64 * 1024 * 1024  # a datalist of 100,000 cases is about 10 MB
MAX_JSON_DEPTH = 32  # datalists and dataset.json nest 3 levels deep

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def describe_non_regular(mode: int) -> str | None:
    """What a non-regular file is ("a FIFO (named pipe)" ...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def stat_regular(path: Path, what: str) -> os.stat_result:
    """``os.stat`` of a file that must exist and be a regular file (symlinks followed).

    Raises:
        DataError: naming the path and what it is instead (missing, dangling link, FIFO ...).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            target = os.readlink(path)
            raise DataError(f"{path}: {what} is a symbolic link to {target!r}, which does not exist") from None
        raise DataError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read {what} ({getattr(exc, 'strerror', None) or exc})") from None
    kind = describe_non_regular(info.st_mode)
    if kind:
        raise DataError(f"{path}: {what} is {kind}, not a regular file")
    return info


def json_depth(raw: bytes) -> int:
    """Deepest nesting of objects and arrays in JSON text (strings skipped), without parsing it."""
    skeleton = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    if skeleton.size == 0:
        return 0
    step = (np.isin(skeleton, (ord("["), ord("{"))).astype(np.int32)
            - np.isin(skeleton, (ord("]"), ord("}"))).astype(np.int32))
    return int(np.cumsum(step).max(initial=0))


def read_at_most(fh: BinaryIO, n: int, *, chunk: int = 1 << 24) -> bytes:
    """Read up to ``n`` bytes (fewer only at the end), ``chunk`` at a time.

    ``read(n)`` sizes its buffer by ``n``, and a gzip stream inflates all it is asked for, so a
    declared or bounding size never turns into one allocation.
    """
    parts, got = [], 0
    while got < n:
        part = fh.read(min(n - got, chunk))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_json_bounded(path: Path, what: str, *, max_bytes: int = MAX_JSON_BYTES,
                      max_depth: int = MAX_JSON_DEPTH) -> dict:
    """Read a JSON object within limits on size and nesting depth.

    Raises:
        DataError: naming the file and what is wrong (missing, not a regular file, too large,
            too deep, not JSON, not an object).
    """
    path = Path(path)
    info = stat_regular(path, what)
    if info.st_size > max_bytes:
        raise DataError(f"{path}: {what} is {info.st_size:,} bytes; at most {max_bytes:,} are read")
    try:
        with open(path, "rb") as fh:
            # In 1 MiB chunks: read(max_bytes + 1) would allocate the whole 64 MB bound up front.
            raw = read_at_most(fh, max_bytes + 1, chunk=1 << 20)
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if len(raw) > max_bytes:  # the file grew after stat
        raise DataError(f"{path}: {what} is larger than {max_bytes:,} bytes")
    depth = json_depth(raw)
    if depth > max_depth:
        raise DataError(f"{path}: {what} nests {depth} levels deep; at most {max_depth} are allowed")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: {what} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer literal of 5000 digits
        raise DataError(f"{path}: {what} cannot be parsed ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: {what} must be a JSON object, found {type(data).__name__}")
    return data
