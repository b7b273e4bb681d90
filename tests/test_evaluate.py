"""evaluate: metrics equal scikit-learn's, patient-level bootstrap behaves, planted arm outcomes are reported."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from tasks import evaluate
from tasks.catalog import load_catalog
from tasks.errors import SemioflowError
from tasks.params import EvaluateParams, Params
from tasks.schema import read_table, write_table

SK = {"accuracy": accuracy_score,
      "precision": lambda t, p: precision_score(t, p, zero_division=0),
      "recall": lambda t, p: recall_score(t, p, zero_division=0),
      "f1": lambda t, p: f1_score(t, p, zero_division=0)}


@pytest.mark.parametrize("seed", range(40))
def test_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 25))
    # skewed draws so that empty predictions / no positives (the zero-division cases) occur
    y = rng.random(n) < rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])
    p = rng.random(n) < rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])
    got = evaluate.scores(evaluate.confusion(y, p))
    for m, fn in SK.items():
        assert float(got[m]) == pytest.approx(fn(y, p)), m


def test_macro_f1_by_hand_and_the_catalog_picks_it_per_feature():
    """y = 1 1 0 0 0, p = 1 0 0 0 1: F1(yes) = 2/4 = 0.5, F1(no) = 4/6; macro = 7/12.  S³ scores verbal
    responsiveness by macro F1; the catalog says so and evaluate follows it."""
    y, p = np.array([1, 1, 0, 0, 0], bool), np.array([1, 0, 0, 0, 1], bool)
    counts = evaluate.confusion(y, p)
    assert float(evaluate.scores(counts)["f1"]) == pytest.approx(0.5)
    assert float(evaluate.scores(counts, "macro_f1")["f1"]) == pytest.approx(7 / 12)
    assert float(evaluate.scores(counts, "macro_f1")["precision"]) == pytest.approx(0.5)  # still that of yes
    from sklearn.metrics import f1_score

    for t, q in ((y, p), (np.ones(4, bool), np.ones(4, bool)), (np.zeros(3, bool), np.zeros(3, bool)),
                 (np.ones(3, bool), np.array([1, 0, 1], bool))):  # one class only: as scikit-learn's macro
        got = float(evaluate.scores(evaluate.confusion(t, q), "macro_f1")["f1"])
        assert got == pytest.approx(f1_score(t, q, average="macro", zero_division=0)), (t, q)
    assert CATALOG.by_id("verbal_responsiveness").metric == "macro_f1" and CATALOG.by_id("tonic").metric == "f1_yes"
    rids = [f"R{i:010x}" for i in range(5)]
    labels = [dict(recording_id=r, patient_id=f"P{i:010x}", feature_id=f, label=bool(y[i]))
              for i, r in enumerate(rids) for f in ("verbal_responsiveness", "tonic")]
    preds = [dict(recording_id=r, feature_id=f, arm="audio_raw" if f == "verbal_responsiveness" else "raw",
                  model_id="m", rule="x", predicted=bool(p[i]), score=0.5, n_windows=1, n_yes=0, evidence_windows=[],
                  n_not_assessable=0)
             for i, r in enumerate(rids) for f in ("verbal_responsiveness", "tonic")]
    evals, _ = evaluate.evaluate_all(labels, preds, n_boot=50, ci=0.95, seed=0)
    assert evals[("audio_raw", "verbal_responsiveness")].estimates["f1"].value == pytest.approx(7 / 12)
    assert evals[("raw", "tonic")].estimates["f1"].value == pytest.approx(0.5)


def _cohort(n_patients: int, per_patient: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(n_patients), per_patient)
    y = rng.random(patient.size) < 0.4
    p = np.where(rng.random(patient.size) < 0.75, y, ~y)
    return patient, y, p


def _ci(patient, y, p, n_patients, n_boot=2000, seed=1):
    w = evaluate.bootstrap_weights(n_patients, n_boot, seed)
    return evaluate.with_ci(evaluate.patient_counts(patient, y, p, n_patients), w, 0.95)


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_patients():
    widths = []
    for n in (10, 40, 160):
        est = _ci(*_cohort(n, 2), n)
        for m, e in est.items():
            assert e.low <= e.value <= e.high, (n, m)
        widths.append(est["f1"].high - est["f1"].low)
    print(f"\n[evaluate] F1 95% CI width with 10/40/160 patients: {[round(w, 3) for w in widths]}")
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.5 * widths[0]


def test_bootstrap_resamples_patients_not_recordings():
    """Copying every patient's recordings 5 times adds no information: a patient-level CI must not move."""
    patient, y, p = _cohort(30, 2)
    once = _ci(patient, y, p, 30)
    five = _ci(np.repeat(patient, 5), np.repeat(y, 5), np.repeat(p, 5), 30)
    for m in evaluate.METRICS:
        assert (five[m].value, five[m].low, five[m].high) == pytest.approx((once[m].value, once[m].low, once[m].high))
    # ...whereas treating the 300 copies as independent recordings would narrow it a lot
    flat = _ci(np.arange(300), np.repeat(y, 5), np.repeat(p, 5), 300)
    assert flat["f1"].high - flat["f1"].low < 0.7 * (five["f1"].high - five["f1"].low)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 0), (7, 2), (10, 10), (1, 12), (25, 13)])
def test_exact_mcnemar_equals_scipy_binomial_test(b, c):
    a = np.array([True] * b + [False] * c + [True] * 4 + [False] * 3)
    bb = np.array([False] * b + [True] * c + [True] * 4 + [False] * 3)
    only_a, only_b, p = evaluate.mcnemar_exact(a, bb)
    assert (only_a, only_b) == (b, c)
    assert p == pytest.approx(binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)


# ---- the stage on planted predictions ---------------------------------------------------------

CATALOG = load_catalog()
VIDEO = [f.id for f in CATALOG.features if f.modality == "video"]
ALL = list(CATALOG.ids)
MLLM_WINS = set(VIDEO[:5])  # raw MLLM perfect, every baseline misses: the MLLM arm wins on exactly these
ENHANCED_WINS = {"head_turning", "tonic", "clonic", "ictal_vocalization"}  # enhanced perfect, raw misses
PERFECT = 0  # miss_every: 0 = never wrong; k = wrong on every k-th recording


def _planted(tmp_path):
    """30 recordings of 10 patients; each arm is perfect or wrong on every k-th recording.

    An arm whose misses are a strict subset of another's has the higher F1,
    so the winners are known by construction: the MLLM beats the baselines on
    ``MLLM_WINS`` only (elsewhere a baseline is perfect and no MLLM arm is),
    enhancement beats raw on ``ENHANCED_WINS`` only (elsewhere raw misses
    every 4th, enhancement every 2nd, or raw is perfect).
    """
    rng = np.random.default_rng(4)
    rids = [f"R{i:010x}" for i in range(30)]
    patient = {r: f"P{i // 3:010x}" for i, r in enumerate(rids)}
    truth = {(r, f): bool(rng.random() < 0.5) for r in rids for f in ALL}
    labels = [dict(recording_id=r, patient_id=patient[r], feature_id=f, label=truth[(r, f)]) for r in rids
              for f in ALL]

    def rows(arm, miss_every: dict[str, int], model="m1"):
        return [dict(recording_id=r, feature_id=f, arm=arm, model_id=model, rule="x",
                     predicted=truth[(r, f)] != bool(k and i % k == 0), score=0.5, n_windows=1, n_yes=0,
                     evidence_windows=[], n_not_assessable=0)
                for f, k in miss_every.items() for i, r in enumerate(rids)]

    base = rows("r2plus1d", {f: 3 if f in MLLM_WINS else PERFECT for f in VIDEO}) + rows("vivit", {f: 2 for f in VIDEO})
    raw_miss = {f: PERFECT if f in MLLM_WINS else 5 if f in ENHANCED_WINS else 4 for f in ALL}
    enh_miss = {f: PERFECT if f in ENHANCED_WINS else 2 for f in ALL}
    arm_for = {"face_crop": "face_crop", "pose_overlay": "pose_overlay", "denoise_transcript": "audio_denoised"}
    raw_for = {"video": "raw", "audio": "audio_raw"}
    mllm = []
    for f in CATALOG.features:
        mllm += rows(raw_for[f.modality], {f.id: raw_miss[f.id]}) + rows(arm_for[f.enhancement], {f.id: enh_miss[f.id]})
    data = tmp_path / "data"
    write_table("recording_labels", labels, data / "11_folds" / "labels.parquet")
    write_table("predictions", base, data / "12_train" / "predictions.parquet")
    write_table("predictions", mllm, data / "10_aggregate" / "predictions.parquet")
    return data, truth


def test_stage_reports_planted_outcomes_in_the_studys_layout(tmp_path):
    data, truth = _planted(tmp_path)
    params = Params(evaluate=EvaluateParams(bootstrap=300))
    out = data / "13_evaluate"
    summary = evaluate.run(data, out, params)

    metrics = read_table("metrics", out / "metrics.parquet").to_pylist()
    f1 = {(m["arm"], m["feature_id"]): m["value"] for m in metrics if m["metric"] == "f1"}
    for f in ALL:
        pos = sum(truth[(r, g)] for r, g in truth if g == f)
        yes = 2 * pos / (30 + pos)  # precision = prevalence, recall 1
        # a macro-F1 feature (verbal responsiveness) adds the F1 of "no": 0 when every answer is yes
        assert f1[("always_yes", f)] == pytest.approx(yes / 2 if CATALOG.by_id(f).metric == "macro_f1" else yes)
    assert summary["mllm_beats_baseline"] == len(MLLM_WINS) and summary["mllm_vs_baseline_features"] == 18
    assert summary["enhancement_improves"] == len(ENHANCED_WINS) and summary["enhancement_features"] == 20
    assert len(metrics) == 4 * (2 * 18 + 20 + 20 + 20)  # baselines, raw/audio_raw, enhanced, always_yes

    doc = json.loads((out / "metrics.json").read_text())
    line = doc["summary"]["line"]
    assert line == "best MLLM arm beats best baseline on 5/18 features; enhancement improves 4/20"
    assert doc["r2plus1d"]["clonic"]["f1"] == pytest.approx(f1[("r2plus1d", "clonic")])
    assert {"f1_ci_low", "f1_ci_high", "accuracy", "precision", "recall", "n"} <= set(doc["vivit"]["tonic"])
    assert "ictal_vocalization" not in doc["r2plus1d"]  # baselines cover the video features only
    pair = doc["paired"]["enhanced_vs_raw"]["clonic"]
    assert pair["a"] == "pose_overlay" and pair["b"] == "raw" and pair["delta_f1"] > 0
    assert pair["only_b_correct"] == 0 and pair["only_a_correct"] == 6  # raw misses every 5th of 30
    assert pair["mcnemar_p"] == pytest.approx(binomtest(6, 6, 0.5).pvalue)

    with open(out / "plots" / "f1.csv", newline="") as fh:
        plot = list(csv.DictReader(fh))
    assert {r["arm"] for r in plot} == {"r2plus1d", "vivit", "raw", "face_crop", "pose_overlay", "audio_raw",
                                         "audio_denoised", "always_yes"}
    assert all(float(r["ci_low"]) <= float(r["f1"]) <= float(r["ci_high"]) for r in plot)
    assert {p.stem for p in (out / "plots" / "arms").iterdir()} == {r["arm"] for r in plot}

    md = (out / "tables.md").read_text()
    assert line in md
    sections = md.split("## ")
    tables = {s.split("\n")[0]: s for s in sections}
    assert list(tables)[1:4] == ["Table II: Facial features", "Table III: Limb & body features",
                                 "Table IV: Audio features"]
    for title, group in zip(list(tables)[1:4], ("facial", "limb_body", "audio")):
        body = [ln for ln in tables[title].splitlines() if ln.startswith("| ")]
        header, rows = body[0], body[1:]
        assert [r.split(" | ")[0][2:] for r in rows] == [f.name for f in CATALOG.in_group(group)]
        assert all(f"{arm} {m}" in header for arm in (["R(2+1)D", "ViViT"] if group != "audio" else ["MLLM raw audio"])
                   for m in ("Acc", "Prec", "Rec", "F1"))
    assert "R(2+1)D" not in tables["Table IV: Audio features"]
    clonic_row = next(r for r in tables["Table III: Limb & body features"].splitlines() if r.startswith("| Clonic"))
    assert "**1.00 (1.00–1.00)**" in clonic_row  # the perfect pose-overlay arm is the row's best


def test_several_models_on_one_arm_are_kept_apart_and_baselines_are_required(tmp_path):
    data, _ = _planted(tmp_path)
    extra = read_table("predictions", data / "10_aggregate" / "predictions.parquet").to_pylist()
    extra += [dict(r, model_id="m2", predicted=True) for r in extra if r["arm"] == "raw"]
    write_table("predictions", extra, data / "10_aggregate" / "predictions.parquet")
    evaluate.run(data, data / "13_evaluate", Params(evaluate=EvaluateParams(bootstrap=50)))
    doc = json.loads((data / "13_evaluate" / "metrics.json").read_text())
    assert {"raw@m1", "raw@m2"} <= set(doc) and "raw" not in doc
    assert doc["raw@m2"]["tonic"]["recall"] == 1.0
    (data / "12_train" / "predictions.parquet").unlink()
    with pytest.raises(SemioflowError, match="12_train/predictions.parquet"):
        evaluate.run(data, data / "13_evaluate", Params())


# ---- onset timing (S3 Task 4) ------------------------------------------------------------------------------------
def test_onset_estimate_by_hand():
    from tasks.onset import estimate

    w = {0: (0.0, 30.0), 1: (25.0, 55.0), 2: (50.0, 80.0)}
    assert estimate([1, 2], w) == pytest.approx((30.0 + 55.0) / 2)  # window 0 said no: onset in [30, 55]
    assert estimate([0, 1], w) == pytest.approx(15.0)  # the first window: [0, 30]
    assert estimate([], w) is None


def test_onset_mae_beats_the_constant_baseline_on_planted_onsets(tmp_path):
    """Planted onsets, windows of 30 s every 25 s, an arm whose yes windows are those that overlap the feature
    (what a perfect window-level model says): its MAE is bounded by half a window's new span and beats the
    leave-one-patient-out median onset; both come with a CI."""
    rng = np.random.default_rng(5)
    data = tmp_path / "data"
    rids = [f"R{i:010x}" for i in range(24)]
    patient = {r: f"P{i // 2:010x}" for i, r in enumerate(rids)}
    onset_of = {r: float(rng.uniform(5, 170)) for r in rids}
    windows, preds, labels, onsets = [], [], [], []
    for r in rids:
        spans = [(k * 25.0, k * 25.0 + 30.0) for k in range(8)]  # 0..205 s
        windows += [dict(recording_id=r, window_index=k, t_start_s=a, t_end_s=b, frame_start=k * 50,
                         frame_end=k * 50 + 60) for k, (a, b) in enumerate(spans)]
        t0 = onset_of[r]
        yes = [k for k, (a, b) in enumerate(spans) if a < t0 + 10 and b > t0]
        for arm in ("raw", "pose_overlay"):
            preds.append(dict(recording_id=r, feature_id="clonic", arm=arm, model_id="m", rule="any_yes", predicted=True,
                              score=1.0, n_windows=8, n_yes=len(yes), evidence_windows=yes, n_not_assessable=0))
        labels.append(dict(recording_id=r, patient_id=patient[r], feature_id="clonic", label=True))
        onsets.append(dict(recording_id=r, feature_id="clonic", onset_s=t0, offset_s=t0 + 10))
    write_table("recording_labels", labels, data / "11_folds" / "labels.parquet")
    write_table("onsets", onsets, data / "11_folds" / "onsets.parquet")
    write_table("windows", windows, data / "04_window" / "windows.parquet")
    write_table("predictions", [dict(p, arm="r2plus1d") for p in preds[::2]], data / "12_train" / "predictions.parquet")
    write_table("predictions", preds, data / "10_aggregate" / "predictions.parquet")
    evaluate.run(data, data / "13_evaluate", Params())
    doc = json.loads((data / "13_evaluate" / "metrics.json").read_text())
    assert set(doc["onset"]) == {"raw", "pose_overlay"}  # the baselines have no windows: no onset
    o = doc["onset"]["raw"]
    assert o["n"] == 24 and o["mae"] <= 12.5 and o["mae"] < o["baseline_mae"], o
    assert o["ci_low"] <= o["mae"] <= o["ci_high"] and o["baseline_ci_low"] <= o["baseline_mae"] <= o["baseline_ci_high"]
    # by hand: the first yes window k spans [25k, 25k + 30]; window k - 1 ended at 25k + 5, so the onset lies in
    # [25k + 5, 25k + 30] (k = 0: [0, 30]) and the estimate is that interval's middle
    def by_hand(t0: float) -> float:
        k = min(k for k in range(8) if k * 25.0 < t0 + 10 and k * 25.0 + 30 > t0)
        lo = k * 25.0 + 5 if k else 0.0
        return abs((lo + k * 25.0 + 30) / 2 - t0)
    assert o["mae"] == pytest.approx(np.mean([by_hand(onset_of[r]) for r in rids]))
    assert "## Onset timing (S³ Task 4)" in (data / "13_evaluate" / "tables.md").read_text()


def test_es_nes_from_the_feature_vector_beats_the_majority_baseline(tmp_path):
    """Patients are ES or NES; ES recordings show tonic/clonic, NES ones closed eyes/pelvic thrusting (each with
    some noise).  The forest on the labels recovers the diagnosis across patient-grouped folds far above the
    majority baseline, and names those signs as the most important; noisier model answers score lower."""
    rng = np.random.default_rng(11)
    data = tmp_path / "data"
    rids = [f"R{i:010x}" for i in range(36)]
    patient = {r: f"P{i // 3:010x}" for i, r in enumerate(rids)}
    es = {r: int(patient[r][1:], 16) % 3 != 0 for r in rids}  # 8 ES patients, 4 NES
    signs = {"tonic": True, "clonic": True, "closed_eyes": False, "pelvic_thrusting": False}
    labels, preds, dx, folds_rows = [], [], [], []
    for r in rids:
        for f in ALL:
            lab = bool(rng.random() < (0.85 if signs[f] == es[r] else 0.1)) if f in signs else bool(rng.random() < 0.3)
            labels.append(dict(recording_id=r, patient_id=patient[r], feature_id=f, label=lab))
            said = lab if rng.random() < 0.8 else not lab
            arm = "raw" if CATALOG.by_id(f).modality == "video" else "audio_raw"
            preds.append(dict(recording_id=r, feature_id=f, arm=arm, model_id="m", rule="any_yes", predicted=said,
                              score=float(said), n_windows=2, n_yes=int(said), evidence_windows=[], n_not_assessable=0))
        dx.append(dict(recording_id=r, patient_id=patient[r], diagnosis="ES" if es[r] else "NES"))
        folds_rows.append(dict(recording_id=r, patient_id=patient[r], fold=int(patient[r][1:], 16) // 4))
    write_table("recording_labels", labels, data / "11_folds" / "labels.parquet")
    write_table("recording_diagnoses", dx, data / "11_folds" / "diagnoses.parquet")
    write_table("folds", folds_rows, data / "11_folds" / "folds.parquet")
    write_table("predictions", [dict(p, arm="r2plus1d") for p in preds if p["arm"] == "raw"],
                data / "12_train" / "predictions.parquet")
    write_table("predictions", preds, data / "10_aggregate" / "predictions.parquet")
    evaluate.run(data, data / "13_evaluate", Params())
    d = json.loads((data / "13_evaluate" / "metrics.json").read_text())["diagnosis"]
    assert set(d) == {"labels", "mllm_raw"}  # no enhanced-arm answers here
    lab, raw = d["labels"], d["mllm_raw"]
    assert (lab["n"], lab["es"]) == (36, 24)
    assert lab["f1"] > 0.9 and lab["baseline_f1"] == pytest.approx(0.8)  # majority = ES everywhere: P = 2/3, R = 1
    assert lab["ci_low"] <= lab["f1"] <= lab["ci_high"]
    assert {f for f, _ in lab["importances"][:4]} == set(signs), lab["importances"]
    assert raw["f1"] < lab["f1"]
    rows = read_table("diagnosis_predictions", data / "13_evaluate" / "diagnosis.parquet").to_pylist()
    assert len(rows) == 2 * 36 and {r["source"] for r in rows} == {"labels", "mllm_raw"}
    assert all(0 <= r["p_es"] <= 1 and (r["predicted"] == "ES") == (r["p_es"] > 0.5) for r in rows if r["p_es"] != 0.5)
    assert "## ES vs NES diagnosis (S³ Task 7)" in (data / "13_evaluate" / "tables.md").read_text()


def test_justification_agreement_is_rouge_l_against_the_annotator(tmp_path):
    from tasks.rouge import rouge_l

    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(0.75)  # Lin (2004)
    assert rouge_l("", "x") == 0.0 and rouge_l("Left arm, jerking!", "left ARM jerking") == 1.0
    data = tmp_path / "data"
    rids = [f"R{i:010x}" for i in range(4)]
    labels = [dict(recording_id=r, patient_id=f"P{i:010x}", feature_id="clonic", label=True) for i, r in enumerate(rids)]
    preds = [dict(recording_id=r, feature_id="clonic", arm="raw", model_id="m", rule="any_yes", predicted=True, score=1.0,
                  n_windows=2, n_yes=2, evidence_windows=[0, 1], n_not_assessable=0) for r in rids]
    said = {rids[0]: ["rhythmic jerking", "of the left arm"], rids[1]: ["the patient is still"],
            rids[2]: ["left arm jerks"], rids[3]: []}
    why = "rhythmic jerking of the left arm"
    write_table("recording_labels", labels, data / "11_folds" / "labels.parquet")
    write_table("label_justifications", [dict(recording_id=r, feature_id="clonic", justification=why) for r in rids],
                data / "11_folds" / "private" / "justifications.parquet")
    write_table("evidence", [dict(recording_id=r, feature_id="clonic", arm="raw", model_id="m", window_index=k,
                                  yes_prob=None, justification=w) for r in rids for k, w in enumerate(said[r])],
                data / "10_aggregate" / "evidence.parquet")
    write_table("predictions", [dict(p, arm="r2plus1d") for p in preds], data / "12_train" / "predictions.parquet")
    write_table("predictions", preds, data / "10_aggregate" / "predictions.parquet")
    evaluate.run(data, data / "13_evaluate", Params())
    a = json.loads((data / "13_evaluate" / "metrics.json").read_text())["justification_rouge_l"]
    expected = [rouge_l(" ".join(said[r]), why) for r in rids[:3]]  # the fourth said nothing
    assert expected[0] == 1.0 and set(a) == {"raw"} and a["raw"]["n"] == 3
    assert a["raw"]["rouge_l"] == pytest.approx(np.mean(expected))
    assert "## Justification agreement (S³ Task 2, lexical)" in (data / "13_evaluate" / "tables.md").read_text()
    assert "Not assessable" not in (data / "13_evaluate" / "tables.md").read_text()  # folds counted none
    (data / "11_folds" / "folds.json").write_text(json.dumps({"not_assessable": {"clonic": 2, "tonic": 0}}))
    evaluate.run(data, data / "13_evaluate", Params())
    assert "excluded from every score above (recordings): Clonic 2." in (data / "13_evaluate" / "tables.md").read_text()


def test_es_nes_vectors_combine_the_video_and_audio_models_and_split_rivals_on_one_arm():
    """Video features are answered by one model and audio ones by another: one raw vector holds both.  Two models
    on the raw video arm: one vector each, the audio model's answers in both."""
    from tasks.evaluate import _diagnosis  # noqa: PLC2701 - the vector assembly is the unit under test
    import tempfile

    rids = [f"R{i:010x}" for i in range(12)]
    patient = {r: f"P{i // 2:010x}" for i, r in enumerate(rids)}
    es = {r: i % 3 != 0 for i, r in enumerate(rids)}
    preds = []
    for r in rids:
        for f in CATALOG.features:
            arm = "raw" if f.modality == "video" else "audio_raw"
            for model in (("vlm-a", "vlm-b") if arm == "raw" else ("alm",)):
                preds.append(dict(recording_id=r, feature_id=f.id, arm=arm, model_id=model, rule="any_yes",
                                  predicted=es[r] == (f.id in ("tonic", "clonic")), score=0.0, n_windows=1, n_yes=0,
                                  evidence_windows=[], n_not_assessable=0))
    labels = [dict(recording_id=r, patient_id=patient[r], feature_id="tonic", label=es[r]) for r in rids]
    with tempfile.TemporaryDirectory() as d:
        data = Path(d)
        write_table("recording_diagnoses", [dict(recording_id=r, patient_id=patient[r], diagnosis="ES" if es[r] else "NES")
                                            for r in rids], data / "11_folds" / "diagnoses.parquet")
        write_table("folds", [dict(recording_id=r, patient_id=patient[r], fold=int(patient[r][1:], 16) % 3) for r in rids],
                    data / "11_folds" / "folds.parquet")
        rs = evaluate.Resampling(sorted(set(patient.values())), patient, evaluate.bootstrap_weights(6, 50, 0), 0.95)
        out = _diagnosis(data, labels, preds, rs, CATALOG, seed=0, out=data / "dx.parquet")
        assert set(out) == {"labels", "mllm_raw@vlm-a", "mllm_raw@vlm-b"}
        one = [p for p in preds if p["model_id"] != "vlm-b"]  # one model per arm: one combined vector
        out = _diagnosis(data, labels, one, rs, CATALOG, seed=0, out=data / "dx.parquet")
        assert set(out) == {"labels", "mllm_raw"}
        rows = read_table("diagnosis_predictions", data / "dx.parquet").to_pylist()
        assert {r["source"] for r in rows} == {"labels", "mllm_raw"}


def test_a_recording_pose_failed_on_is_not_assessable_left_out_of_the_metrics_and_counted(tmp_path):
    """Six recordings of three patients, clonic present in all; the pose overlay answers yes wherever it has
    media, but pose failed on R0 (no_pose on every window).  Read as "no", R0 would be a false negative
    (recall 5/6, n 6); not assessable, the arm is scored on the other five (recall 1, n 5) and R0 counted."""
    from tasks.aggregate import aggregate
    from tasks.params import AggregateParams

    rids = [f"R{i:010x}" for i in range(6)]
    labels = [dict(recording_id=r, patient_id=f"P{i // 2}", feature_id="clonic", label=True)
              for i, r in enumerate(rids)]
    answers = []
    for r in rids:
        for wi in range(3):
            status = "not_assessable" if r == rids[0] else ("yes" if wi == 1 else "no")
            for arm in ("raw", "pose_overlay"):
                s = status if arm == "pose_overlay" else "yes"
                answers.append(dict(recording_id=r, window_index=wi, feature_id="clonic", arm=arm, model_id="m",
                                    backend="openai", prompt_version="v", status=s,
                                    present={"yes": True, "no": False}.get(s), yes_prob=None,
                                    justification="no media: pose_overlay: no_pose" if s == "not_assessable" else "j",
                                    raw_text=None, finish_reason=None, cache_key=""))
    preds, _, _ = aggregate(answers, AggregateParams())
    blind = [p for p in preds if p["predicted"] is None]
    assert [(p["recording_id"], p["arm"], p["n_not_assessable"]) for p in blind] == [(rids[0], "pose_overlay", 3)]
    data = tmp_path / "data"
    write_table("recording_labels", labels, data / "11_folds" / "labels.parquet")
    write_table("predictions", [dict(p, arm="r2plus1d") for p in preds if p["arm"] == "raw"],
                data / "12_train" / "predictions.parquet")
    write_table("predictions", preds, data / "10_aggregate" / "predictions.parquet")
    out = data / "13_evaluate"
    evaluate.run(data, out, Params(evaluate=EvaluateParams(bootstrap=50)))
    rows = {(r["arm"], r["metric"]): r for r in read_table("metrics", out / "metrics.parquet").to_pylist()
            if r["feature_id"] == "clonic"}
    pose, raw = rows[("pose_overlay", "recall")], rows[("raw", "recall")]
    assert (pose["value"], pose["n"], pose["n_not_assessable"]) == (1.0, 5, 1)
    assert (raw["value"], raw["n"], raw["n_not_assessable"]) == (1.0, 6, 0)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["pose_overlay"]["clonic"]["n"] == 5 and doc["pose_overlay"]["clonic"]["n_not_assessable"] == 1
    assert doc["not_assessable"] == {"pose_overlay": {"clonic": 1}}
    tables = (out / "tables.md").read_text()
    assert "## Not assessable (no media)" in tables and "- MLLM + pose overlay: Clonic 1" in tables
