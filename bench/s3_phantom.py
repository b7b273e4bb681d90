"""S³ tasks 4 and 7 on the phantom's planted truth: onset MAE and ES/NES F1, each against its naive baseline.

No video is rendered: the seizure phantom is planned (``plan_cohort``: events,
labels, diagnoses; milliseconds) for several seeds and the default size
(24 recordings of 8 patients each), windows are cut as the window stage
cuts them, folds are assigned as the folds stage assigns them, and

* **onset (Task 4)**: a window-level *oracle* (yes exactly where a planted
  event of the feature overlaps the window: what a perfect stage one says)
  and the same oracle with each window answer flipped with probability 0.1,
  scored by ``tasks.onset`` against the leave-one-patient-out constant
  baseline on the labelled-present, planted features;
* **ES/NES (Task 7)**: ``tasks.diagnosis`` on the labels' feature vectors
  (the upper bound) and on vectors with each feature flipped with
  probability 0.1 / 0.2 (a stage one that is 90 % / 80 % right), F1 of ES
  against the majority-class baseline.

Every figure is the phantom's truth recovered through the same code the
evaluate stage runs, with the patient-bootstrap 95 % CI; it says the path
works and what the naive baselines score, not how a real model does.

    .venv/bin/python bench/s3_phantom.py [--seeds 3]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from tasks import diagnosis, onset
from tasks.catalog import load_catalog
from tasks.evaluate import Resampling, bootstrap_weights, with_ci
from tasks.folds import assign_folds
from tasks.params import SeizureSynthParams, WindowParams
from tasks.synth import seizure as sz
from tasks.window import window_bounds

N_BOOT = 2000
CI = 0.95


def one_seed(seed: int) -> dict:
    catalog = load_catalog()
    specs = sz.plan_cohort(SeizureSynthParams(), seed=seed)
    labels = sz.annotate(specs, seed=seed)
    dx = {r["source_name"]: r["diagnosis"] for r in sz.diagnose(specs)}
    patient_of = {s.source_name: s.patient_id for s in specs}
    patients = sorted(set(patient_of.values()))
    rs = Resampling(patients, patient_of, bootstrap_weights(len(patients), N_BOOT, seed), CI)
    present = {(r["source_name"], r["feature_id"]): r["label"] for r in labels}
    counts: dict[str, np.ndarray] = {}
    for s in specs:
        vec = np.array([1.0] + [float(present[(s.source_name, f)]) for f in catalog.ids])
        counts[s.patient_id] = counts.get(s.patient_id, 0) + vec
    fold_of = assign_folds(counts, 3, seed=seed, restarts=50)
    rng = np.random.default_rng([seed, 404])

    # ---- onset -------------------------------------------------------------------------------------------
    windows = {s.source_name: dict(enumerate(window_bounds(s.n_frames / s.fps, WindowParams()))) for s in specs}
    truth = {(r["source_name"], r["feature_id"]): r["onset_s"] for r in labels if r["onset_s"] is not None}
    preds = []
    for s in specs:
        events = defaultdict(list)
        for e in s.events:
            events[e.feature_id].append((e.t_start_s, e.t_end_s))
        for fid, spans in events.items():
            yes = [k for k, (a, b) in windows[s.source_name].items() if any(t0 < b and t1 > a for t0, t1 in spans)]
            noisy = [k for k in windows[s.source_name] if (k in yes) != bool(rng.random() < 0.1)]
            preds.append(dict(arm="oracle", recording_id=s.source_name, feature_id=fid, predicted=bool(yes),
                              evidence_windows=yes))
            preds.append(dict(arm="oracle_flip_0.1", recording_id=s.source_name, feature_id=fid,
                              predicted=bool(noisy), evidence_windows=noisy))
    onsets = onset.score(preds, windows, truth, patient_of, patients, rs.weights, CI)

    # ---- ES / NES ----------------------------------------------------------------------------------------
    rids = [s.source_name for s in specs]
    y = np.array([dx[r] == "ES" for r in rids])
    folds = np.array([fold_of[patient_of[r]] for r in rids])
    vectors = {"labels": {k: bool(v) for k, v in present.items()}}
    for p in (0.1, 0.2):
        vectors[f"labels_flip_{p}"] = {k: bool(v) != bool(rng.random() < p) for k, v in present.items()}
    dxs = {}
    for name, vec in vectors.items():
        cv = diagnosis.cross_validate(diagnosis.vectors(rids, catalog.ids, vec), y, folds, seed=seed)
        est = with_ci(rs.counts(rids, y, cv.predicted), rs.weights, CI)["f1"]
        base = with_ci(rs.counts(rids, y, cv.baseline), rs.weights, CI)["f1"]
        dxs[name] = (est, base, [catalog.ids[i] for i in np.argsort(-cv.importances)[:3]])
    return {"onset": onsets, "dx": dxs, "es": int(y.sum()), "n": len(rids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    for seed in range(args.seeds):
        r = one_seed(seed)
        print(f"seed {seed}: {r['n']} recordings, {r['es']} ES")
        for arm, o in r["onset"].items():
            print(f"  onset {arm:16s} n={o.n:3d}  MAE {o.mae:5.1f} s [{o.ci_low:4.1f}, {o.ci_high:4.1f}]   constant "
                  f"baseline {o.baseline_mae:5.1f} s [{o.baseline_ci_low:4.1f}, {o.baseline_ci_high:4.1f}]   "
                  f"ratio {o.mae / o.baseline_mae:.2f}")
        for name, (est, base, top) in r["dx"].items():
            print(f"  ES/NES {name:16s} F1 {est.value:.2f} [{est.low:.2f}, {est.high:.2f}]   majority {base.value:.2f} "
                  f"[{base.low:.2f}, {base.high:.2f}]   top: {', '.join(top)}")


if __name__ == "__main__":
    main()
