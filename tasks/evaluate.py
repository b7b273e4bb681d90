"""evaluate: every arm against the reference labels, with patient-level bootstrap CIs and paired tests.

Inputs (``data_dir``): ``11_folds/labels.parquet`` (table
``recording_labels``), ``12_train/predictions.parquet`` (baselines:
``r2plus1d``, ``vivit``) and, when present, ``10_aggregate/predictions.parquet``
(MLLM arms: ``raw``, ``face_crop``, ``pose_overlay``, ``audio_raw``,
``audio_denoised``, ``audio_transcript``).  An arm answered by several models
is evaluated per model as ``<arm>@<model_id>``.  ``always_yes`` (every
recording positive) is added as a reference.

Per arm x feature, on the recordings that have both a label and a
prediction (a *not assessable* prediction, ``predicted`` null: no window had
media, is left out of every metric and counted as ``n_not_assessable``):
accuracy, precision, recall, F1 (scikit-learn's definitions,
``zero_division=0``; a feature whose catalog ``metric`` is ``macro_f1``, verbal
responsiveness as S³ scores it, has the mean F1 of yes and of no as its F1) with a percentile CI from a patient-level bootstrap:
patients are drawn with replacement and bring all their recordings, so
recordings of one patient never count as independent.  Every arm uses the
same resamples (seeded by ``base.seed``), which makes differences paired.

Comparisons (descriptive: the "best" arm is chosen on the same data):

* best MLLM arm vs best baseline (by F1) on each of the 18 video features;
* best enhanced arm (the feature's catalog enhancement: face crop, pose
  overlay, denoise/transcript) vs the raw arm on each of the 20 features;

each with an exact McNemar test on per-recording correctness, the paired
bootstrap CI of the F1 difference, and an exact sign test over features.

Outputs (``out_dir`` = ``data_dir/13_evaluate``):

* ``metrics.parquet`` (table ``metrics``: arm, feature_id, metric, value,
  ci_low, ci_high, n, n_not_assessable);
* ``metrics.json`` (DVC metrics): ``{arm: {feature: {accuracy, precision,
  recall, f1, f1_ci_low, f1_ci_high, n, n_not_assessable}}, "summary": {...},
  "paired": {...}, "not_assessable": {arm: {feature: n}}}``;
* ``plots/f1.csv`` (arm, feature, f1, ci_low, ci_high) and
  ``plots/arms/<arm>.csv`` (feature, f1, ci_low, ci_high): DVC plots, e.g.
  ``x: f1, y: feature, template: bar_horizontal`` on the ``plots/arms`` folder
  gives one bar chart per arm;
* ``tables.md``: Tables II-IV in the study's layout (rows = features of one
  group, columns = arms x Acc/Prec/Rec/F1), the summary line and the paired tests.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks import diagnosis, layout, onset, rouge
from tasks.contract import Out, Stage
from tasks.layout import rel
from tasks.answers import is_random
from tasks.arms import (ARM_NAMES, ARM_ORDER, BASELINE_ARMS, COMPARISONS, ENHANCED_ARMS,  # noqa: F401 (API)
                        RAW_ARM, REFERENCE_ARM, binomial_two_sided, verdict)
from tasks.arms import display as _display, order as _order, sort_arms as _arms_sorted
from tasks.atomic import atomic_write_text
from tasks.catalog import Catalog, load_catalog
from tasks.metrics import confusion, scores  # noqa: F401 (confusion: part of this stage's API)
from tasks.errors import SemioflowError
from tasks.params import Params
from tasks.schema import read_table, write_table

METRICS = ("accuracy", "precision", "recall", "f1")
SHORT = {"accuracy": "Acc", "precision": "Prec", "recall": "Rec", "f1": "F1"}
TABLE_NUMBERS = {"facial": "II", "limb_body": "III", "audio": "IV"}
DIGITS = 2  # decimals in tables.md
ALPHA = 0.05  # significance level for counting per-feature McNemar results (descriptive)


# ---- metrics -----------------------------------------------------------------------


def bootstrap_weights(n_patients: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n_patients)`` multiplicities: each row draws ``n_patients`` patients with replacement."""
    if n_patients == 0:
        return np.zeros((n_boot, 0), np.int64)
    rng = np.random.default_rng([seed, 13])
    return rng.multinomial(n_patients, np.full(n_patients, 1 / n_patients), size=n_boot)


def patient_counts(patient: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_patients: int) -> np.ndarray:
    """``(n_patients, 4)`` confusion counts per patient (``patient`` = index per recording)."""
    t, p = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    cells = np.stack([t & p, ~t & p, t & ~p, ~t & ~p], axis=1).astype(np.int64)
    out = np.zeros((n_patients, 4), np.int64)
    np.add.at(out, np.asarray(patient, np.int64), cells)
    return out


@dataclass(frozen=True)
class Estimate:
    """A metric with its bootstrap percentile CI."""

    value: float
    low: float
    high: float


def with_ci(per_patient: np.ndarray, weights: np.ndarray, ci: float, metric: str = "f1_yes") -> dict[str, Estimate]:
    """Point estimates and percentile CIs of every metric from per-patient counts and bootstrap weights."""
    point = scores(per_patient.sum(0), metric)
    boot = scores(weights @ per_patient, metric)  # (B, 4) counts per resample
    q = ((1 - ci) / 2, 1 - (1 - ci) / 2)
    return {m: Estimate(float(point[m]), *(float(x) for x in np.quantile(boot[m], q))) for m in METRICS}


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """(b, c, p): recordings only A got right, only B got right, exact two-sided McNemar p."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return only_a, only_b, binomial_two_sided(only_a, only_a + only_b)


# ---- the cohort of predictions -----------------------------------------------------


@dataclass(frozen=True)
class Evaluated:
    """One arm x feature: the recordings evaluated, their labels and predictions, the metrics."""

    arm: str
    base_arm: str
    feature_id: str
    recordings: tuple[str, ...]
    truth: dict[str, bool]  # recording -> label
    predicted: dict[str, bool]  # recording -> prediction
    estimates: dict[str, Estimate]
    metric: str = "f1_yes"  # the feature's catalog metric: what "f1" means here
    not_assessable: int = 0  # labelled recordings the arm could not assess (no media): not in ``recordings``

    def correct(self, rid: str) -> bool:
        return self.truth[rid] == self.predicted[rid]


def _arm_names(preds: list[dict]) -> dict[tuple[str, str], str]:
    models: dict[str, set[str]] = defaultdict(set)
    for p in preds:
        models[p["arm"]].add(p["model_id"])
    return {(arm, m): arm if len(ms) == 1 else f"{arm}@{m}" for arm, ms in models.items() for m in ms}


@dataclass(frozen=True)
class Resampling:
    """The patient-level bootstrap shared by every arm (so arm differences are paired)."""

    patients: list[str]  # index order of the weights' columns
    patient_of: dict[str, str]  # recording -> patient
    weights: np.ndarray  # (n_boot, n_patients) multiplicities
    ci: float

    def counts(self, rids: list[str] | tuple[str, ...], truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
        at = {p: i for i, p in enumerate(self.patients)}
        return patient_counts(np.array([at[self.patient_of[r]] for r in rids], np.int64), truth, pred,
                              len(self.patients))


def not_assessable(labels: list[dict], preds: list[dict]) -> dict[tuple[str, str], int]:
    """(arm name, feature) -> labelled recordings whose prediction is not assessable (``predicted`` null)."""
    labelled = {(r["recording_id"], r["feature_id"]) for r in labels}
    names = _arm_names(preds)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for p in preds:
        if p["predicted"] is None and (p["recording_id"], p["feature_id"]) in labelled:
            counts[(names[(p["arm"], p["model_id"])], p["feature_id"])] += 1
    return dict(counts)


def evaluate_all(labels: list[dict], preds: list[dict], *, n_boot: int, ci: float, seed: int,
                 catalog: Catalog | None = None) -> tuple[dict[tuple[str, str], Evaluated], Resampling]:
    """Every (arm, feature) with at least one labelled prediction, plus the ``always_yes`` reference.

    Each feature is scored by its catalog metric (``Feature.metric``).  Returns the evaluations keyed by
    (arm, feature_id) and the shared resampling.
    """
    catalog = catalog or load_catalog()
    truth = {(r["recording_id"], r["feature_id"]): bool(r["label"]) for r in labels}
    patient_of = {r["recording_id"]: r["patient_id"] for r in labels}
    patients = sorted(set(patient_of.values()))
    rs = Resampling(patients, patient_of, bootstrap_weights(len(patients), n_boot, seed), ci)
    names = _arm_names(preds)
    decided: dict[tuple[str, str], dict[str, bool]] = defaultdict(dict)
    base: dict[str, str] = {}
    for p in preds:
        arm = names[(p["arm"], p["model_id"])]
        base[arm] = p["arm"]
        cell = decided[(arm, p["feature_id"])]
        if p["recording_id"] in cell:
            raise SemioflowError(f"two predictions of arm {arm} for one recording x feature ({p['feature_id']})")
        if p["predicted"] is None:  # not assessable: in no metric (counted by ``not_assessable``)
            continue
        cell[p["recording_id"]] = bool(p["predicted"])
    for rid, fid in truth:
        decided[(REFERENCE_ARM, fid)][rid] = True
    base[REFERENCE_ARM] = REFERENCE_ARM
    blind = not_assessable(labels, preds)
    out = {}
    for (arm, fid), cell in decided.items():
        rids = tuple(sorted(r for r in cell if (r, fid) in truth))
        if not rids:
            continue
        y = np.array([truth[(r, fid)] for r in rids])
        yhat = np.array([cell[r] for r in rids])
        metric = catalog.by_id(fid).metric
        out[(arm, fid)] = Evaluated(arm, base[arm], fid, rids, {r: truth[(r, fid)] for r in rids},
                                    {r: cell[r] for r in rids},
                                    with_ci(rs.counts(rids, y, yhat), rs.weights, ci, metric), metric,
                                    blind.get((arm, fid), 0))
    return out, rs


# ---- comparisons --------------------------------------------------------------------


def paired(a: Evaluated, b: Evaluated, rs: Resampling) -> dict:
    """A vs B on the recordings both decided: McNemar and the paired bootstrap CI of F1(A) - F1(B)."""
    common = sorted(set(a.recordings) & set(b.recordings))
    only_a, only_b, p = mcnemar_exact(np.array([a.correct(r) for r in common], bool),
                                      np.array([b.correct(r) for r in common], bool))
    truth = np.array([a.truth[r] for r in common], bool)
    ca = rs.counts(common, truth, np.array([a.predicted[r] for r in common], bool))
    cb = rs.counts(common, truth, np.array([b.predicted[r] for r in common], bool))
    delta = scores(ca.sum(0), a.metric)["f1"] - scores(cb.sum(0), a.metric)["f1"]
    boot = scores(rs.weights @ ca, a.metric)["f1"] - scores(rs.weights @ cb, a.metric)["f1"]
    q = ((1 - rs.ci) / 2, 1 - (1 - rs.ci) / 2)
    lo, hi = np.quantile(boot, q)
    return {"a": a.arm, "b": b.arm, "f1_a": a.estimates["f1"].value, "f1_b": b.estimates["f1"].value,
            "n": len(common), "only_a_correct": only_a, "only_b_correct": only_b, "mcnemar_p": p,
            "delta_f1": float(delta), "delta_f1_ci_low": float(lo), "delta_f1_ci_high": float(hi)}


def compare(evals: dict[tuple[str, str], Evaluated], catalog: Catalog, rs: Resampling) -> tuple[dict, dict]:
    """(summary, paired tests): best MLLM vs best baseline (video features), enhanced vs raw (all features).

    Which arms meet and the win/loss counts come from ``tasks.arms.verdict`` on the F1 values (the report
    says the same verdict from ``metrics.parquet``); the paired tests are added here."""
    v = verdict({k: e.estimates["f1"].value for k, e in evals.items()}, catalog)
    tests = {key: {fid: paired(evals[(a, fid)], evals[(b, fid)], rs) for fid, (a, b) in v[key]["pairs"].items()}
             for key in COMPARISONS}
    summary = {key: {**{k: x for k, x in v[key].items() if k != "pairs"},
                     "mcnemar_significant": sum(t["mcnemar_p"] < ALPHA for t in tests[key].values())}
               for key in COMPARISONS}
    summary["line"] = v["line"]
    return summary, tests


# ---- outputs ------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.{DIGITS}f}"


def markdown(evals: dict[tuple[str, str], Evaluated], catalog: Catalog, summary: dict, tests: dict, *,
             ci: float, n_boot: int, banner: str) -> str:
    """Tables II-IV (features x arms x Acc/Prec/Rec/F1), the summary line and the paired tests."""
    lines = ["# Evaluation", ""]
    if banner:
        lines += [f"**{banner}**", ""]
    macro = [f.name for f in catalog.features if f.metric == "macro_f1"]
    lines += [f"Recording-level results per feature; F1 with its {ci:.0%} patient-level bootstrap CI "
              f"({n_boot} resamples). Best F1 per row in bold (reference excluded)."
              + (f" F1 of {', '.join(macro)} is the macro F1 (mean of the F1 of yes and of no), as S³ "
                 "scores it." if macro else ""), "",
              f"**{summary['line']}**", ""]
    for group, number in TABLE_NUMBERS.items():
        feats = catalog.in_group(group)
        arms = _arms_sorted(a for (a, f) in evals if any(f == x.id for x in feats))
        title = catalog.group_names.get(group, group)
        lines += [f"## Table {number}: {title} features", ""]
        if not arms:
            lines += ["(no predictions)", ""]
            continue
        head = ["Feature"] + [f"{_display(a)} {SHORT[m]}" for a in arms for m in METRICS]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for f in feats:
            real = [evals[(a, f.id)].estimates["f1"].value for a in arms
                    if (a, f.id) in evals and evals[(a, f.id)].base_arm != REFERENCE_ARM]
            top = max(real, default=None)
            cells = [f.name]
            for a in arms:
                e = evals.get((a, f.id))
                if e is None:
                    cells += ["–"] * len(METRICS)
                    continue
                for m in METRICS:
                    est = e.estimates[m]
                    cell = _fmt(est.value)
                    if m == "f1":
                        cell = f"{cell} ({_fmt(est.low)}–{_fmt(est.high)})"
                        if e.base_arm != REFERENCE_ARM and top is not None and est.value == top:
                            cell = f"**{cell}**"
                    cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for key, title in (("mllm_vs_baseline", "Best MLLM arm vs best baseline"),
                       ("enhanced_vs_raw", "Enhanced vs raw MLLM arm")):
        s = summary[key]
        lines += [f"## {title}", "",
                  f"Wins {s['wins']}, losses {s['losses']}, ties {s['ties']} over {s['features']} features "
                  f"(exact sign test p = {s['sign_test_p']:.3g}); exact McNemar p < {ALPHA} on "
                  f"{s['mcnemar_significant']}.", ""]
        if not tests[key]:
            lines += ["(nothing to compare)", ""]
            continue
        lines += ["| Feature | A | F1 A | B | F1 B | ΔF1 (CI) | only A correct | only B correct | McNemar p |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for fid, t in tests[key].items():
            lines.append(f"| {catalog.by_id(fid).name} | {_display(t['a'])} | {_fmt(t['f1_a'])} | {_display(t['b'])} "
                         f"| {_fmt(t['f1_b'])} | {t['delta_f1']:+.{DIGITS}f} [{t['delta_f1_ci_low']:+.{DIGITS}f}, "
                         f"{t['delta_f1_ci_high']:+.{DIGITS}f}] | {t['only_a_correct']} | {t['only_b_correct']} "
                         f"| {t['mcnemar_p']:.3g} |")
        lines.append("")
    return "\n".join(lines)


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def run(data_dir: Path, out_dir: Path, params: Params) -> dict:
    """The evaluate stage (see module doc).  Returns counts only."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    ep = params.evaluate
    catalog = load_catalog()
    labels = read_table("recording_labels", layout.path(data_dir, "folds", "labels.parquet")).to_pylist()
    preds: list[dict] = []
    sources = 0
    for source in PREDICTIONS:
        path = data_dir / source
        if path.is_file():
            preds += read_table("predictions", path).to_pylist()
            sources += 1
        elif source not in STAGE.optional:
            raise SemioflowError(f"evaluate needs {source} (run the stage that writes it first)")
    evals, rs = evaluate_all(labels, preds, n_boot=ep.bootstrap, ci=ep.ci, seed=params.base.seed)
    summary, tests = compare(evals, catalog, rs)
    onsets = _onsets(data_dir, preds, rs, ep.ci)
    dx = _diagnosis(data_dir, labels, preds, rs, catalog, seed=params.base.seed, out=out_dir / DX_PREDICTIONS)
    agreement = _agreement(data_dir, preds, rs)

    order = {f: i for i, f in enumerate(catalog.ids)}
    keys = sorted(evals, key=lambda k: (_order(k[0]), k[0], order.get(k[1], len(order))))
    write_table("metrics", [dict(arm=a, feature_id=f, metric=m, value=evals[(a, f)].estimates[m].value,
                                 ci_low=evals[(a, f)].estimates[m].low, ci_high=evals[(a, f)].estimates[m].high,
                                 n=len(evals[(a, f)].recordings), n_not_assessable=evals[(a, f)].not_assessable)
                            for a, f in keys for m in METRICS],
                out_dir / "metrics.parquet")
    nested: dict[str, dict] = defaultdict(dict)
    for a, f in keys:
        e = evals[(a, f)]
        nested[a][f] = {**{m: e.estimates[m].value for m in METRICS}, "f1_ci_low": e.estimates["f1"].low,
                        "f1_ci_high": e.estimates["f1"].high, "n": len(e.recordings),
                        "n_not_assessable": e.not_assessable}
    blind = not_assessable(labels, preds)  # arms x features wholly not assessable have no metrics: counted here
    blind_doc: dict[str, dict[str, int]] = defaultdict(dict)
    for (a, f), n in sorted(blind.items()):
        blind_doc[a][f] = n
    random = any(is_random(p["model_id"]) for p in preds)
    banner = "Some predictions come from random-weight smoke models: not clinical results" if random else ""
    doc = {**nested, "summary": {**summary, "random_weights": random}, "paired": tests,
           "not_assessable": dict(blind_doc),
           "onset": {arm: o.to_dict() for arm, o in onsets.items()}, "diagnosis": dx,
           "justification_rouge_l": agreement}
    atomic_write_text(out_dir / "metrics.json", json.dumps(doc, indent=2, sort_keys=True))
    atomic_write_text(out_dir / "plots" / "f1.csv", _csv(
        ["arm", "feature", "f1", "ci_low", "ci_high"],
        [[a, f, round(evals[(a, f)].estimates["f1"].value, 6), round(evals[(a, f)].estimates["f1"].low, 6),
          round(evals[(a, f)].estimates["f1"].high, 6)] for a, f in keys]))
    arms = _arms_sorted(a for a, _ in keys)
    feats = [f for f in catalog.ids if any((a, f) in evals for a in arms)]
    shutil.rmtree(out_dir / "plots" / "arms", ignore_errors=True)  # an arm dropped since the last run must go
    for arm in arms:
        atomic_write_text(out_dir / "plots" / "arms" / f"{re.sub(r'[^A-Za-z0-9_.@-]', '_', arm)}.csv", _csv(
            ["feature", "f1", "ci_low", "ci_high"],
            [[f, *(round(getattr(evals[(arm, f)].estimates["f1"], k), 6) for k in ("value", "low", "high"))]
             for f in catalog.ids if (arm, f) in evals]))
    atomic_write_text(out_dir / "tables.md", markdown(evals, catalog, summary, tests, ci=ep.ci, n_boot=ep.bootstrap,
                                                      banner=banner) + _not_assessable_line(data_dir, catalog)
                      + no_media_markdown(blind, catalog)
                      + onset_markdown(onsets, ci=ep.ci)
                      + diagnosis_markdown(dx, catalog, ci=ep.ci) + agreement_markdown(agreement, ci=ep.ci))
    return {"arms": len(arms), "features": len(feats), "recordings": len(rs.patient_of), "patients": len(rs.patients),
            "prediction_sources": sources, "metric_rows": len(keys) * len(METRICS),
            "mllm_beats_baseline": summary["mllm_vs_baseline"]["wins"],
            "mllm_vs_baseline_features": summary["mllm_vs_baseline"]["features"],
            "enhancement_improves": summary["enhanced_vs_raw"]["wins"],
            "enhancement_features": summary["enhanced_vs_raw"]["features"]}


def _not_assessable_line(data_dir: Path, catalog: Catalog) -> str:
    """Which labels were not assessable (excluded from every score), from folds.json."""
    path = data_dir / FOLDS_SUMMARY
    counts = json.loads(path.read_text()).get("not_assessable", {}) if path.is_file() else {}
    shown = [f"{catalog.by_id(f).name} {n}" for f, n in counts.items() if n and f in catalog.ids]
    return ("\nNot assessable in the labels, so excluded from every score above (recordings): "
            + ", ".join(shown) + ".\n") if shown else ""


def no_media_markdown(blind: dict[tuple[str, str], int], catalog: Catalog) -> str:
    """Per arm, the features whose recordings it could not assess (no media), left out of its scores."""
    if not blind:
        return ""
    order = {f: i for i, f in enumerate(catalog.ids)}
    lines = ["", "## Not assessable (no media)", "",
             "Recordings an arm could not assess (no window had its media: no face, no pose, no audio), left out "
             "of that arm's scores above (n counts the others):", ""]
    for arm in _arms_sorted(a for a, _ in blind):
        feats = sorted((f for a, f in blind if a == arm), key=lambda f: order.get(f, len(order)))
        lines.append(f"- {_display(arm)}: " + ", ".join(
            f"{catalog.by_id(f).name if f in order else f} {blind[(arm, f)]}" for f in feats))
    return "\n".join(lines) + "\n"


def _onsets(data_dir: Path, preds: list[dict], rs: Resampling, ci: float) -> dict[str, onset.OnsetScore]:
    """Onset MAE per MLLM arm (S³ Task 4) where the labels carry onsets and the windows table is there."""
    truth_path, windows_path = data_dir / ONSETS, data_dir / WINDOWS
    if not truth_path.is_file() or not windows_path.is_file():
        return {}
    truth = {(r["recording_id"], r["feature_id"]): r["onset_s"] for r in read_table("onsets", truth_path).to_pylist()
             if r["recording_id"] in rs.patient_of}
    windows: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for r in read_table("windows", windows_path).to_pylist():
        windows[r["recording_id"]][r["window_index"]] = (r["t_start_s"], r["t_end_s"])
    names = _arm_names(preds)
    mllm = [dict(p, arm=names[(p["arm"], p["model_id"])]) for p in preds if p["arm"] not in BASELINE_ARMS]
    return onset.score(mllm, windows, truth, rs.patient_of, rs.patients, rs.weights, ci)


def onset_markdown(onsets: dict[str, onset.OnsetScore], *, ci: float) -> str:
    """The onset-timing table of tables.md (empty without annotated onsets)."""
    if not onsets:
        return ""
    lines = ["", "## Onset timing (S³ Task 4)", "",
             f"Mean absolute error (s) of the onset estimated from the first window that said yes, on the "
             f"recordings an arm found present whose onset is annotated, with its {ci:.0%} patient-level bootstrap "
             "CI; the constant baseline gives every recording the median onset of that feature among the other "
             "patients.", "",
             "| Arm | n | MAE (s) | Constant baseline MAE (s) |", "|---|---|---|---|"]
    for arm in _arms_sorted(onsets):
        o = onsets[arm]
        better = "**" if o.mae < o.baseline_mae else ""
        lines.append(f"| {_display(arm)} | {o.n} | {better}{o.mae:.1f}{better} ({o.ci_low:.1f}–{o.ci_high:.1f}) | "
                     f"{o.baseline_mae:.1f} ({o.baseline_ci_low:.1f}–{o.baseline_ci_high:.1f}) |")
    return "\n".join(lines) + "\n"


DX_SOURCES = {"labels": "Reference labels (upper bound)", "mllm_raw": "MLLM raw arms",
              "mllm_enhanced": "MLLM enhanced arms"}
IMPORTANCES_SHOWN = 5  # top features listed per vector source in tables.md


def _diagnosis(data_dir: Path, labels: list[dict], preds: list[dict], rs: Resampling, catalog: Catalog, *,
               seed: int, out: Path) -> dict:
    """ES vs NES from the feature vector (S³ Task 7) per vector source, where folds wrote diagnoses; the
    out-of-fold predictions go to ``out`` (table ``diagnosis_predictions``; empty without diagnoses)."""
    write_table("diagnosis_predictions", [], out)
    dx_path, folds_path = data_dir / DIAGNOSES, data_dir / rel("folds", "folds.parquet")
    if not dx_path.is_file() or not folds_path.is_file():
        return {}
    truth = {r["recording_id"]: r["diagnosis"] == diagnosis.POSITIVE
             for r in read_table("recording_diagnoses", dx_path).to_pylist() if r["recording_id"] in rs.patient_of}
    fold = {r["recording_id"]: r["fold"] for r in read_table("folds", folds_path).to_pylist()}
    rids = sorted(r for r in truth if r in fold)
    if len({truth[r] for r in rids}) < 2:
        return {}
    sources = {"labels": {(r["recording_id"], r["feature_id"]): bool(r["label"]) for r in labels}}
    models_of: dict[str, set[str]] = defaultdict(set)
    for p in preds:
        models_of[p["arm"]].add(p["model_id"])
    for name, arm_of in (("mllm_raw", lambda f: RAW_ARM[f.modality]),
                         ("mllm_enhanced", lambda f: ENHANCED_ARMS.get(f.enhancement, ("",))[0])):
        arms = {f.id: arm_of(f) for f in catalog.features}
        # A vector takes each feature from its arm; video and audio arms are usually answered by different
        # models, which one vector combines.  Where an arm was answered by several models, one vector per model
        # of it (a model's answers never mix with another's on one arm).
        rivals = sorted({m for a in set(arms.values()) if len(models_of.get(a, ())) > 1 for m in models_of[a]})
        for model in rivals or [None]:
            got = {(p["recording_id"], p["feature_id"]): bool(p["predicted"]) for p in preds
                   if arms.get(p["feature_id"]) == p["arm"] and p["predicted"] is not None
                   and (model is None or len(models_of[p["arm"]]) == 1 or p["model_id"] == model)}
            if got:
                sources[name if model is None else f"{name}@{model}"] = got
    y, folds = np.array([truth[r] for r in rids]), np.array([fold[r] for r in rids])
    result, rows = {}, []
    for name, present in sources.items():
        cv = diagnosis.cross_validate(diagnosis.vectors(rids, catalog.ids, present), y, folds, seed=seed)
        rows += [dict(recording_id=r, source=name, p_es=float(p), predicted="ES" if e else "NES")
                 for r, p, e in zip(rids, cv.probability, cv.predicted)]
        est = with_ci(rs.counts(rids, y, cv.predicted), rs.weights, rs.ci)["f1"]
        base = with_ci(rs.counts(rids, y, cv.baseline), rs.weights, rs.ci)["f1"]
        order = np.argsort(-cv.importances)
        result[name] = {"n": len(rids), "es": int(y.sum()), "f1": est.value, "ci_low": est.low, "ci_high": est.high,
                     "baseline_f1": base.value, "baseline_ci_low": base.low, "baseline_ci_high": base.high,
                     # a ranked list (metrics.json sorts mapping keys): most important first
                     "importances": [[catalog.ids[i], round(float(cv.importances[i]), 4)] for i in order]}
    write_table("diagnosis_predictions", rows, out)
    return result


def diagnosis_markdown(dx: dict, catalog: Catalog, *, ci: float) -> str:
    """The ES vs NES table of tables.md (empty without diagnoses)."""
    if not dx:
        return ""
    lines = ["", "## ES vs NES diagnosis (S³ Task 7)", "",
             f"A random forest on the 20-feature vector, trained and tested across the patient-grouped folds; F1 of "
             f"ES with its {ci:.0%} patient-level bootstrap CI against the majority-class baseline, and the "
             f"{IMPORTANCES_SHOWN} most important features.", "",
             "| Feature vector | n (ES) | F1 | Majority baseline F1 | Most important |", "|---|---|---|---|---|"]
    for name, d in dx.items():
        top = ", ".join(catalog.by_id(f).name for f, _ in d["importances"][:IMPORTANCES_SHOWN])
        base, _, model = name.partition("@")
        lines.append(f"| {DX_SOURCES[base]}{f' (`{model}`)' if model else ''} | {d['n']} ({d['es']}) | {d['f1']:.2f} ({d['ci_low']:.2f}–{d['ci_high']:.2f}) "
                     f"| {d['baseline_f1']:.2f} ({d['baseline_ci_low']:.2f}–{d['baseline_ci_high']:.2f}) | {top} |")
    return "\n".join(lines) + "\n"


def _agreement(data_dir: Path, preds: list[dict], rs: Resampling) -> dict:
    """ROUGE-L of each MLLM arm's justification (its yes windows' words, in window order) against the annotator's,
    on the recording x features both call present (S³ Task 2, lexical part), with the patient bootstrap CI."""
    why_path, evidence_path = data_dir / JUSTIFICATIONS, data_dir / layout.EVIDENCE
    if not why_path.is_file() or not evidence_path.is_file():
        return {}
    reference = {(r["recording_id"], r["feature_id"]): r["justification"]
                 for r in read_table("label_justifications", why_path).to_pylist() if r["recording_id"] in rs.patient_of}
    names = _arm_names(preds)
    said: dict[tuple[str, str, str], list[tuple[int, str]]] = defaultdict(list)
    for e in read_table("evidence", evidence_path).to_pylist():
        if (e["recording_id"], e["feature_id"]) in reference and e["justification"] and (e["arm"], e["model_id"]) in names:
            said[(e["recording_id"], e["feature_id"], names[(e["arm"], e["model_id"])])].append(
                (e["window_index"], e["justification"]))
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (rid, fid, arm), words in said.items():
        text = " ".join(w for _, w in sorted(words))
        values[arm][rs.patient_of[rid]].append(rouge.rouge_l(text, reference[(rid, fid)]))
    out = {}
    for arm in _arms_sorted(values):
        mean, lo, hi = onset.patient_mean_ci(values[arm], rs.patients, rs.weights, rs.ci)
        out[arm] = {"n": sum(len(v) for v in values[arm].values()), "rouge_l": mean, "ci_low": lo, "ci_high": hi}
    return out


def agreement_markdown(agreement: dict, *, ci: float) -> str:
    """The justification-agreement table of tables.md (empty without annotators' justifications)."""
    if not agreement:
        return ""
    lines = ["", "## Justification agreement (S³ Task 2, lexical)", "",
             f"ROUGE-L (F) of the model's justification against the annotator's, on the recordings both call "
             f"present, with its {ci:.0%} patient-level bootstrap CI.", "", "| Arm | n | ROUGE-L |", "|---|---|---|"]
    for arm, a in agreement.items():
        lines.append(f"| {_display(arm)} | {a['n']} | {a['rouge_l']:.2f} ({a['ci_low']:.2f}–{a['ci_high']:.2f}) |")
    return "\n".join(lines) + "\n"


PREDICTIONS = (rel("train", "predictions.parquet"), rel("aggregate", "predictions.parquet"))
JUSTIFICATIONS = rel("folds", "private", "justifications.parquet")
DIAGNOSES = rel("folds", "diagnoses.parquet")
FOLDS_SUMMARY = rel("folds", "folds.json")
DX_PREDICTIONS = "diagnosis.parquet"  # in evaluate's folder: out-of-fold P(ES) per recording (the report shows it)
ONSETS = rel("folds", "onsets.parquet")
WINDOWS = rel("window", "windows.parquet")

STAGE = Stage(
    "evaluate", "cohort", run, "F1 and friends per feature and arm against the labels, with patient-level bootstrap",
    inputs=(rel("folds", "labels.parquet"), rel("train", "predictions.parquet")),
    # evaluated when present: MLLM predictions; annotated onsets with the windows (onset timing)
    optional=(rel("aggregate", "predictions.parquet"), rel("folds", "onsets.parquet"), rel("window", "windows.parquet"),
              rel("folds", "diagnoses.parquet"), rel("folds", "folds.parquet"),
              rel("folds", "private", "justifications.parquet"), rel("aggregate", "evidence.parquet"),
              rel("folds", "folds.json")),
    params=("evaluate", "base.seed"),
    outs=(Out("metrics.parquet"), Out(DX_PREDICTIONS), Out("tables.md"), Out("metrics.json", "metrics", {"cache": False}),
          Out("plots/arms", "plots", {"x": "f1", "y": "feature", "template": "bar_horizontal", "cache": False})))
