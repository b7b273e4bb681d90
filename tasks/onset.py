"""Onset timing (S³ Task 4): when a detected feature starts, estimated from window answers, against annotations.

Per recording x feature that an arm found present (any-yes) and whose onset
is annotated (``11_folds/onsets.parquet``):

* **estimate**: the first window that said yes bounds the onset to
  ``[lo, hi]`` with ``hi`` its end and ``lo`` its start, or the previous
  window's end (windows overlap: a feature visible in the overlap would have
  made the earlier one say yes; a window without a usable answer counts as
  not yes here, as in the any-yes rule);
  the estimate is the middle of ``[lo, hi]``, which bounds the worst error
  by half that span;
* **constant baseline**: every recording gets the median annotated onset of
  that feature over the *other* patients (leave one patient out, so no
  recording sees its own truth); a method that does not beat it says
  nothing about when a feature starts;
* **MAE** in seconds over those recordings, with a percentile CI from the
  same patient-level bootstrap evaluate uses, for the arm and the baseline
  on the same recordings.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OnsetScore:
    """One arm's onset error: MAE (s) with CI, and the constant baseline's on the same recordings."""

    arm: str
    n: int
    mae: float
    ci_low: float
    ci_high: float
    baseline_mae: float
    baseline_ci_low: float
    baseline_ci_high: float

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("n", "mae", "ci_low", "ci_high", "baseline_mae", "baseline_ci_low",
                                              "baseline_ci_high")}


def estimate(evidence: list[int], windows: dict[int, tuple[float, float]]) -> float | None:
    """Onset estimate (s) from the yes windows ``evidence`` and every window's (start, end)."""
    if not evidence or min(evidence) not in windows:
        return None
    first = min(evidence)
    start, end = windows[first]
    lo = start
    before = [w for w in windows if w < first and windows[w][1] > start]
    if before:  # the overlapping window before did not say yes: the feature was not visible until it ended
        lo = min(end, max(lo, max(windows[w][1] for w in before)))
    return (lo + end) / 2


def constant_baseline(truth: dict[tuple[str, str], float], patient_of: dict[str, str]) -> dict[tuple[str, str], float]:
    """(recording, feature) -> the median annotated onset of that feature over the other patients (pooled over
    features where no other patient has one)."""
    by_feature: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (rid, fid), t in truth.items():
        by_feature[fid].append((patient_of[rid], t))
    pooled = [(patient_of[rid], t) for (rid, _), t in truth.items()]
    out = {}
    for (rid, fid), _ in truth.items():
        me = patient_of[rid]
        others = [t for p, t in by_feature[fid] if p != me] or [t for p, t in pooled if p != me]
        if others:
            out[(rid, fid)] = float(np.median(others))
    return out


def patient_mean_ci(values: dict[str, list[float]], patients: list[str], weights: np.ndarray, ci: float
                    ) -> tuple[float, float, float]:
    """Mean of per-recording ``values`` (grouped by patient) with the percentile CI of the patient bootstrap."""
    at = {p: i for i, p in enumerate(patients)}
    total, count = np.zeros(len(patients)), np.zeros(len(patients))
    for p, vals in values.items():
        total[at[p]] += sum(vals)
        count[at[p]] += len(vals)
    point = float(total.sum() / count.sum())
    t, c = weights @ total, weights @ count
    boot = np.divide(t, c, out=np.full_like(t, np.nan, dtype=float), where=c > 0)
    q = ((1 - ci) / 2, 1 - (1 - ci) / 2)
    lo, hi = np.nanquantile(boot, q) if np.isfinite(boot).any() else (np.nan, np.nan)
    return point, float(lo), float(hi)


def score(preds: list[dict], windows: dict[str, dict[int, tuple]],
          truth: dict[tuple[str, str], float], patient_of: dict[str, str], patients: list[str], weights: np.ndarray,
          ci: float) -> dict[str, OnsetScore]:
    """Arm -> its onset score over the recordings it found present whose onset is annotated.

    ``preds``: prediction rows (``arm``, ``recording_id``, ``feature_id``, ``predicted``,
    ``evidence_windows``); ``windows[rid][index] = (start, end)``; ``truth[(rid, fid)]`` annotated onsets (s); ``patient_of``,
    ``patients`` and ``weights``: evaluate's bootstrap.
    """
    base = constant_baseline(truth, patient_of)
    errors: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    base_errors: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in preds:
        key = (p["recording_id"], p["feature_id"])
        if not p["predicted"] or key not in truth or key not in base or p["recording_id"] not in windows:
            continue
        est = estimate(list(p["evidence_windows"]), windows[p["recording_id"]])
        if est is None:
            continue
        patient = patient_of[p["recording_id"]]
        errors[p["arm"]][patient].append(abs(est - truth[key]))
        base_errors[p["arm"]][patient].append(abs(base[key] - truth[key]))
    out = {}
    for arm in sorted(errors):
        n = sum(len(v) for v in errors[arm].values())
        mae, lo, hi = patient_mean_ci(errors[arm], patients, weights, ci)
        bmae, blo, bhi = patient_mean_ci(base_errors[arm], patients, weights, ci)
        out[arm] = OnsetScore(arm, n, mae, lo, hi, bmae, blo, bhi)
    return out
