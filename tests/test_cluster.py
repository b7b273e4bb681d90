"""The flow on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on 127.0.0.1.

Started with `semioflow cluster up` (separate processes, not a LocalCluster in
the test process).  Covers: the pipeline through both workers with outputs
identical to the local process pool's; the nightly deployment on the cluster;
a worker killed during deidentify (the run completes, every recording once,
no partial file); the scheduler killed mid-run (one clear error, a rerun on a
new cluster resumes); a GPU stage without a GPU worker fails at once; no
scheduler and a worker without the shared data dir are clear errors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows import cluster
from tasks import layout
from tasks.atomic import is_partial
from tasks.params import SeizureSynthParams
from tasks.schema import read_table
from tests.test_pipeline import _free_port, run_nightly_once, sf, small_models

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# two patients, one recording each, one 30 s window: the smallest cohort every stage runs on
PHANTOM = SeizureSynthParams(patients=2, recordings_per_patient=1, min_duration_s=32.0, max_duration_s=34.0)
OLD = time.time() - 3600
FAIL_FAST_S = 60  # a GPU stage with no GPU worker must fail within this (no hang)


def _compare():
    spec = importlib.util.spec_from_file_location("compare_outputs", REPO / "bench" / "compare_outputs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.compare


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Path:
    """A project with a two-recording phantom inbox, smoke models and a loopback Dask cluster (2 workers)."""
    from tasks.synth.seizure import generate_cohort

    d = tmp_path_factory.mktemp("daskproj")
    truth = d / "phantom"
    generate_cohort(truth, PHANTOM, seed=3, workers=2)
    for p in (truth / "videos").iterdir():
        os.utime(p, (OLD, OLD))
    params = small_models(yaml.safe_load((REPO / "params.yaml").read_text()), str(truth))
    params["ingest"].update(inbox=str(truth / "videos"), gait_inbox="", settle_s=0.0)
    params["report"]["events"] = ""
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    sf(d, "models", "tiny")
    sf(d, "server", "start", "--port", str(_free_port()), timeout=180)  # one server: no ephemeral one per command
    up = sf(d, "cluster", "up", "--workers", "2", timeout=180)
    address = json.loads((d / ".semioflow" / cluster.STATE).read_text())["address"]
    assert address in up.stdout
    params["base"].update(runner="dask", dask_address=address)
    (d / "params_dask.yaml").write_text(yaml.safe_dump(params))
    yield d
    sf(d, "cluster", "down", check=False)
    sf(d, "server", "stop", check=False)


def address_of(proj: Path) -> str:
    return yaml.safe_load((proj / "params_dask.yaml").read_text())["base"]["dask_address"]


def test_pipeline_on_two_dask_workers_matches_the_local_runner(proj):
    workers = cluster.workers(address_of(proj))
    assert len(workers) == 2 and len({w["pid"] for w in workers.values()}) == 2
    assert os.getpid() not in {w["pid"] for w in workers.values()}  # real processes, not in this test
    sf(proj, "--data-dir", "data_local", "run")
    res = sf(proj, "--params", "params_dask.yaml", "--data-dir", "data_dask", "run")
    assert "done in" in res.stdout
    ran = cluster.tasks_run(address_of(proj))
    print(json.dumps(ran, indent=1))
    assert len(ran) == 2 and all(sum(per.values()) > 0 for per in ran.values()), "a worker ran nothing"
    # per-recording stages spread: both workers de-identified a recording
    assert all(per.get("deidentify", 0) >= 1 for per in ran.values()), ran
    counts, diffs = _compare()(proj / "data_local", proj / "data_dask")
    print(counts, diffs)
    assert counts["tables"] > 30 and counts["media"] > 10
    assert diffs == []
    # a rerun on the cluster finds everything cached and runs nothing new
    before = cluster.tasks_run(address_of(proj))
    sf(proj, "--params", "params_dask.yaml", "--data-dir", "data_dask", "run")
    assert cluster.tasks_run(address_of(proj)) == before


def test_nightly_on_the_cluster_redoes_only_what_is_missing(proj):
    """The nightly deployment, unchanged, with base.runner: dask: one recording's de-identified video gone, the
    triggered run redoes that recording on a worker (once) and nothing else; outputs match the local runner's."""
    data = proj / "data_dask"
    assert (data / "02_deidentify" / "done").is_dir(), "needs the two-worker run above"
    rid = sorted(p.stem for p in (data / "02_deidentify" / "done").glob("*.json"))[0]
    (data / "02_deidentify" / "videos" / f"{rid}.mp4").unlink()
    before = cluster.tasks_run(address_of(proj))
    state = run_nightly_once(proj, "--params", "params_dask.yaml", "--data-dir", "data_dask")
    assert state == "COMPLETED", (state, (proj / "schedule.log").read_text()[-3000:])
    after = cluster.tasks_run(address_of(proj))
    grew = {(w, stage): n - before.get(w, {}).get(stage, 0) for w, per in after.items() for stage, n in per.items()
            if n != before.get(w, {}).get(stage, 0)}
    assert list(grew.values()) == [1] and next(iter(grew))[1] == "deidentify", (before, after)
    assert _compare()(proj / "data_local", data)[1] == []


def test_a_gpu_stage_without_a_gpu_worker_fails_at_once(proj):
    p = yaml.safe_load((proj / "params_dask.yaml").read_text())
    p["train"]["device"] = "cuda"
    (proj / "params_gpu.yaml").write_text(yaml.safe_dump(p))
    t0 = time.monotonic()
    res = sf(proj, "--params", "params_gpu.yaml", "--data-dir", "data_gpu", "stage", "train", check=False,
             timeout=FAIL_FAST_S + 60)
    assert res.returncode != 0 and time.monotonic() - t0 < FAIL_FAST_S
    assert "no Dask worker" in res.stderr and "GPU=1" in res.stderr, res.stderr[-2000:]


def test_a_model_stage_goes_to_the_gpu_worker(proj):
    """A third worker advertising GPU=1 joins; train on device auto (and gait) then runs there, not elsewhere."""
    address = address_of(proj)
    log = open(proj / ".semioflow" / "cluster" / "worker-gpu.log", "ab")
    gpu = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1",
                            "--nthreads", "1", "--name", "gpu-0", "--no-dashboard", "--resources", "GPU=1"],
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(w["resources"].get("GPU") for w in cluster.workers(address).values()):
            assert time.monotonic() < deadline, "the GPU worker did not join"
            time.sleep(0.5)
        (gpu_addr,) = [a for a, w in cluster.workers(address).items() if w["resources"].get("GPU")]
        before = cluster.tasks_run(address)
        p = yaml.safe_load((proj / "params_dask.yaml").read_text())
        p["train"].update(device="auto", weight_decay=0.02)  # auto: a GPU worker if any; a new key: train reruns
        (proj / "params_train.yaml").write_text(yaml.safe_dump(p))
        sf(proj, "--params", "params_train.yaml", "--data-dir", "data_dask", "stage", "train")
        after = cluster.tasks_run(address)
        grew = {a for a in after if after[a].get("train", 0) > before.get(a, {}).get("train", 0)}
        assert grew == {gpu_addr}, (before, after)
    finally:
        os.killpg(gpu.pid, signal.SIGTERM)
        gpu.wait(timeout=30)
        log.close()


def test_no_scheduler_is_a_clear_error(proj):
    p = yaml.safe_load((proj / "params_dask.yaml").read_text())
    p["base"]["dask_address"] = "tcp://127.0.0.1:9"  # nothing listens on the discard port
    (proj / "params_nosched.yaml").write_text(yaml.safe_dump(p))
    res = sf(proj, "--params", "params_nosched.yaml", "--data-dir", "data_none", "stage", "ingest", check=False,
             timeout=120)
    assert res.returncode != 0 and "no Dask scheduler answers at tcp://127.0.0.1:9" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_a_worker_without_the_shared_data_dir_stops_its_task(tmp_path):
    token = cluster.write_token(tmp_path)
    cluster.check_shared_data(tmp_path, token)  # the same folder: fine
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    with pytest.raises(cluster.ClusterError, match=r"worker .* \(pid \d+\) does not see this run's data dir"):
        cluster.check_shared_data(elsewhere, token)
    cluster.write_token(elsewhere)  # another run's token
    with pytest.raises(cluster.ClusterError, match="another run"):
        cluster.check_shared_data(elsewhere, token)


MALLOC_PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "restore":
    from flows.cluster import restore_malloc_thresholds
    restore_malloc_thresholds()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2000):
    frame = np.ones(384 * 288 * 3, np.uint8)  # one demo-size RGB frame, allocated and freed
    del frame
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_nannys_malloc_setting_is_undone_in_the_task_process():
    """With a Dask nanny's MALLOC_TRIM_THRESHOLD_ every frame-sized buffer is a fresh mmap (page faults on
    every page, every time); after ``restore_malloc_thresholds`` freed frames are reused."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    faults = {mode: int(subprocess.run([sys.executable, "-c", MALLOC_PROBE, mode], env=env, cwd=REPO, check=True,
                                       capture_output=True, text=True).stdout.split()[-1])
              for mode in ("as-is", "restore")}
    print(faults)
    assert faults["as-is"] > 20 * max(faults["restore"], 100), faults


def test_killing_a_worker_during_deidentify_the_run_completes(proj):
    """Near the end of the module: it leaves the cluster one worker short."""
    data = proj / "data_kill"
    sf(proj, "--data-dir", str(data), "stage", "ingest")
    run = subprocess.Popen([str(BIN / "semioflow"), "--params", "params_dask.yaml", "--data-dir", str(data), "stage",
                            "deidentify"], cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    out = data / "02_deidentify"
    deadline = time.monotonic() + 300
    while not any(is_partial(p) for p in out.rglob("*") if p.is_file()):  # a writer is mid-file
        assert time.monotonic() < deadline and run.poll() is None, "deidentify never started writing"
        time.sleep(0.2)
    pids = json.loads((proj / ".semioflow" / cluster.STATE).read_text())["pids"]
    os.killpg(pids[1], signal.SIGKILL)  # one whole worker (nanny and worker process): a machine lost
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    rids = read_table("manifest", data / "01_ingest" / "manifest.parquet")["recording_id"].to_pylist()
    rows = read_table("deidentified", out / "deidentified.parquet").to_pylist()
    assert sorted(r["recording_id"] for r in rows) == sorted(rids)  # every recording once
    assert sorted(p.stem for p in (out / "done").glob("*.json")) == sorted(rids)
    assert not [p for p in data.rglob("*") if is_partial(p)], "a partial file was left behind"
    assert all((out / "videos" / f"{r['recording_id']}.mp4").is_file() for r in rows if r["status"] == "ok")
    shutil.rmtree(data)


def test_losing_the_scheduler_is_one_clear_error_and_a_rerun_resumes(proj):
    """After the worker-kill test (it brings up a new cluster): the scheduler killed while the pipeline runs
    past deidentify ends the run with one error naming the lost scheduler; on a new cluster a rerun finishes
    without redoing deidentify, and its outputs match the local runner's."""
    data = proj / "data_sched"
    sf(proj, "--params", "params_dask.yaml", "--data-dir", str(data), "stage", "ingest")
    sf(proj, "--params", "params_dask.yaml", "--data-dir", str(data), "stage", "deidentify")
    run = subprocess.Popen([str(BIN / "semioflow"), "--params", "params_dask.yaml", "--data-dir", str(data), "run"],
                           cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    later = [layout.stage_dir(data, stage) for stage in ("downsample", "window")]
    deadline = time.monotonic() + 300
    while not any(d.is_dir() and any(d.rglob("*")) for d in later):  # a stage after deidentify has started
        assert time.monotonic() < deadline and run.poll() is None, "the run never got past deidentify"
        time.sleep(0.1)
    state = json.loads((proj / ".semioflow" / cluster.STATE).read_text())
    os.killpg(state["pids"][0], signal.SIGKILL)  # the scheduler process: its machine lost
    t0 = time.monotonic()
    stdout, stderr = run.communicate(timeout=300)
    print(f"the run ended {time.monotonic() - t0:.1f} s after the scheduler was lost")
    assert run.returncode != 0
    assert f"lost the Dask scheduler at {state['address']}" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr
    # a new cluster at a new address; the rerun resumes
    sf(proj, "cluster", "down")
    sf(proj, "cluster", "up", "--workers", "2", timeout=180)
    address = json.loads((proj / ".semioflow" / cluster.STATE).read_text())["address"]
    p = yaml.safe_load((proj / "params_dask.yaml").read_text())
    p["base"]["dask_address"] = address
    (proj / "params_dask2.yaml").write_text(yaml.safe_dump(p))
    sf(proj, "--params", "params_dask2.yaml", "--data-dir", str(data), "run")
    ran = cluster.tasks_run(address)
    assert not any(per.get("deidentify") for per in ran.values()), ran  # finished before the loss: cached
    assert sum(sum(per.values()) for per in ran.values()) > 0  # what was lost ran again, on the new cluster
    assert not [f for f in data.rglob("*") if is_partial(f)], "a partial file was left behind"
    assert _compare()(proj / "data_local", data)[1] == []
