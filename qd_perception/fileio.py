"""Atomic file writes: a reader (another process, a crash, a Ctrl-C) sees the old file or the new
one, never half of one.

Every file the project writes for others to read (data sets, calibration sets, checkpoints,
exports, metrics, status files) goes through :func:`atomic_output`: the data is written to a
temporary name in the target's directory (same file system, so the rename is atomic) and renamed
over the target with :func:`os.replace` once complete; on an error the temporary file is removed.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_serial = itertools.count()  # unique temporary names for writers in one process


@contextmanager
def atomic_output(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    The parent directory is created. ``fsync`` flushes the file to disk before the rename (for
    files that must survive a power loss, e.g. a calibration set recorded on the vehicle). The
    temporary name is unique in the machine (process id and a counter) and keeps the target's
    suffix, so writers that pick a format from the suffix (``np.savez``, ``savefig``) see it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}-{next(_serial)}{path.suffix}")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (keys in insertion order)."""
    atomic_write_text(path, json.dumps(obj, indent=indent))
