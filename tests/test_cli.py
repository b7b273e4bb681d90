"""The semioflow command: help everywhere, catalog output, exit codes 0/1/2."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SEMIOFLOW = Path(sys.executable).with_name("semioflow")


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(SEMIOFLOW), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_entry_point_is_installed():
    assert SEMIOFLOW.exists(), "run `make install`: the semioflow console script is missing"


COMMANDS = [(), ("features",), ("synth",), ("synth", "seizure"), ("synth", "gait"), ("ingest",), ("stage",),
            ("run",), ("quarantine",), ("server",), ("server", "start"), ("server", "stop"), ("server", "status"), ("schedule",)]


@pytest.mark.parametrize("args", COMMANDS)
def test_help_everywhere(args):
    res = run(*args, "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage: semioflow" in res.stdout


def test_root_help_lists_global_options():
    out = run("--help").stdout
    assert "--data-dir" in out and "--debug" in out and "features" in out


def test_features_json_has_20_features_7_11_2():
    res = run("features", "--format", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    groups = [f["group"] for f in doc["features"]]
    assert len(groups) == 20
    assert (groups.count("facial"), groups.count("limb_body"), groups.count("audio")) == (7, 11, 2)
    by_id = {f["id"]: f for f in doc["features"]}
    assert by_id["oral_automatisms"]["prompt"].startswith("Does the patient exhibit repetitive, stereotyped mouth")
    assert by_id["figure4_arms"]["prompt_version"].startswith("figure4_arms@v1.t1-")


def test_features_table_renders():
    res = run("features")
    assert res.returncode == 0 and "oral_automatisms" in res.stdout


@pytest.mark.parametrize("args", [("no-such-command",), ("features", "--format", "xml"), ("--bogus",),
                                  ("synth", "seizure", "--size", "abc")])
def test_bad_usage_exits_2(args):
    res = run(*args)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr


def test_failure_is_one_line_and_exit_1(tmp_path):
    res = run("--params", str(tmp_path / "missing.yaml"), "synth", "seizure", "--out", str(tmp_path / "o"))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines == [f"error: --params {tmp_path / 'missing.yaml'}: no params file there"]


def test_debug_shows_the_traceback(tmp_path):
    res = run("--debug", "--params", str(tmp_path / "missing.yaml"), "synth", "seizure", "--out", str(tmp_path))
    assert res.returncode == 1
    assert "Traceback" in res.stderr and res.stderr.strip().endswith(
        f"error: --params {tmp_path / 'missing.yaml'}: no params file there")


def test_bad_params_value_names_the_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text((REPO / "params.yaml").read_text().replace("overlap_s: 5.0", "overlap_s: five"))
    res = run("--params", str(bad), "synth", "seizure", "--out", str(tmp_path / "o"))
    assert res.returncode == 1
    assert "window.overlap_s" in res.stderr and "Traceback" not in res.stderr


def test_synth_gait_via_cli_then_up_to_date(tmp_path):
    out = tmp_path / "gait"
    res = run("synth", "gait", "--subjects-per-class", "1", "--out", str(out), "--workers", "2")
    assert res.returncode == 0, res.stderr
    from tasks.schema import read_table

    clips = read_table("gait_clips", out / "gait_clips.parquet")
    assert clips.num_rows == 8 * 2 and len(set(clips["gait_class"].to_pylist())) == 8
    assert len(list((out / "videos").glob("*.mp4"))) == clips.num_rows
    again = run("synth", "gait", "--subjects-per-class", "1", "--out", str(out))
    assert again.returncode == 0 and "up to date" in again.stdout
    other = run("synth", "gait", "--subjects-per-class", "1", "--out", str(out), "--seed", "5")
    assert other.returncode == 0 and "up to date" not in other.stdout
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert {m for m in modes.values()} <= {0o600, 0o700}, {k: oct(m) for k, m in modes.items() if m not in (0o600, 0o700)}
    assert modes["."] == 0o700 and modes["videos"] == 0o700 and modes["gait_clips.parquet"] == 0o600


def test_an_open_data_folder_is_made_private_when_empty_and_warned_about_when_it_holds_outputs(tmp_path):
    from flows.cli import private_data_dir
    from tasks import layout

    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)  # what git checks out, or a shared parent's default
    assert private_data_dir(data) is None and data.stat().st_mode & 0o777 == 0o700
    (data / layout.folder("ingest")).mkdir()
    data.chmod(0o750)  # a site's own setting on a folder that holds outputs: left alone, warned about
    warning = private_data_dir(data)
    assert "can be read by other accounts (mode 750)" in warning and data.stat().st_mode & 0o777 == 0o750


# ---- messages (issue 31, item 6): one test each ---------------------------------------------------------------


def _files(*roots: Path) -> set[Path]:
    return {p for r in roots if r.exists() for p in r.rglob("*")}


def test_a_missing_inbox_is_named_with_its_value_before_anything_starts(tmp_path):
    """`ingest --inbox /nonexistent` (and a missing ingest.inbox in params) fail at once, naming the flag or
    param and the value the user gave, before Prefect or a progress line starts."""
    t0 = time.monotonic()
    res = run("ingest", "--inbox", str(tmp_path / "ward7_inbox"), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "'--inbox'" in res.stderr and str(tmp_path / "ward7_inbox") in res.stderr and "does not exist" in res.stderr
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"]["inbox"] = "ward7_recordings"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for args in (("ingest",), ("run",), ("stage", "ingest")):
        res = run(*args, cwd=tmp_path)
        assert res.returncode == 1, (args, res.stderr)
        assert res.stderr.strip().splitlines() == [
            f"error: ingest.inbox in params.yaml is 'ward7_recordings': no folder there (relative to {tmp_path}); "
            "set it to the folder of seizure recordings, or pass --inbox DIR"], res.stderr
        assert res.stdout == ""  # no progress line
    assert time.monotonic() - t0 < 30  # no Prefect server was started (that alone takes ~10-20 s)
    assert not (tmp_path / ".semioflow" / "prefect").exists()


@pytest.fixture(scope="module")
def quarantined(tmp_path_factory):
    """A data dir whose ingest quarantined two planted files: random bytes and an MP4 cut after its header."""
    from tasks.ingest import ingest
    from tasks.params import IngestParams

    d = tmp_path_factory.mktemp("quarantine")
    inbox = d / "ward7_inbox"
    inbox.mkdir()
    (inbox / "P01_doe.mp4").write_bytes(bytes(range(256)) * 40)
    (inbox / "P02_roe.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    for p in inbox.iterdir():
        os.utime(p, (time.time() - 3600,) * 2)
    report = ingest(inbox, d / "data" / "01_ingest", IngestParams(), id_key=b"k" * 32)
    return d, inbox, report


def test_ingest_line_says_which_command_lists_the_quarantined_files(quarantined):
    _, _, report = quarantined
    assert report.describe().startswith("ingest: 0 new, 2 quarantined (`semioflow quarantine` lists them), ")
    from tasks.ingest import IngestReport

    assert "semioflow quarantine" not in IngestReport(accepted=("R1",)).describe()  # nothing to list


def test_quarantine_lists_files_and_reasons_on_the_console_only(quarantined):
    d, inbox, report = quarantined
    before = {p: p.stat().st_mtime_ns for p in _files(d)}
    res = run("--data-dir", "data", "quarantine", cwd=d)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "2 quarantined file(s) in data (file, then stage, reason and detail):"
    by_file = dict(zip(lines[1::2], lines[2::2]))
    ids = dict(report.quarantined)
    assert set(by_file) == {str(inbox / "P01_doe.mp4"), str(inbox / "P02_roe.mp4")}
    assert by_file[str(inbox / "P01_doe.mp4")].startswith("    ingest not_a_video: ")
    assert by_file[str(inbox / "P02_roe.mp4")].startswith("    ingest truncated: ")
    assert {line.rsplit("[", 1)[1].rstrip("]") for line in by_file.values()} == set(ids)
    # console only: nothing written or touched (no file, log or Prefect state), here or in the data dir
    assert {p: p.stat().st_mtime_ns for p in _files(d)} == before
    # the tables it reads name no file: only the private id map does
    from tasks.schema import read_table

    table = read_table("quarantine", d / "data" / "01_ingest" / "quarantine.parquet").to_pylist()
    assert not [r for r in table if "P01" in str(r) or "ward7" in str(r)]
    empty = run("--data-dir", str(d / "none"), "quarantine")
    assert empty.returncode == 1 and f"--data-dir {d / 'none'}: no ingest has run there yet" in empty.stderr


def test_error_numbers_are_in_words(quarantined):
    """PyAV's `[Errno 1094995529]` (FFmpeg's AVERROR_INVALIDDATA) never reaches a reason; a bare number gets words."""
    from tasks.errors import error_words
    from tasks.schema import read_table

    d, _, _ = quarantined
    details = [r["detail"] for r in read_table("quarantine", d / "data" / "01_ingest" / "quarantine.parquet").to_pylist()]
    assert details and all("Errno" not in x and "1094995529" not in x for x in details), details
    assert all("Invalid data found when processing input" in x for x in details), details
    assert error_words("[Errno 1094995529] Invalid data found when processing input: '<file>'") == \
        "Invalid data found when processing input: '<file>'"
    assert error_words("Error number -1094995529 occurred") == \
        "invalid data: not a media file the decoder can read, or a damaged one"
    assert error_words("[Errno 541478725] ") == "the file ended early"  # AVERROR_EOF, no words of its own
    assert error_words("open failed: errno 13") == "open failed: Permission denied"
    assert error_words(PermissionError(13, "Permission denied")) == "Permission denied"


def _commands(group, path=()):
    import click

    yield path, group
    for name, cmd in getattr(group, "commands", {}).items():
        yield from _commands(cmd, path + (name,)) if isinstance(cmd, click.Group) else [(path + (name,), cmd)]


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_help_never_cuts_a_word(width):
    """Every choice (stage names included) appears whole in every command's help, at every terminal width."""
    import click
    from click.testing import CliRunner

    from flows.cli import cli
    from tasks import registry

    checked = 0
    for path, cmd in _commands(cli):
        words = {c for p in cmd.params if isinstance(p.type, click.Choice) for c in p.type.choices}
        if path == ("stage",):
            assert words == set(registry.names())
        if not words:
            continue
        out = CliRunner().invoke(cli, [*path, "--help"], terminal_width=width).output
        tokens = set(re.findall(r"\w+", out))
        assert words <= tokens, (path, width, sorted(words - tokens), out)
        checked += 1
    assert checked >= 5


def test_unknown_keys_and_names_get_did_you_mean(tmp_path):
    res = run("stage", "windw")
    assert res.returncode == 2 and "'windw' is not one of ingest, " in res.stderr
    assert res.stderr.rstrip().endswith("did you mean 'window'?"), res.stderr
    res = run("features", "--format", "yml")
    assert res.returncode == 2 and "did you mean 'yaml'?" in res.stderr
    bad = tmp_path / "params.yaml"
    bad.write_text((REPO / "params.yaml").read_text().replace("overlap_s: 5.0", "overlap: 5.0"))
    res = run("--params", str(bad), "synth", "seizure", "--out", str(tmp_path / "o"))
    assert res.returncode == 1
    assert res.stderr.startswith("error: unknown key 'window.overlap'; did you mean 'window.overlap_s'?"), res.stderr
    from tasks.errors import ConfigError
    from tasks.params import load_params

    with pytest.raises(ConfigError, match=r"unknown key 'deidentify\.txt'; did you mean 'deidentify\.text'\?"):
        load_params(REPO / "params.yaml", {"deidentify.txt": "blur"})  # an override (dvc exp run -S, tests)
    with pytest.raises(ConfigError, match=r"unknown key 'window\.zzz' \(allowed"):  # nothing close: no guess
        load_params(REPO / "params.yaml", {"window.zzz": 1})


def test_flow_run_names_are_command_stage_date():
    """The name every CLI flow run gets (a real run's name is checked through the API in test_pipeline)."""
    import datetime as dt

    from flows.settings import run_name

    at = dt.datetime(2026, 12, 7, 23, 40, 1, tzinfo=dt.timezone.utc)
    assert run_name("stage", "window", now=at) == "stage-window-2026-12-07T23-40-01"
    assert run_name("run", now=at) == "run-all-2026-12-07T23-40-01"
    assert run_name("demo", now=at) == "demo-all-2026-12-07T23-40-01"
    assert run_name("ingest", "ingest", now=at) == "ingest-2026-12-07T23-40-01"
    assert re.fullmatch(r"stage-face_crop-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d", run_name("stage", "face_crop"))
