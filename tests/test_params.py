"""params.yaml: study defaults, strict loading that names the offending key."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from tasks.errors import ConfigError
from tasks.params import Params, load_params, parse_params, to_dict

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, raw) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _repo_raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_carry_the_study_protocol():
    p = load_params(REPO / "params.yaml")
    assert p.downsample.fps == 2.0
    assert (p.window.length_s, p.window.overlap_s, p.window.stride_s) == (30.0, 5.0, 25.0)
    assert p.folds.n_folds == 3
    assert p.aggregate.rule == "any_yes"
    assert dataclasses.is_dataclass(p) and p.__dataclass_params__.frozen


def test_repo_params_equal_dataclass_defaults():
    """params.yaml and the dataclass defaults must not drift apart."""
    assert to_dict(load_params(REPO / "params.yaml")) == to_dict(Params())


def test_every_section_is_a_top_level_key():
    assert set(_repo_raw()) == {f.name for f in dataclasses.fields(Params)}


def test_unknown_key_fails_naming_it(tmp_path):
    raw = _repo_raw()
    raw["window"]["overlap_sec"] = 5
    with pytest.raises(ConfigError, match=r"unknown key 'window\.overlap_sec'"):
        load_params(_write(tmp_path, raw))


def test_unknown_nested_key_fails_naming_it(tmp_path):
    raw = _repo_raw()
    raw["synth"]["seizure"]["patinets"] = 3
    with pytest.raises(ConfigError, match=r"synth\.seizure\.patinets"):
        load_params(_write(tmp_path, raw))


def test_unknown_section_fails(tmp_path):
    raw = _repo_raw()
    raw["windows"] = {}
    with pytest.raises(ConfigError, match="unknown key 'windows'"):
        load_params(_write(tmp_path, raw))


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("window.length_s", "thirty", r"window\.length_s: expected a number"),
        ("folds.n_folds", 3.5, r"folds\.n_folds: expected an integer"),
        ("folds.n_folds", True, r"folds\.n_folds: expected an integer"),
        ("deidentify.audio", "yes", r"deidentify\.audio: "),
        ("aggregate.rule", "majority", r"aggregate\.rule: 'majority' is not one of"),
        ("base.runner", "spark", r"base\.runner: 'spark' is not one of"),
        ("base.dask_address", "localhost:8786", r"base\.dask_address must look like tcp://"),
        ("ingest.extensions", ".mp4", r"ingest\.extensions: expected a list"),
    ],
)
def test_wrong_type_fails_naming_the_key(tmp_path, dotted, value, message):
    with pytest.raises(ConfigError, match=message):
        load_params(REPO / "params.yaml", overrides={dotted: value})


def test_invalid_values_fail(tmp_path):
    with pytest.raises(ConfigError, match="overlap_s"):
        load_params(REPO / "params.yaml", overrides={"window.overlap_s": 30.0})
    with pytest.raises(ConfigError, match=r"deidentify\.gap_fill_s and deidentify\.gait_gap_fill_s"):
        load_params(REPO / "params.yaml", overrides={"deidentify.gait_gap_fill_s": -0.1})
    with pytest.raises(ConfigError, match=r"kinematics\.head_hold_s"):
        load_params(REPO / "params.yaml", overrides={"kinematics.head_hold_s": -0.1})


def test_a_moved_key_says_where_it_went(tmp_path):
    raw = _repo_raw()
    raw["kinematics"]["videos"] = "clips"
    with pytest.raises(ConfigError, match=r"unknown key 'kinematics\.videos'.*moved to ingest\.gait_inbox"):
        load_params(_write(tmp_path, raw))


def test_missing_section_fails_in_file_but_defaults_in_code(tmp_path):
    raw = _repo_raw()
    del raw["evaluate"]
    with pytest.raises(ConfigError, match="missing section 'evaluate'"):
        load_params(_write(tmp_path, raw))
    assert parse_params({}).evaluate.ci == 0.95


def test_overrides_apply_and_int_widens_to_float():
    p = load_params(REPO / "params.yaml", overrides={"window.overlap_s": 10})
    assert p.window.overlap_s == 10.0 and isinstance(p.window.overlap_s, float)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="no params file"):
        load_params(tmp_path / "nope.yaml")


def test_demo_params_keep_every_stage_and_only_shrink_sizes():
    import yaml

    from flows.demo_params import demo_params
    from tasks.params import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    demo = parse_params(demo_params(yaml.safe_load((REPO / "params.yaml").read_text())))
    full = parse_params(raw)
    assert demo.train.r2plus1d.size == "tiny" and full.train.r2plus1d.size == "full"
    assert demo.train.arms == full.train.arms and demo.query.arms == full.query.arms
    assert demo.window == full.window and demo.deidentify == full.deidentify
