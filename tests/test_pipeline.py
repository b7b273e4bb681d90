"""Orchestration against a real local Prefect server (started by the tests).

Covers: named per-recording task runs read back through the API, caching
(second run all Cached; one new recording; a params change reruns only the
stages that use it; a helper edit changes the stage's code hash), the run
lock, SIGKILL mid-stage, privacy of Prefect storage, the nightly deployment,
and DVC (dag, repro after `semioflow run` without redundant work, exp run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tasks import registry
from tasks.codehash import code_hash
from tasks.atomic import is_partial
from tasks.params import SeizureSynthParams
from tasks.schema import SEIZURE, read_table

PER_RECORDING = tuple(s.name for s in registry.pipeline_stages() if s.kind == "recording")
# what a seizure recording goes through after de-identification (the gait cohort's stages never see it)
SEIZURE_STAGES = tuple(s.name for s in registry.pipeline_stages() if s.kind == "recording" and s.cohort == SEIZURE)
COHORT = tuple(s.name for s in registry.pipeline_stages() if s.kind == "cohort")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SEMIOFLOW = str(BIN / "semioflow")
# three patients: the folds stage needs one per fold
SMALL = SeizureSynthParams(patients=3, recordings_per_patient=1, min_duration_s=40.0, max_duration_s=44.0)
OLD = time.time() - 3600
NIGHTLY_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def sf(proj: Path, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([SEMIOFLOW, *args], cwd=proj, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"semioflow {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """Three short phantom recordings (one patient)."""
    from tasks.synth.seizure import generate_cohort

    out = tmp_path_factory.mktemp("phantom")
    generate_cohort(out, SMALL, seed=7, workers=2)
    for p in (out / "videos").iterdir():
        os.utime(p, (OLD, OLD))
    return out / "videos"


def small_models(params: dict, truth: str) -> dict:
    """Shrink the model stages for CPU tests: few features, tiny nets, the phantom's labels at ``truth``."""
    q = params["query"]
    q.update(features=["clonic", "head_turning", "blank_stare", "ictal_vocalization"], max_frames=4,
             max_pixels=112 * 112, max_tokens=12)
    q["vision"]["device"] = q["audio"]["device"] = "cpu"
    # two folds: the first run sees two patients (the third arrives later)
    params["folds"].update(labels=f"{truth}/labels.parquet", recordings=f"{truth}/recordings.parquet",
                           diagnoses=f"{truth}/diagnoses.parquet", n_folds=2)
    t = params["train"]
    t.update(features=["clonic", "head_turning"], mode="multilabel", device="cpu")
    for arm in ("r2plus1d", "vivit"):
        t[arm].update(size="tiny", frames=4, image_size=32, epochs=1, batch_size=4)
    params["evaluate"]["bootstrap"] = 100
    g = params["gait"]
    g.update(device="cpu", frames=8, queries=4, decoder_layers=1, heads=4, epochs=2, batch_size=2,
             rationale_tokens=16)
    g["baseline"].update(size="tiny", frames=8, image_size=32, epochs=1, batch_size=4)
    return params


@pytest.fixture(scope="module")
def proj(tmp_path_factory, phantom) -> Path:
    """A project folder with its own params, inbox (2 of the 3 recordings), smoke models and a running server."""
    d = tmp_path_factory.mktemp("proj")
    params = small_models(yaml.safe_load((REPO / "params.yaml").read_text()), str(phantom.parent))
    params["ingest"]["inbox"] = "inbox"
    params["ingest"]["settle_s"] = 1.0
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    sf(d, "models", "tiny")
    (d / "inbox").mkdir()
    for p in sorted(phantom.iterdir())[:2]:
        shutil.copy2(p, d / "inbox" / p.name)
    sf(d, "server", "start", "--port", str(_free_port()), timeout=180)
    yield d
    sf(d, "server", "stop", check=False)


def api(proj: Path) -> str:
    return json.loads((proj / ".semioflow" / "server.json").read_text())["api_url"]


def latest_flow_run(proj: Path, name: str = "semioflow") -> dict:
    runs = httpx.post(f"{api(proj)}/flow_runs/filter", json={
        "flows": {"name": {"any_": [name]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 1}).json()
    assert runs, f"no flow run of {name}"
    return runs[0]


def task_states(proj: Path, flow_run_id: str) -> dict[str, str]:
    """task run name -> state name, for one flow run."""
    runs = httpx.post(f"{api(proj)}/task_runs/filter", json={
        "flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}).json()
    return {r["name"]: r["state"]["name"] for r in runs}


def per_recording(states: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in states.items() if k.split("-")[0] in PER_RECORDING}


def rids(proj: Path) -> list[str]:
    return sorted(read_table("manifest", proj / "data" / "01_ingest" / "manifest.parquet")["recording_id"].to_pylist())


def passed(proj: Path) -> list[str]:
    """Recordings that passed de-identification (the audit may quarantine one: fail-closed)."""
    rows = read_table("deidentified", proj / "data" / "02_deidentify" / "deidentified.parquet").to_pylist()
    return sorted(r["recording_id"] for r in rows if r["status"] == "ok")


def expected_tasks(proj: Path) -> set[str]:
    return {f"deidentify-{r}" for r in rids(proj)} | {f"{s}-{r}" for s in SEIZURE_STAGES for r in passed(proj)}


# ---- server, flow, caching -------------------------------------------------------------


def test_run_shows_named_task_runs_through_the_api(proj):
    res = sf(proj, "run")
    assert "ingest: 2 new" in res.stdout
    # a quiet console: one progress line per stage, a summary, no third-party noise (the UI has the rest)
    console = res.stdout + res.stderr
    for stage in ("ingest",) + PER_RECORDING + COHORT:
        # the project has no gait clips: kinematics has nothing to do (its line says so), gait records a skip
        done = "0/0 nothing to do" if stage == "kinematics" else r"\d+/\d+ .*cached"
        assert re.search(rf"^{stage} +\S+ +{done}", console, re.M), (stage, console[-3000:])
    assert "no gait clip folder at ingest.gait_inbox" in res.stdout and "gait: skipped: no gait clips" in res.stdout
    assert not any(noise in console for noise in ("W0000", "XNNPACK", "Warning:", "Traceback", "| INFO")), console
    assert "done in" in res.stdout and "report: data/16_report/report.html" in res.stdout
    fr = latest_flow_run(proj)
    assert fr["state"]["type"] == "COMPLETED"
    assert re.fullmatch(r"run-all-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d", fr["name"]), fr["name"]  # <command>-<stage>-<date>
    states = per_recording(task_states(proj, fr["id"]))
    assert passed(proj), "every recording was quarantined"
    assert set(states) == expected_tasks(proj)
    assert set(states.values()) == {"Completed"}
    keys = [s.replace("_", "-") for s in PER_RECORDING]
    arts = httpx.post(f"{api(proj)}/artifacts/filter", json={"artifacts": {"key": {"any_": keys}}}).json()
    assert {a["key"] for a in arts} == set(keys)


def test_second_run_is_entirely_cached(proj):
    sf(proj, "run")
    states = per_recording(task_states(proj, latest_flow_run(proj)["id"]))
    assert set(states) == expected_tasks(proj)
    assert set(states.values()) == {"Cached"}, states


def test_one_new_recording_runs_only_its_tasks(proj, phantom):
    before = set(rids(proj))
    new = sorted(phantom.iterdir())[2]
    shutil.copy2(new, proj / "inbox" / new.name)
    sf(proj, "run")
    (added,) = set(rids(proj)) - before
    states = per_recording(task_states(proj, latest_flow_run(proj)["id"]))
    for name, state in states.items():
        assert state == ("Completed" if name.endswith(added) else "Cached"), (name, state)
    assert set(states) == expected_tasks(proj) and f"deidentify-{added}" in states


def test_params_change_reruns_only_the_stage_that_uses_it(proj):
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["window"]["overlap_s"] = 10.0
    (proj / "params_overlap.yaml").write_text(yaml.safe_dump(p))
    windows = proj / "data" / "04_window" / "windows.parquet"
    before = read_table("windows", windows)
    sf(proj, "--params", "params_overlap.yaml", "run")
    states = per_recording(task_states(proj, latest_flow_run(proj)["id"]))
    # window reruns; the stages that read windows rerun only if the windows' content changed
    # (content-addressed keys: for 40-44 s recordings both overlaps give the same two windows)
    content_changed = not read_table("windows", windows).equals(before)
    for name, state in states.items():
        stage = name.split("-")[0]
        rerun = stage == "window" or (stage in ("face_crop", "pose") and content_changed)
        assert state == ("Completed" if rerun else "Cached"), (name, state)


def test_a_failed_recording_names_its_cause_in_the_final_error(proj):
    """The command's last line says why (scrubbed), not only "see the Prefect UI" (a temporary UI is gone)."""
    data = proj / "data_fail"
    shutil.copytree(proj / "data", data, ignore=shutil.ignore_patterns(".semioflow*.lock"))
    bad = sorted((data / "03_downsample" / "frames").glob("*.parquet"))[0]
    bad.write_bytes(b"not a parquet file")
    res = sf(proj, "--data-dir", str(data), "stage", "window", check=False)
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    n = len(passed(proj))
    assert f"window failed for 1 of {n} recordings: {bad.stem}; first cause: window failed for {bad.stem}:" \
        in last, last
    assert "(the others finished;" in last
    assert str(proj) not in res.stderr, last  # no file path in the message
    assert "Traceback" not in res.stderr


def test_a_failed_query_rerun_keeps_answers_tables_and_the_report(proj):
    """A good run, then ``stage query`` pointed at a port where nothing listens: it fails for every recording,
    says so, and answers, query.json, predictions, metrics and the report (rebuilt) stay identical, with the
    random-weights banner (the tiny models' ids carry the tag); the report adds one notice naming the
    recordings whose answers were kept (stale)."""
    from tasks.answers import RANDOM_BANNER

    sf(proj, "run")  # the good run (cached when the tests above ran it)
    data = proj / "data_dead"
    shutil.copytree(proj / "data", data, ignore=shutil.ignore_patterns(".semioflow*.lock"))
    p = yaml.safe_load((proj / "params.yaml").read_text())
    for kind in ("vision", "audio"):  # a served model: had it answered, random_weights would have flipped
        p["query"][kind].update(backend="openai", model="served-model", retries=0, timeout_s=2.0,
                                base_url=f"http://127.0.0.1:{_free_port()}/v1")
    (proj / "params_dead.yaml").write_text(yaml.safe_dump(p))
    kept = [Path("09_query") / "answers.parquet", Path("09_query") / "query.json",
            Path("10_aggregate") / "predictions.parquet", Path("13_evaluate") / "metrics.parquet",
            Path("13_evaluate") / "metrics.json", Path("13_evaluate") / "tables.md"]
    before = {f: (data / f).read_bytes() for f in kept}
    assert json.loads(before[kept[1]])["random_weights"] and json.loads(before[kept[1]])["answers"] > 0

    dead = ("--data-dir", str(data), "--params", "params_dead.yaml")
    res = sf(proj, *dead, "stage", "query", check=False)
    assert res.returncode == 1, res.stderr[-3000:]
    n = len(passed(proj))
    last = res.stderr.strip().splitlines()[-1]
    assert (f"query failed for all {n} recordings:" if n > 1 else "query failed for its only recording:") in last
    assert f"{n} of them keep their last good result, marked stale" in last and "the others finished" not in last
    assert re.search(rf"^query .*{n} stale", res.stdout + res.stderr, re.M), res.stdout[-2000:]
    assert json.loads((data / "09_query" / "state.json").read_text())["stale"] == passed(proj)
    for stage in ("aggregate", "evaluate"):
        sf(proj, *dead, "stage", stage)
    shutil.rmtree(data / "16_report" / "done")  # the report is rebuilt, not served from its cache
    (data / "16_report" / "report.html").unlink()
    sf(proj, *dead, "stage", "report")
    assert {f: (data / f).read_bytes() for f in kept} == before
    html = (data / "16_report" / "report.html").read_text(encoding="utf-8")
    assert RANDOM_BANNER in html and "No model answers yet" not in html
    # the same report, plus one notice that names the recordings whose answers are from the earlier run
    stale = re.search(r'<p class="banner stale" id="stale-banner"[^>]*>(.*?)</p>', html, re.S)
    assert stale and all(rid in stale.group(1) for rid in passed(proj)), html[:3000]
    assert html.replace(stale.group(0), "") == (proj / "data" / "16_report" / "report.html").read_text(encoding="utf-8")


def test_editing_a_helper_changes_the_code_hash_of_stages_that_use_it(tmp_path):
    copy = tmp_path / "tasks"
    shutil.copytree(REPO / "tasks", copy)
    before = {s: code_hash(f"tasks.{s}", copy) for s in PER_RECORDING}
    with open(copy / "detectors.py", "a") as fh:
        fh.write("\n# an edit to the detectors: deidentify (and pose) use them, downsample and window do not\n")
    code_hash.cache_clear()
    after = {s: code_hash(f"tasks.{s}", copy) for s in PER_RECORDING}
    assert after["deidentify"] != before["deidentify"]
    assert after["downsample"] == before["downsample"] and after["window"] == before["window"]
    with open(copy / "media.py", "a") as fh:
        fh.write("\n# media is shared by deidentify and downsample\n")
    code_hash.cache_clear()
    again = {s: code_hash(f"tasks.{s}", copy) for s in PER_RECORDING}
    assert again["downsample"] != after["downsample"] and again["window"] == after["window"]
    code_hash.cache_clear()


# ---- robustness ------------------------------------------------------------------------


def test_second_run_while_one_holds_the_data_folder_exits_clearly(proj):
    from flows.lock import run_lock

    manifest = proj / "data" / "01_ingest" / "manifest.parquet"
    before = manifest.read_bytes()
    with run_lock(proj / "data"):
        res = sf(proj, "run", check=False, timeout=120)
    assert res.returncode == 1
    assert "another semioflow run" in res.stderr and "Traceback" not in res.stderr
    assert manifest.read_bytes() == before


def _deidentify_until_writing(proj: Path, data: Path) -> subprocess.Popen:
    """``semioflow stage deidentify`` in its own session, returned once a worker writes a video."""
    sf(proj, "--data-dir", str(data), "stage", "ingest")
    proc = subprocess.Popen([SEMIOFLOW, "--data-dir", str(data), "stage", "deidentify"], cwd=proj, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    videos = data / "02_deidentify" / "videos"
    deadline = time.time() + 180
    while time.time() < deadline and not (videos.is_dir() and any(is_partial(p) for p in videos.iterdir())):
        time.sleep(0.2)
    assert videos.is_dir(), "deidentify never started writing"
    return proc


def test_sigkill_of_the_main_process_only_ends_its_workers(proj):
    """Only the main PID is killed (as an OOM killer or `kill -9 PID` does): its pool workers must end too."""
    data = proj / "data_orphan"
    proc = _deidentify_until_writing(proj, data)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    alive = True
    while alive and time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # any process left in the run's session?
            time.sleep(0.2)
        except ProcessLookupError:
            alive = False
    assert not alive, "pool workers outlived the killed run"
    sf(proj, "--data-dir", str(data), "stage", "deidentify")
    assert not [p for p in (data / "02_deidentify").rglob("*") if is_partial(p)]


def test_sigkill_mid_stage_then_rerun_completes(proj):
    data = proj / "data_kill"
    proc = _deidentify_until_writing(proj, data)
    videos = data / "02_deidentify" / "videos"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    finals = [p for p in videos.iterdir() if not is_partial(p)]
    for p in finals:  # whatever was renamed into place must be complete
        from tasks.media import probe

        assert probe(p).first_frame_ok
    sf(proj, "--data-dir", str(data), "stage", "deidentify")
    leftovers = [p for p in (data / "02_deidentify").rglob("*") if is_partial(p)]
    assert leftovers == []
    rows = read_table("deidentified", data / "02_deidentify" / "deidentified.parquet").to_pylist()
    assert len(rows) == 3 and any(r["status"] == "ok" for r in rows)
    for r in rows:  # a video exists exactly for the recordings that passed the audit
        assert (videos / f"{r['recording_id']}.mp4").is_file() == (r["status"] == "ok")


def test_prefect_state_is_private_and_holds_no_names(proj, phantom):
    state = proj / ".semioflow"
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "prefect").stat().st_mode & 0o777 == 0o700
    names = [p.stem for p in phantom.iterdir()]
    storage = state / "prefect" / "storage"
    files = [p for p in storage.rglob("*") if p.is_file()]
    assert files, "task results should be persisted"
    for f in files:
        blob = f.read_bytes()
        assert str(proj / "inbox").encode() not in blob
        assert not any(n.encode() in blob for n in names), f
    # nor in any task run parameter or flow run log line
    runs = httpx.post(f"{api(proj)}/task_runs/filter", json={"limit": 200}).json()
    logs = httpx.post(f"{api(proj)}/logs/filter", json={"limit": 200}).json()
    text = json.dumps(runs) + json.dumps(logs)
    assert not any(n in text for n in names)


def test_an_inbox_given_on_the_command_line_stays_out_of_prefect(proj):
    """Prefect stores flow-run (and deployment) parameters and shows them in its UI: an --inbox path (it often
    names a ward or a study) must not be one of them, nor anywhere in Prefect's database."""
    box = proj / "ward7_doe_inbox"
    box.mkdir()
    (box / "notes.mp4").write_text("not a video\n" * 40)
    os.utime(box / "notes.mp4", (OLD, OLD))
    out = sf(proj, "stage", "ingest", "--inbox", str(box)).stdout
    assert "1 quarantined" in out, out  # the folder was read
    runs = httpx.post(f"{api(proj)}/flow_runs/filter", json={"limit": 200}).json()
    assert runs and "ward7" not in json.dumps(runs)
    assert re.fullmatch(r"stage-ingest-[\dT-]{19}", latest_flow_run(proj, "semioflow-stage")["name"])
    blobs = [f for f in (proj / ".semioflow" / "prefect").rglob("*") if f.is_file()]
    assert blobs and not [f for f in blobs if b"ward7" in f.read_bytes()]
    (ref,) = list((proj / ".semioflow" / "inboxes").iterdir())  # where the path is: owner-only
    assert ref.read_text() == str(box.resolve()) and ref.stat().st_mode & 0o777 == 0o600


def test_the_prefect_server_runs_on_postgresql(postgres_server, tmp_path):
    """`semioflow server start --database-url postgresql+asyncpg://…` (a site's shared server): Prefect migrates
    the database, a run is recorded there, and status says which database it is."""
    import sqlalchemy as sa

    from tests.pg_server import pg_database

    pytest.importorskip("asyncpg", reason="asyncpg (Prefect's PostgreSQL driver) is not installed")
    url = pg_database(postgres_server)
    d = tmp_path / "pgproj"
    (d / "inbox").mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"].update(inbox="inbox", gait_inbox="", settle_s=0.0)
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    (d / "inbox" / "notes.mp4").write_text("not a video\n" * 40)
    sf(d, "server", "start", "--port", str(_free_port()), "--database-url", url.replace("+psycopg", "+asyncpg"),
       timeout=300)
    try:
        assert "postgresql" in sf(d, "server", "status").stdout
        assert "1 quarantined" in sf(d, "stage", "ingest").stdout
        runs = httpx.post(f"{api(d)}/flow_runs/filter", json={"limit": 10}).json()
        assert [r["state"]["type"] for r in runs] == ["COMPLETED"]
        eng = sa.create_engine(url)
        with eng.connect() as conn:  # the run is in PostgreSQL, not in a SQLite file
            n = conn.execute(sa.text("SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'")).scalar()
        eng.dispose()
        assert n == 1
        assert not list((d / ".semioflow").rglob("*.db"))
    finally:
        sf(d, "server", "stop", check=False)


def run_nightly_once(proj: Path, *global_args: str) -> str:
    """Serve the nightly deployment (``semioflow [global_args] schedule --no-publish``), trigger one run through
    the server's API, wait for it to end; returns its final state type.  Checks the registered cron."""
    log = open(proj / "schedule.log", "w")
    proc = subprocess.Popen([SEMIOFLOW, *global_args, "schedule", "--cron", "0 2 * * *", "--no-publish"], cwd=proj,
                            env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = api(proj)
        dep = None
        deadline = time.time() + 120
        while time.time() < deadline and dep is None:
            r = httpx.get(f"{url}/deployments/name/semioflow-nightly/nightly")
            dep = r.json() if r.status_code == 200 else None
            time.sleep(1)
        assert dep, "deployment never registered:\n" + (proj / "schedule.log").read_text()[-2000:]
        assert dep["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        fr = httpx.post(f"{url}/deployments/{dep['id']}/create_flow_run", json={}).json()
        deadline = time.time() + NIGHTLY_TIMEOUT_S
        state = None
        while time.time() < deadline:
            state = httpx.get(f"{url}/flow_runs/{fr['id']}").json()["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        return state
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_nightly_deployment_registers_and_a_triggered_run_completes(proj):
    state = run_nightly_once(proj)
    assert state == "COMPLETED", (state, (proj / "schedule.log").read_text()[-3000:])


# ---- DVC -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dvc_proj(tmp_path_factory, proj) -> Path:
    """A git + DVC project with this repo's dvc.yaml and code, and a tiny synth cohort."""
    d = tmp_path_factory.mktemp("dvcproj")
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy2(REPO / name, d / name)
    shutil.copytree(REPO / "tasks", d / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    p = small_models(yaml.safe_load((REPO / "params.yaml").read_text()), "data/00_synth/seizure")
    p["synth"]["seizure"].update(patients=3, recordings_per_patient=1, min_duration_s=40.0, max_duration_s=40.0)
    # 16 clips: two subjects per class, so the subject-disjoint split has a test side
    p["synth"]["gait"].update(subjects_per_class=2, clips_per_subject=1, duration_s=3.2)
    p["ingest"]["settle_s"] = 0.0
    # a site's inbox is outside the project: its path and file names must not reach dvc.lock or DVC's state
    p["ingest"]["inbox"] = str(tmp_path_factory.mktemp("ward7_doe_dvc_inbox"))
    (d / "params.yaml").write_text(yaml.safe_dump(p))
    shutil.copytree(proj / "models", d / "models")
    # share the test server: every `semioflow` DVC runs reports to it
    (d / ".semioflow").mkdir(mode=0o700)
    shutil.copy2(proj / ".semioflow" / "server.json", d / ".semioflow" / "server.json")
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(args, cwd=d, env=_env(), check=True, capture_output=True)
    for name in (".dvcignore", ".dvc/config"):  # after `dvc init`, which writes its own
        shutil.copy2(REPO / name, d / name)
    for args in (["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(args, cwd=d, env=_env(), check=True, capture_output=True)
    return d


def dvc(d: Path, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([str(BIN / "dvc"), *args], cwd=d, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"dvc {' '.join(args)}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


def test_dvc_dag_shows_the_stages(dvc_proj):
    out = dvc(dvc_proj, "dag").stdout
    for stage in ("synth", "ingest", "deidentify", "downsample", "window", "query", "aggregate") + COHORT:
        assert stage in out


def test_dvc_repro_after_semioflow_run_does_no_redundant_work(dvc_proj):
    sf(dvc_proj, "synth", "seizure")
    sf(dvc_proj, "synth", "gait")
    inbox = Path(yaml.safe_load((dvc_proj / "params.yaml").read_text())["ingest"]["inbox"])
    for p in (dvc_proj / "data" / "00_synth" / "seizure" / "videos").iterdir():
        shutil.copy2(p, inbox / p.name)  # the names the phantom's truth tables know
        os.utime(inbox / p.name, (OLD, OLD))
    sf(dvc_proj, "run")
    t0 = time.time()
    dvc(dvc_proj, "repro")
    flows = httpx.post(f"{api(dvc_proj)}/flow_runs/filter", json={
        "flows": {"name": {"any_": ["semioflow-stage"]}}, "flow_runs": {"start_time": {"after_": _iso(t0)}}}).json()
    states, cohort = {}, {}
    for fr in flows:
        assert fr["state"]["type"] == "COMPLETED"
        every = task_states(dvc_proj, fr["id"])
        states.update(per_recording(every))
        cohort.update({k: v for k, v in every.items() if k in COHORT})
    assert states and set(states.values()) == {"Cached"}, states
    assert set(cohort) == set(COHORT) and set(cohort.values()) == {"Cached"}, cohort
    again = dvc(dvc_proj, "repro").stdout
    # ingest always runs (finding new files is its job); nothing new, so its outputs and all after it stand
    ran = re.findall(r"Running stage '(\w+)'", again)
    assert ran == ["ingest"] and "didn't change, skipping" in again, again
    # no raw path or file name in what DVC writes: dvc.lock (committed nightly) and its site cache
    assert "ward7" not in (dvc_proj / "dvc.lock").read_text()
    site = dvc_proj / ".semioflow" / "dvc-site"
    blobs = [f for f in site.rglob("*") if f.is_file()]
    assert blobs and not [f for f in blobs if b"ward7" in f.read_bytes()], "DVC's site cache names the inbox"
    # what holds identifiers (the raw transcripts) is on disk but not in DVC (nor, so, in any remote)
    assert list((dvc_proj / "data" / "08_transcript" / "private").glob("*.parquet"))
    lock = yaml.safe_load((dvc_proj / "dvc.lock").read_text())["stages"]["transcript"]["outs"]
    (md5,) = [o["md5"] for o in lock if o["path"] == "data/08_transcript"]
    listing = json.loads((dvc_proj / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).read_text())
    assert listing and not [e["relpath"] for e in listing if "private" in e["relpath"]], listing
    # -f: DVC runs every stage again; persisted outputs keep every recording cached
    dvc(dvc_proj, "repro", "-f", "window")
    assert (dvc_proj / "data" / "04_window" / "windows.parquet").is_file()


def test_dvc_exp_run_with_a_param_override(dvc_proj):
    out = dvc(dvc_proj, "exp", "run", "-S", "window.overlap_s=10").stdout
    assert "Running stage 'window'" in out
    assert "Running stage 'deidentify'" not in out and "Running stage 'synth'" not in out
    assert yaml.safe_load((dvc_proj / "params.yaml").read_text())["window"]["overlap_s"] == 10


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()


def test_temporary_prefect_server_ends_with_a_killed_run(tmp_path):
    """Without the project's server each command starts a temporary one; `kill -9` of the command must
    not leave it running (it holds a port and the SQLite database)."""
    from flows.settings import healthy

    code = ("import time\nfrom flows import settings\nsettings.configure()\n"
            "with settings.api_session() as url:\n    print(url, flush=True)\n    time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1") and healthy(url)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and healthy(url):
        time.sleep(0.2)
    assert not healthy(url), "the temporary Prefect server outlived the killed command"
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
            time.sleep(0.2)
        except ProcessLookupError:
            break
    else:
        raise AssertionError("a process of the killed command is still running")


def test_run_failures_keep_endpoint_hosts_and_mask_keys():
    """What reaches Prefect's logs: paths scrubbed, a URL's host kept (not "htt<path>"), keys masked."""
    from tasks.cache import scrub_paths

    text = ("http://10.0.0.5:8000/v1 failed 4 times, last: HTTP 401: Incorrect API key provided: sk-proj-abc123DEF456ghi;"
            " file /data/inbox/Doe_Jane.mp4")
    out = scrub_paths(text)
    assert out.startswith("http://10.0.0.5:8000/<path> failed") and "htt<path>" not in out
    assert "sk-proj" not in out and "Doe_Jane" not in out and "<masked>" in out
