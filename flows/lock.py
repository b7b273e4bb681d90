"""One run per data folder at a time (an advisory file lock), and no orphaned workers.

The run's main process holds ``<data_dir>/.semioflow.lock`` (exclusive).  Its
pool workers (``worker_guard``, the process pool's initializer) each hold a
shared lock on ``<data_dir>/.semioflow.workers.lock`` for their lifetime and
exit within ``PARENT_POLL_S`` once their parent is gone (killed even with
SIGKILL).  A new run takes that lock exclusively once before it starts, so
it waits until every worker of a killed run has exited: nobody still writes
when it begins.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.errors import SemioflowError

LOCK_NAME = ".semioflow.lock"
WORKERS_LOCK_NAME = ".semioflow.workers.lock"
PARENT_POLL_S = 0.5  # seconds between a worker's checks that its parent is alive
ORPHAN_WAIT_S = 60.0  # how long a new run waits for the workers of a killed run to exit


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
        _wait_for_orphans(data_dir)
        yield
    finally:
        os.close(fd)


def _wait_for_orphans(data_dir: Path) -> None:
    """Block until no worker of an earlier run holds the workers lock (they exit once orphaned)."""
    fd = os.open(data_dir / WORKERS_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # closing the fd below releases it for this run's own workers
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Busy(f"worker processes of an earlier, killed run still use {data_dir}; "
                               "stop them (ps, kill) and run again") from None
                time.sleep(PARENT_POLL_S / 2)
    finally:
        os.close(fd)


_guard_fd: int | None = None  # a worker's shared hold on the workers lock, kept until it exits


def worker_guard(data_dir: str) -> None:
    """Process-pool initializer: hold the workers lock (shared) and exit when the parent dies."""
    global _guard_fd
    parent = os.getppid()
    _guard_fd = os.open(Path(data_dir) / WORKERS_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(_guard_fd, fcntl.LOCK_SH)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # orphaned: the run is gone; atomic writes leave no partial file behind

    threading.Thread(target=watch, name="semioflow-parent-watch", daemon=True).start()
