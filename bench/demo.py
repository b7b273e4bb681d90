"""Time a fresh `make demo` (set-up excluded) and its cached rerun, per stage.

A new project folder in a temp dir (this checkout's params.yaml, nothing
else), empty model and XDG caches, the installed ``.venv``: then
``semioflow demo`` twice.  Prints the seconds of each stage of the first run
(from ``.semioflow/last-run.json``), the whole-command wall time of both runs,
their console line counts, the share of query answers that are yes/no, and the
ratio cached/fresh.

    .venv/bin/python bench/demo.py [--keep]

Figures (2 cores, this project's machine) are in the README ("The demo").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEMIOFLOW = Path(sys.executable).with_name("semioflow")
NOISE = ("W0000", "UserWarning", "Warning:")


def run_demo(proj: Path, env: dict) -> tuple[float, list[str], int]:
    t0 = time.monotonic()
    res = subprocess.run([str(SEMIOFLOW), "demo"], cwd=proj, env=env, capture_output=True, text=True)
    lines = (res.stdout + res.stderr).splitlines()
    return time.monotonic() - t0, lines, res.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temp project folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="semioflow-demo-bench-"))
    proj = tmp / "proj"
    proj.mkdir()
    shutil.copy2(REPO / "params.yaml", proj / "params.yaml")
    env = dict(os.environ, SEMIOFLOW_MODEL_CACHE=str(tmp / "models-cache"), XDG_CACHE_HOME=str(tmp / "xdg"))
    env.pop("PREFECT_API_URL", None)
    try:
        fresh_s, fresh_lines, rc = run_demo(proj, env)
        if rc:
            print("\n".join(fresh_lines[-20:]))
            raise SystemExit(f"semioflow demo failed (exit {rc})")
        stages = json.loads((proj / ".semioflow" / "last-run.json").read_text())["stages"]
        cached_s, cached_lines, rc2 = run_demo(proj, env)
        import pyarrow.parquet as pq

        from tasks import layout

        answers = layout.path(proj / "data", "query", "answers.parquet")
        status = pq.read_table(answers, columns=["status"])["status"]
        asked = [s for s in status.to_pylist() if s != "skipped"]
        answered = sum(s in ("yes", "no") for s in asked)
        print("stage        seconds (fresh run)")
        for name, sec in stages.items():
            print(f"{name:<12} {sec:8.1f}")
        print(f"fresh demo:  {fresh_s:7.1f} s wall, {len(fresh_lines)} console lines, "
              f"{sum(any(n in ln for n in NOISE) for ln in fresh_lines)} warning lines")
        print(f"cached rerun:{cached_s:7.1f} s wall, {len(cached_lines)} console lines, exit {rc2}")
        print(f"ratio cached/fresh: {cached_s / fresh_s:.3f}")
        print(f"query answers yes/no: {answered}/{len(asked)} ({100 * answered / max(1, len(asked)):.1f} %)")
    finally:
        if args.keep:
            print(f"kept {proj}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
