"""folds: patient-grouped, label-stratified k-fold split of the labelled, de-identified recordings.

Annotations are keyed by the source file's name (that is what annotators
see); this stage moves them onto pseudonymous ids and assigns every patient
to one fold, so no patient is ever on both sides of a split.

Inputs:

* ``folds.labels`` (params; table ``labels``: source_name, feature_id, label
  (null = not assessable), optionally onset_s/offset_s; e.g. written by
  ``semioflow labels import``) and ``folds.recordings`` (table with source_name,
  patient_id, e.g. the phantom's ``recordings``).  Relative paths are
  relative to the working directory, like ``ingest.inbox``.
* ``data_dir/01_ingest/private/id_map.parquet`` (PRIVATE: recording_id ->
  source_path; only the file name is used and it is never logged) and
  ``data_dir/02_deidentify/deidentified.parquet`` (only ``status == "ok"``
  recordings of the seizure cohort, per ``01_ingest/manifest.parquet``, count).

Outputs (``out_dir`` = ``data_dir/11_folds``):

* ``labels.parquet`` (table ``recording_labels``: recording_id, patient_id,
  feature_id, label) with patient ids pseudonymised as ``P`` + 10 hex of
  HMAC-SHA256(site key, patient id), like recording ids;
* ``folds.parquet`` (table ``folds``: recording_id, patient_id, fold 0..k-1);
* ``onsets.parquet`` (table ``onsets``): the annotated onset (and offset) of
  each present feature, where the labels carry one (S³ Task 4's truth);
* ``private/justifications.parquet`` (table ``label_justifications``, 0600,
  never tracked): the annotators' justifications of present labels,
  identifiers scrubbed, for the justification agreement (S³ Task 2);
* ``diagnoses.parquet`` (table ``recording_diagnoses``): ES / NES per fold
  recording, from ``folds.diagnoses`` (S³ Task 7's truth; absent when unset);
* ``folds.json``: counts only (recordings, patients, unlabelled, labels not
  assessable per feature (null ``label``: excluded from every score), per fold
  recordings/patients/positives per feature).

Stratification: 20 binary labels and a handful of patients cannot all be
balanced, so ``assign_folds`` runs ``folds.restarts`` seeded greedy passes
(each patient goes to the fold that most reduces the imbalance of fold sizes
and per-feature positive counts) and keeps the least imbalanced assignment.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from tasks import layout
from tasks.contract import Stage
from tasks.layout import PRIVATE, rel
from tasks.phi import scrub_text
from tasks.atomic import atomic_write_text
from tasks.catalog import load_catalog
from tasks.errors import SemioflowError
from tasks.cohorts import cohort_of
from tasks.identity import load_id_key, patient_pseudonym, source_names, write_private
from tasks.params import Params
from tasks.schema import SEIZURE, read_table, read_user_table, write_table

LABELS = "labels.parquet"
FOLDS = "folds.parquet"
ONSETS = "onsets.parquet"
DIAGNOSES = "diagnoses.parquet"
JUSTIFICATIONS = f"{PRIVATE}/justifications.parquet"
SUMMARY = "folds.json"
SIZE_WEIGHT = 10.0  # fold-size balance counts as much as ten features' positive balance together


def _imbalance(sums: np.ndarray, target: np.ndarray, weight: np.ndarray) -> float:
    return float((weight * (sums - target) ** 2).sum())


def assign_folds(counts: dict[str, np.ndarray], n_folds: int, *, seed: int, restarts: int) -> dict[str, int]:
    """Patient -> fold (0..n_folds-1), every fold non-empty, stratified as well as the labels allow.

    ``counts[patient]`` is a vector ``[n_recordings, positives of feature 1,
    ...]``.  Imbalance = sum over folds and dimensions of the squared gap to
    the even share, each dimension scaled by its total (rare and common
    features weigh alike) and fold size weighted by ``SIZE_WEIGHT``.  Pass 0
    places patients largest first, the others in seeded random order; ties go
    to a seeded random fold.  Raises ``SemioflowError`` with fewer patients than folds.
    """
    patients = sorted(counts)
    if len(patients) < n_folds:
        raise SemioflowError(f"{len(patients)} labelled patients cannot fill {n_folds} patient-grouped folds; "
                             "lower folds.n_folds or add recordings")
    c = np.stack([np.asarray(counts[p], float) for p in patients])  # (patients, dims)
    total = c.sum(0)
    target = total / n_folds
    weight = 1.0 / np.maximum(total, 1.0) ** 2
    weight[0] *= SIZE_WEIGHT
    rng = np.random.default_rng([seed, 11])
    best, best_cost = None, np.inf
    for r in range(restarts):
        order = np.argsort(-c[:, 0], kind="stable") if r == 0 else rng.permutation(len(patients))
        sums = np.zeros((n_folds, c.shape[1]))
        fold_of = np.full(len(patients), -1)
        empty = n_folds
        for placed, i in enumerate(order):
            still = len(patients) - placed  # patients to place, this one included
            candidates = [k for k in range(n_folds) if still > empty or not sums[k, 0]]
            # gain of adding patient i to fold k: sum_d w_d c_d (2 (S_kd - T_d) + c_d)
            delta = [(weight * c[i] * (2 * (sums[k] - target) + c[i])).sum() for k in candidates]
            low = min(delta)
            ties = [k for k, d in zip(candidates, delta) if d <= low + 1e-12]
            k = ties[int(rng.integers(len(ties)))] if len(ties) > 1 else ties[0]
            empty -= not sums[k, 0]
            sums[k] += c[i]
            fold_of[i] = k
        cost = _imbalance(sums, target, weight)
        if cost < best_cost - 1e-12:
            best, best_cost = fold_of.copy(), cost
    # Number folds by their first patient, so the numbering does not depend on which pass won.
    first = {}
    for i in range(len(patients)):
        first.setdefault(int(best[i]), len(first))
    return {p: first[int(best[i])] for i, p in enumerate(patients)}


def run(data_dir: Path, out_dir: Path, params: Params) -> dict:
    """The folds stage (see module doc).  Returns counts only (no ids, no names)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    fp = params.folds
    catalog = load_catalog()
    # the gait cohort has its own labels (the gait stage)
    seizure = {rid for rid, cohort in cohort_of(data_dir).items() if cohort == SEIZURE}
    deid = [r for r in read_table("deidentified", layout.path(data_dir, "deidentify", "deidentified.parquet")).to_pylist()
            if r["recording_id"] in seizure]
    name_of = source_names(layout.stage_dir(data_dir, "ingest"), {r["recording_id"] for r in deid if r["status"] == "ok"})
    labels = read_user_table(fp.labels, ("source_name", "feature_id", "label"), "folds.labels",
                             optional=("onset_s", "offset_s", "justification"))
    patient_of_name = {r["source_name"]: r["patient_id"]
                       for r in read_user_table(fp.recordings, ("source_name", "patient_id"), "folds.recordings")}
    unknown = sorted({r["feature_id"] for r in labels} - set(catalog.ids))
    if unknown:
        raise SemioflowError(f"labels table has feature ids not in the catalog: {', '.join(unknown)}")
    by_name: dict[str, dict[str, bool]] = defaultdict(dict)
    onset_by_name: dict[str, dict[str, tuple[float, float | None]]] = defaultdict(dict)
    unassessable_by_name: dict[str, list[str]] = defaultdict(list)
    why_by_name: dict[str, dict[str, str]] = defaultdict(dict)
    for r in labels:
        if r["label"] is None:  # not assessable (e.g. the patient is off camera): no truth either way
            unassessable_by_name[r["source_name"]].append(r["feature_id"])
            continue
        by_name[r["source_name"]][r["feature_id"]] = bool(r["label"])
        if r["label"] and r.get("onset_s") is not None:
            onset_by_name[r["source_name"]][r["feature_id"]] = (float(r["onset_s"]), r.get("offset_s"))
        if r["label"] and r.get("justification"):
            why_by_name[r["source_name"]][r["feature_id"]] = scrub_text(str(r["justification"]))

    key = load_id_key()
    rid_labels: dict[str, dict[str, bool]] = {}
    rid_patient: dict[str, str] = {}
    unlabelled = no_patient = 0
    for rid, name in sorted(name_of.items()):
        if not by_name.get(name):
            unlabelled += 1
        elif name not in patient_of_name:
            no_patient += 1
        else:
            rid_labels[rid] = by_name[name]
            rid_patient[rid] = patient_pseudonym(str(patient_of_name[name]), key)

    counts: dict[str, np.ndarray] = {}
    for rid, pid in rid_patient.items():
        vec = np.array([1.0] + [float(rid_labels[rid].get(f, False)) for f in catalog.ids])
        counts[pid] = counts.get(pid, 0) + vec
    fold_of = assign_folds(counts, fp.n_folds, seed=params.base.seed, restarts=fp.restarts)

    write_table("recording_labels", [
        dict(recording_id=rid, patient_id=rid_patient[rid], feature_id=f, label=rid_labels[rid][f])
        for rid in sorted(rid_labels) for f in catalog.ids if f in rid_labels[rid]
    ], out_dir / LABELS)
    write_table("folds", [dict(recording_id=rid, patient_id=rid_patient[rid], fold=fold_of[rid_patient[rid]])
                          for rid in sorted(rid_patient)], out_dir / FOLDS)
    write_table("onsets", [dict(recording_id=rid, feature_id=f, onset_s=on, offset_s=off)
                           for rid in sorted(rid_labels) for f, (on, off) in sorted(onset_by_name[name_of[rid]].items())],
                out_dir / ONSETS)
    diagnosed = _diagnoses(fp.diagnoses, name_of, rid_patient, out_dir / DIAGNOSES)
    # annotators' words are free text (a name may slip in): scrubbed, and kept in private/ (never tracked)
    write_private("label_justifications", [dict(recording_id=rid, feature_id=f, justification=why)
                                           for rid in sorted(rid_labels)
                                           for f, why in sorted(why_by_name[name_of[rid]].items())],
                  out_dir / JUSTIFICATIONS)
    not_assessable = {f: 0 for f in catalog.ids}
    for rid in rid_labels:
        for f in unassessable_by_name[name_of[rid]]:
            not_assessable[f] += 1

    per_fold = []
    for k in range(fp.n_folds):
        rids = [rid for rid, pid in rid_patient.items() if fold_of[pid] == k]
        per_fold.append({"recordings": len(rids), "patients": sum(v == k for v in fold_of.values()),
                         "positives": {f: sum(rid_labels[r].get(f, False) for r in rids) for f in catalog.ids}})
    summary = {"recordings": len(rid_patient), "patients": len(counts), "unlabelled": unlabelled,
               "no_patient": no_patient, "not_deidentified": len(deid) - len(name_of), "n_folds": fp.n_folds,
               "label_rows": sum(len(v) for v in rid_labels.values()), "not_assessable": not_assessable,
               "diagnosed": diagnosed,
               "fold_recordings": [f["recordings"] for f in per_fold]}
    atomic_write_text(out_dir / SUMMARY, json.dumps({**summary, "folds": per_fold}, indent=2, sort_keys=True))
    return summary


def _diagnoses(path: str, name_of: dict[str, str], rid_patient: dict[str, str], out: Path) -> int:
    """``diagnoses.parquet`` (table ``recording_diagnoses``) for the fold recordings with a diagnosis in the
    ``folds.diagnoses`` table; returns how many (0, and no file, when that param is unset or names no file:
    ES / NES is then not evaluated, and ``folds.json``'s ``diagnosed: 0`` says so)."""
    out.unlink(missing_ok=True)
    if not path or not Path(path).is_file():  # no diagnoses (yet): the rest of the study goes on; folds.json says 0
        return 0
    dx = {r["source_name"]: r["diagnosis"] for r in read_user_table(path, ("source_name", "diagnosis"),
                                                                     "folds.diagnoses")}
    rows = [dict(recording_id=rid, patient_id=rid_patient[rid], diagnosis=dx[name_of[rid]])
            for rid in sorted(rid_patient) if name_of[rid] in dx]
    write_table("recording_diagnoses", rows, out)
    return len(rows)


STAGE = Stage("folds", "cohort", run, "recording labels (consensus of annotators) and patient-stratified folds",
              inputs=(rel("ingest", "private", "id_map.parquet"), rel("ingest", "manifest.parquet"),
                      rel("deidentify", "deidentified.parquet")),
              external=("folds.labels", "folds.recordings", "folds.diagnoses"), optional=("folds.diagnoses",),
              params=("folds", "base.seed"))
