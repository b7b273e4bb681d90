"""The semioflow command: help everywhere, catalog output, exit codes 0/1/2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEMIOFLOW = Path(sys.executable).with_name("semioflow")


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(SEMIOFLOW), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_entry_point_is_installed():
    assert SEMIOFLOW.exists(), "run `make install`: the semioflow console script is missing"


COMMANDS = [(), ("features",), ("synth",), ("synth", "seizure"), ("synth", "gait"), ("ingest",), ("stage",),
            ("run",), ("server",), ("server", "start"), ("server", "stop"), ("server", "status"), ("schedule",)]


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
    assert lines == [f"error: no params file at {tmp_path / 'missing.yaml'}"]


def test_debug_shows_the_traceback(tmp_path):
    res = run("--debug", "--params", str(tmp_path / "missing.yaml"), "synth", "seizure", "--out", str(tmp_path))
    assert res.returncode == 1
    assert "Traceback" in res.stderr and res.stderr.strip().endswith("error: no params file at " +
                                                                      str(tmp_path / "missing.yaml"))


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
