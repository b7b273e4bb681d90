"""model_cache: process-safe first use of folders built on demand (packaged Whisper, smoke models).

``materialize(target, build)`` returns ``target`` once it holds a complete
copy.  The first caller builds it; every other process, started at the same
moment or later, waits for that build or uses the finished copy:

- complete means the marker file ``COMPLETE`` is inside: it is written last,
  inside a temporary sibling folder that is then renamed into place, so a
  folder at ``target`` that has the marker is whole, and one that lacks it
  (killed build of an older version, hand-made copy) is never trusted;
- builders serialise on an exclusive ``fcntl`` lock of ``<target>.lock``
  (the kernel drops it when its holder dies, even on SIGKILL) and look again
  after taking it, so a model is built once however many workers start;
- a complete target is never deleted (``force=True``, an explicit rebuild,
  moves it aside just before the new copy is renamed in, then removes it).

Readers never take the lock: a finished copy costs one ``stat``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

COMPLETE = ".semioflow-complete"  # written last: its presence means the folder is whole
MODEL_CACHE_ENV = "SEMIOFLOW_MODEL_CACHE"


def model_cache_dir() -> Path:
    """The per-user cache of built models: ``$SEMIOFLOW_MODEL_CACHE``, else
    ``$XDG_CACHE_HOME/semioflow/models``, else ``~/.cache/semioflow/models``."""
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path(xdg) / "semioflow" / "models")


def is_complete(target: Path) -> bool:
    return (Path(target) / COMPLETE).is_file()


def materialize(target: str | Path, build: Callable[[Path], object], *, force: bool = False) -> Path:
    """``target``, built by ``build(tmp_folder)`` unless a complete copy is there already.

    ``build`` fills the empty folder it is given (it may also create it) and may
    raise: nothing is left at ``target`` then, and the next caller tries again.
    With ``force`` the folder is rebuilt even when complete.
    """
    target = Path(target)
    if not force and is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.with_name(target.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another process builds it
        if not force and is_complete(target):
            return target  # built while we waited
        tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir()
            build(tmp)
            (tmp / COMPLETE).write_text("")
            _fsync_tree(tmp)
            old = None
            if target.exists():  # incomplete, or force: move aside with one rename, delete after
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None and old.is_symlink():  # a user's checkpoint link: unlinked, never followed
                old.unlink()
            elif old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
    finally:
        os.close(fd)  # releases the lock


def _fsync_tree(folder: Path) -> None:
    """Flush every file (and the folder) so a crash right after the rename leaves whole files."""
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
