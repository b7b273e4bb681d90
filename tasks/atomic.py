"""Atomic file creation: write to a hidden temp name, fsync, then rename.

A reader either sees the complete file at its final path or nothing; a
process killed mid-write (even with SIGKILL) leaves only a ``.partial``
temp file, which no stage ever reads and ``remove_stale_partials`` cleans.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_MARK = ".partial-"


def partial_name(final: Path) -> Path:
    """Temp path beside ``final`` that keeps its suffix (media muxers need it)."""
    return final.with_name(f".{final.stem}{PARTIAL_MARK}{uuid.uuid4().hex[:12]}{final.suffix}")


def is_partial(path: Path) -> bool:
    """True for temp files made by ``atomic_path`` (never to be read as output)."""
    return path.name.startswith(".") and PARTIAL_MARK in path.name


@contextmanager
def atomic_path(final: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path; on clean exit fsync it and rename it to ``final``.

    On an exception the temp file is removed and ``final`` is left as it was
    (absent, or the previous complete version).  ``mode`` sets permissions
    (e.g. ``0o600`` for private tables) before the file becomes visible.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write produced no file for {final.name}")
        if mode is not None:
            os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(final: str | Path, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``final`` atomically; returns the final path."""
    final = Path(final)
    with atomic_path(final, mode=mode) as tmp:
        tmp.write_bytes(data)
    return final


def atomic_write_text(final: str | Path, text: str, *, mode: int | None = None) -> Path:
    """Write UTF-8 ``text`` to ``final`` atomically; returns the final path."""
    return atomic_write_bytes(final, text.encode("utf-8"), mode=mode)


def remove_stale_partials(folder: str | Path) -> int:
    """Delete temp files left by killed writers under ``folder``; returns the count."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.rglob(f".*{PARTIAL_MARK}*"):
        if p.is_file() and is_partial(p):
            p.unlink(missing_ok=True)
            n += 1
    return n


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
