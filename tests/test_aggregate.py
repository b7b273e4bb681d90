"""aggregate: any-yes, k-of-n, mean P(yes), evidence windows, and what is never a vote."""

from __future__ import annotations

import json

import pytest

from tasks.aggregate import aggregate, run
from tasks.errors import SemioflowError
from tasks.params import AggregateParams, Params
from tasks.answers import RANDOM_TAG
from tasks.schema import read_table, validate, write_table


def answer(rid, wi, status, *, fid="clonic", arm="raw", model="m1", p=None, just=None):
    present = {"yes": True, "no": False}.get(status)
    return dict(recording_id=rid, window_index=wi, feature_id=fid, arm=arm, model_id=model, backend="openai",
                prompt_version="v", status=status, present=present, yes_prob=p,
                justification=just if just is not None else f"{rid} w{wi} {status}", raw_text="t",
                finish_reason="stop", cache_key="k")


# Planted per recording: the windows' statuses and what each rule must decide.
COHORT = {
    "R1": ["no", "yes", "no", "yes"],  # two yes windows
    "R2": ["no", "no", "no"],  # never
    "R3": ["unparsed", "refused", "truncated", "yes"],  # one yes among non-votes
    "R4": ["unparsed", "refused", "skipped"],  # no vote at all
    "R5": ["yes"],  # single-window recording
}


def cohort_answers():
    return [answer(rid, wi, s) for rid, ss in COHORT.items() for wi, s in enumerate(ss)]


def by_rid(preds):
    return {p["recording_id"]: p for p in preds}


def test_any_yes_with_evidence_windows_and_justifications():
    preds, evidence, summary = aggregate(cohort_answers(), AggregateParams(rule="any_yes"))
    p = by_rid(preds)
    assert {r: p[r]["predicted"] for r in p} == {"R1": True, "R2": False, "R3": True, "R4": False, "R5": True}
    assert p["R1"]["evidence_windows"] == [1, 3] and p["R3"]["evidence_windows"] == [3]
    assert (p["R1"]["n_windows"], p["R1"]["n_yes"], p["R1"]["score"]) == (4, 2, 0.5)
    assert (p["R3"]["n_windows"], p["R3"]["n_yes"]) == (1, 1), "unparsed/refused/truncated are not votes"
    assert p["R4"]["n_windows"] == 0 and summary["undecided"] == 1
    ev = {(e["recording_id"], e["window_index"]): e["justification"] for e in evidence}
    assert ev == {("R1", 1): "R1 w1 yes", ("R1", 3): "R1 w3 yes", ("R3", 3): "R3 w3 yes", ("R5", 0): "R5 w0 yes"}


@pytest.mark.parametrize("k, expect", [(1, {"R1", "R3", "R5"}), (2, {"R1"}), (3, set())])
def test_k_of_n(k, expect):
    preds, _, _ = aggregate(cohort_answers(), AggregateParams(rule="k_of_n", k=k))
    assert {p["recording_id"] for p in preds if p["predicted"]} == expect


def test_mean_prob_uses_the_recorded_yes_probability():
    rows = [answer("A", 0, "no", p=0.2), answer("A", 1, "yes", p=0.9),  # mean 0.55
            answer("B", 0, "yes", p=0.6), answer("B", 1, "no", p=0.1), answer("B", 2, "no", p=0.2)]  # mean 0.3
    preds, _, _ = aggregate(rows, AggregateParams(rule="mean_prob", threshold=0.5))
    p = by_rid(preds)
    assert p["A"]["predicted"] and p["A"]["score"] == pytest.approx(0.55)
    assert not p["B"]["predicted"] and p["B"]["score"] == pytest.approx(0.3)
    with pytest.raises(SemioflowError, match="mean_prob needs P\\(yes\\)"):
        aggregate(cohort_answers(), AggregateParams(rule="mean_prob"))


def test_arms_features_and_models_are_kept_apart_and_no_model_rows_dropped():
    rows = [answer("A", 0, "yes", arm="raw"), answer("A", 0, "no", arm="face_crop"),
            answer("A", 0, "no", fid="tonic"), answer("A", 0, "no", model="m2"),
            answer("A", 0, "skipped", arm="audio_raw", fid="ictal_vocalization", model="none")]
    preds, _, summary = aggregate(rows, AggregateParams())
    got = {(p["feature_id"], p["arm"], p["model_id"]): p["predicted"] for p in preds}
    assert got == {("clonic", "raw", "m1"): True, ("clonic", "face_crop", "m1"): False,
                   ("tonic", "raw", "m1"): False, ("clonic", "raw", "m2"): False}
    assert "audio_raw" not in summary["arms"]


def test_stage_run_writes_tables_and_flags_random_weight_models(tmp_path):
    data = tmp_path / "data"
    rows = [answer("R1", 0, "yes", model="qwen2_5_vl:tiny@abc" + RANDOM_TAG)]
    write_table("answers", rows, data / "09_query" / "answers.parquet")
    out = data / "10_aggregate"
    summary = run(data, out, Params())
    preds = read_table("predictions", out / "predictions.parquet").to_pylist()
    assert preds[0]["predicted"] and preds[0]["rule"] == "any_yes"
    assert read_table("evidence", out / "evidence.parquet").num_rows == 1
    saved = json.loads((out / "aggregate.json").read_text())
    assert saved["random_weights"] and "not clinical" in saved["banner"] and summary == saved


def test_windows_without_media_are_not_votes_and_a_recording_without_any_is_not_assessable():
    """no_pose on every window: predicted null (not "no"), counted; some windows without media: decided over
    the others."""
    na = "not_assessable"
    answers = ([answer("R1", wi, na, arm="pose_overlay", just="no media: pose_overlay: no_pose") for wi in range(3)]
               + [answer("R2", 0, na, arm="pose_overlay"), answer("R2", 1, "yes", arm="pose_overlay"),
                  answer("R2", 2, na, arm="pose_overlay")]
               + [answer("R3", 0, na, arm="pose_overlay"), answer("R3", 1, "no", arm="pose_overlay")]
               + [answer("R1", wi, "no") for wi in range(3)])
    preds, evidence, summary = aggregate(answers, AggregateParams(rule="any_yes"))
    got = {(p["recording_id"], p["arm"]): p for p in preds}
    r1 = got[("R1", "pose_overlay")]
    assert r1["predicted"] is None and (r1["n_windows"], r1["n_yes"], r1["n_not_assessable"]) == (0, 0, 3)
    assert got[("R2", "pose_overlay")]["predicted"] is True and got[("R2", "pose_overlay")]["n_not_assessable"] == 2
    assert got[("R3", "pose_overlay")]["predicted"] is False and got[("R3", "pose_overlay")]["n_windows"] == 1
    assert got[("R1", "raw")]["predicted"] is False and got[("R1", "raw")]["n_not_assessable"] == 0
    assert summary["not_assessable"] == 1 and summary["undecided"] == 0
    assert summary["arms"]["pose_overlay"] == {"predictions": 3, "positive": 1, "not_assessable": 1}
    assert [(e["recording_id"], e["window_index"]) for e in evidence] == [("R2", 1)]
    assert validate("predictions", preds).column("predicted").null_count == 1  # the table takes a null
