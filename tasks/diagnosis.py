"""Two-stage diagnosis (S³ Task 7): epileptic (ES) vs non-epileptic (NES) seizure from the 20-feature vector.

Stage one is the rest of the pipeline (a yes/no per feature and recording);
stage two, here, is a random forest (scikit-learn) on that vector, trained
and tested across the study's patient-grouped folds (``11_folds/folds``), so
no patient is ever on both sides.  Vectors come from

* the reference labels (an upper bound: what a perfect stage one would give;
  a feature not assessable counts as absent), and
* each MLLM configuration's aggregated answers (a feature never answered
  counts as absent).

Every recording gets an out-of-fold prediction; F1 of ES (the positive
class) and the majority-class baseline (each fold predicts its training
folds' commoner diagnosis) come with the patient-level bootstrap CI that
evaluate uses.  Feature importances are the forests' mean impurity
decrease, averaged over folds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOREST_TREES = 200  # enough for stable importances on tens of recordings; trains in well under a second
POSITIVE = "ES"


@dataclass(frozen=True)
class CrossValidated:
    """Out-of-fold predictions (True = ES) of the forest and of the majority baseline, and importances."""

    predicted: np.ndarray
    probability: np.ndarray  # P(ES) per recording (the forest's vote share; 0/1 where a fold had one class)
    baseline: np.ndarray
    importances: np.ndarray  # per feature, mean over folds


def cross_validate(x: np.ndarray, y: np.ndarray, fold: np.ndarray, *, seed: int) -> CrossValidated:
    """Train on all folds but one, predict it, for every fold.  ``x``: (recordings, features) 0/1, ``y``: True = ES,
    ``fold``: the recording's fold.  A training side with one class predicts that class."""
    from sklearn.ensemble import RandomForestClassifier

    predicted, baseline = np.zeros(len(y), bool), np.zeros(len(y), bool)
    probability = np.zeros(len(y))
    importances = []
    for k in np.unique(fold):
        test, train = fold == k, fold != k
        majority = bool(y[train].mean() >= 0.5) if train.any() else True
        baseline[test] = majority
        if len(np.unique(y[train])) < 2:
            predicted[test], probability[test] = majority, float(majority)
            continue
        forest = RandomForestClassifier(n_estimators=FOREST_TREES, random_state=seed, n_jobs=1)
        forest.fit(x[train], y[train])
        probability[test] = forest.predict_proba(x[test])[:, list(forest.classes_).index(True)]
        predicted[test] = forest.predict(x[test]).astype(bool)
        importances.append(forest.feature_importances_)
    imp = np.mean(importances, axis=0) if importances else np.zeros(x.shape[1])
    return CrossValidated(predicted, probability, baseline, imp)


def vectors(rids: list[str], feature_ids: tuple[str, ...], present: dict[tuple[str, str], bool]) -> np.ndarray:
    """(recordings, features) 0/1: ``present[(rid, fid)]``, absent where missing."""
    return np.array([[float(present.get((r, f), False)) for f in feature_ids] for r in rids])
