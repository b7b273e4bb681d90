"""Classification scores from confusion counts, shared by evaluate and the S³ scorer.

Counts are ``[..., 4]`` arrays (tp, fp, fn, tn), so a whole bootstrap's
resamples are scored at once.  Definitions follow scikit-learn with
``zero_division=0``.
"""

from __future__ import annotations

import numpy as np

from tasks.errors import SemioflowError


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``[tp, fp, fn, tn]`` of boolean arrays."""
    t, p = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    return np.array([(t & p).sum(), (~t & p).sum(), (t & ~p).sum(), (~t & ~p).sum()], dtype=np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def scores(counts: np.ndarray, metric: str = "f1_yes") -> dict[str, np.ndarray]:
    """Accuracy, precision, recall, F1 from ``[..., 4]`` counts (tp, fp, fn, tn); 0 where undefined.

    ``metric`` is the feature's catalog metric: ``f1`` is the F1 of "yes" (``f1_yes``) or the mean of the
    F1 of "yes" and of "no" (``macro_f1``, S³'s score for verbal responsiveness).  Precision and recall stay
    those of "yes".
    """
    tp, fp, fn, tn = (counts[..., i] for i in range(4))
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    if metric == "macro_f1":
        # the mean over the classes that occur (in the truth or the answers), as scikit-learn's average="macro"
        # with inferred labels: a sample of only "yes", all answered yes, scores 1, not 0.5
        has_yes, has_no = (2 * tp + fp + fn) > 0, (2 * tn + fn + fp) > 0
        f1 = _ratio(f1 * has_yes + _ratio(2 * tn, 2 * tn + fn + fp) * has_no, has_yes.astype(float) + has_no)
    elif metric != "f1_yes":
        raise SemioflowError(f"unknown feature metric {metric!r}")
    return {"accuracy": _ratio(tp + tn, tp + fp + fn + tn), "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn), "f1": f1}
