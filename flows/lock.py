"""One run per data folder at a time (an advisory file lock)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.errors import SemioflowError

LOCK_NAME = ".semioflow.lock"


class Busy(SemioflowError):
    """Another semioflow run holds the data folder."""


@contextmanager
def run_lock(data_dir: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold ``<data_dir>/.semioflow.lock`` for the block.

    Without ``wait`` a second run exits at once with a clear message naming
    the holder's pid; with ``wait`` it blocks until the first run ends.  The
    kernel drops the lock when its process dies (even on SIGKILL).
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise Busy(f"another semioflow run (pid {holder}) is using {data_dir}; "
                       "wait for it to finish or pass --wait") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
