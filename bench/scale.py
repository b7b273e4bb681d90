"""Scale-out: one cohort through the local process pool and through a Dask cluster of 2 and of 1 workers.

Usage: .venv/bin/python bench/scale.py [--gait/--no-gait] [--patients N] [--recordings N]

In a temporary project (the demo's params: phantom cohort, smoke models) it
runs a fresh ``semioflow run`` three times, each into its own data dir:
``local`` (``base.runner: local``, ``base.workers: 2``), ``dask-2`` (a
``semioflow cluster up --workers 2`` loopback cluster) and ``dask-1`` (one
worker).  One Prefect server serves all three.  Prints each run's wall
seconds and its de-identify seconds, then the ratios: dask-2 / local (the
Dask overhead on one machine; goal <= 1.10) and dask-1 / dask-2 (what the
second worker buys).  The three data dirs are compared
(``compare_outputs``): the runner must not change an output.  Run it alone:
timings on a machine that does other work mean nothing.

Measured 2026-12-06 on the 2-core development machine (defaults: 3 x 2
seizure recordings + 16 gait clips), outputs identical in all three:

    runner     wall s  deidentify s
    local       326.6         112.4
    dask-2      315.3         122.0
    dask-1      471.6         146.1
    dask-2 / local (overhead; goal <= 1.10): 0.965
    dask-1 / dask-2 (second worker):         1.496

Before the task processes pinned their thread pools and undid the nanny's
malloc setting: 24 outputs differed, dask-2 / local was 1.213 (deidentify
156.0 s on Dask).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sf(proj: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run([str(BIN / "semioflow"), *args], cwd=proj, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"semioflow {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res


def timed_run(proj: Path, params: Path, data: str) -> dict:
    t0 = time.monotonic()
    sf(proj, "--params", str(params), "--data-dir", data, "run")
    wall = time.monotonic() - t0
    stages = json.loads((proj / ".semioflow" / "last-run.json").read_text())["stages"]
    return {"wall_s": wall, "deidentify_s": stages.get("deidentify", 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=3)
    ap.add_argument("--recordings", type=int, default=2)
    ap.add_argument("--gait", action=argparse.BooleanOptionalAction, default=True, help="include the gait cohort")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from flows.demo_params import demo_params

    proj = Path(tempfile.mkdtemp(prefix="semioflow-scale-"))
    raw = demo_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    raw["synth"]["seizure"].update(patients=args.patients, recordings_per_patient=args.recordings)
    raw["ingest"]["settle_s"] = 0.0
    if not args.gait:
        raw["ingest"]["gait_inbox"] = ""
    local = proj / "params_local.yaml"
    local.write_text(yaml.safe_dump(raw, sort_keys=False))
    sf(proj, "--params", str(local), "synth", "seizure")
    if args.gait:
        sf(proj, "--params", str(local), "synth", "gait")
    sf(proj, "--params", str(local), "models", "tiny")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sf(proj, "server", "start", "--port", str(port))
    results = {}
    try:
        results["local"] = timed_run(proj, local, "data_local")
        for n in (2, 1):
            sf(proj, "cluster", "up", "--workers", str(n))
            address = json.loads((proj / ".semioflow" / "cluster.json").read_text())["address"]
            raw["base"].update(runner="dask", dask_address=address)
            p = proj / f"params_dask{n}.yaml"
            p.write_text(yaml.safe_dump(raw, sort_keys=False))
            try:
                results[f"dask-{n}"] = timed_run(proj, p, f"data_dask{n}")
            finally:
                sf(proj, "cluster", "down")
    finally:
        sf(proj, "server", "stop")
    spec = importlib.util.spec_from_file_location("compare_outputs", REPO / "bench" / "compare_outputs.py")
    cmp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cmp)
    for other in ("dask-2", "dask-1"):
        _, diffs = cmp.compare(proj / "data_local", proj / f"data_{other.replace('-', '')}")
        print(f"outputs local vs {other}: {'identical' if not diffs else diffs}")
    print(f"cohort: {args.patients} x {args.recordings} seizure recordings" + (", 16 gait clips" if args.gait else ""))
    print(f"{'runner':8s} {'wall s':>8s} {'deidentify s':>13s}")
    for k, r in results.items():
        print(f"{k:8s} {r['wall_s']:8.1f} {r['deidentify_s']:13.1f}")
    print(f"dask-2 / local (overhead; goal <= 1.10): {results['dask-2']['wall_s'] / results['local']['wall_s']:.3f}")
    print(f"dask-1 / dask-2 (second worker):         {results['dask-1']['wall_s'] / results['dask-2']['wall_s']:.3f}")
    print(f"project left at {proj}")


if __name__ == "__main__":
    main()
