"""Incremental nightly cost: 20 recordings processed, then one added.

Prints, in one run against one local Prefect server:
  * the time of the first full run (20 recordings),
  * the rerun time after adding one recording,
  * the time to process that recording alone in a fresh data folder,
  * rerun / alone (goal <= 1.2) and the number of Cached per-recording tasks.

Usage: .venv/bin/python bench/incremental.py [--recordings 20] [--seconds 40]
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

import httpx
import yaml

from tasks import registry

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OLD = time.time() - 3600


def sf(proj: Path, *args: str) -> float:
    t = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    res = subprocess.run([str(BIN / "semioflow"), *args], cwd=proj, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"semioflow {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - t


def task_states(api: str) -> list[str]:
    fr = httpx.post(f"{api}/flow_runs/filter", json={"flows": {"name": {"any_": ["semioflow"]}},
                                                     "sort": "EXPECTED_START_TIME_DESC", "limit": 1}).json()[0]
    runs = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [fr["id"]]}}, "limit": 200}).json()
    per_recording = {s.name for s in registry.pipeline_stages() if s.kind == "recording"}
    return [r["state"]["name"] for r in runs if r["name"].split("-")[0] in per_recording]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recordings", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=40.0, help="duration of each phantom recording")
    args = ap.parse_args()
    from tasks.params import SeizureSynthParams
    from tasks.synth.seizure import generate_cohort

    work = Path(tempfile.mkdtemp(prefix="semioflow-bench-"))
    n = args.recordings + 1
    cohort = work / "cohort"
    generate_cohort(cohort, SeizureSynthParams(patients=n, recordings_per_patient=1, min_duration_s=args.seconds,
                                               max_duration_s=args.seconds), seed=11, workers=2)
    videos = sorted((cohort / "videos").iterdir())
    proj = work / "proj"
    (proj / "inbox").mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"].update(inbox="inbox", settle_s=0.0)
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    for v in videos[:-1]:
        shutil.copy2(v, proj / "inbox" / v.name)
        os.utime(proj / "inbox" / v.name, (OLD, OLD))
    sf(proj, "server", "start", "--port", "4299")
    api = json.loads((proj / ".semioflow" / "server.json").read_text())["api_url"]
    try:
        t_full = sf(proj, "run")
        shutil.copy2(videos[-1], proj / "inbox" / videos[-1].name)
        os.utime(proj / "inbox" / videos[-1].name, (OLD, OLD))
        t_incr = sf(proj, "run")
        states = task_states(api)
        (proj / "inbox_one").mkdir()
        shutil.copy2(videos[-1], proj / "inbox_one" / videos[-1].name)
        os.utime(proj / "inbox_one" / videos[-1].name, (OLD, OLD))
        # same project and server, fresh data folder (no markers: nothing is reused)
        t_alone = sf(proj, "--data-dir", "data_alone", "run", "--inbox", "inbox_one")
    finally:
        sf(proj, "server", "stop")
    print(f"recordings: {args.recordings} x {args.seconds:g} s, then 1 added (workers={params['base']['workers']})")
    print(f"first run, {args.recordings} recordings : {t_full:7.1f} s")
    print(f"rerun after adding one      : {t_incr:7.1f} s")
    print(f"that recording alone         : {t_alone:7.1f} s")
    print(f"rerun / alone                : {t_incr / t_alone:7.2f}  (goal <= 1.2)")
    print(f"per-recording tasks in rerun : {states.count('Cached')} Cached, {states.count('Completed')} Completed "
          f"of {len(states)}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
