"""folds: patient grouping (no leakage), stratification against planted labels, pseudonymised stage outputs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import folds
from tasks.catalog import load_catalog
from tasks.errors import SemioflowError
from tasks.identity import ID_MAP, patient_pseudonym
from tasks.params import FoldsParams, Params
from tasks.schema import GAIT, SEIZURE, TABLES, read_table, write_table

KEY = b"1" * 64
N_DIMS = 21  # recordings + 20 features


def _cost(counts: dict[str, np.ndarray], fold_of: dict[str, int], k: int) -> float:
    c = np.stack([counts[p] for p in sorted(counts)])
    sums = np.zeros((k, c.shape[1]))
    for i, p in enumerate(sorted(counts)):
        sums[fold_of[p]] += c[i]
    total = c.sum(0)
    w = 1 / np.maximum(total, 1) ** 2
    w[0] *= folds.SIZE_WEIGHT
    return float((w * (sums - total / k) ** 2).sum())


def test_rare_feature_is_spread_one_patient_per_fold_and_patients_stay_whole():
    # 9 patients with 1-3 recordings; the planted rare feature (dim 1) is in exactly three patients.
    rng = np.random.default_rng(0)
    counts = {}
    for i in range(9):
        n = 1 + i % 3
        v = np.zeros(N_DIMS)
        v[0] = n
        v[1] = 1.0 if i in (0, 1, 2) else 0.0  # patients 0-2 carry it (and would fall together by size order)
        v[2:] = rng.integers(0, n + 1, N_DIMS - 2)
        counts[f"P{i}"] = v
    fold_of = folds.assign_folds(counts, 3, seed=7, restarts=200)
    assert set(fold_of) == set(counts)  # every patient exactly once: a dict cannot hold a patient twice
    assert sorted({fold_of[p] for p in ("P0", "P1", "P2")}) == [0, 1, 2]
    sizes = np.bincount([fold_of[p] for p in counts], weights=[counts[p][0] for p in counts], minlength=3)
    assert sizes.max() - sizes.min() <= 1  # 18 recordings -> 6 per fold, give or take one


def test_stratification_beats_random_patient_grouping():
    rng = np.random.default_rng(1)
    counts = {}
    for i in range(15):
        n = int(rng.integers(1, 5))
        counts[f"P{i:02d}"] = np.concatenate([[n], rng.binomial(n, rng.uniform(0.1, 0.6, N_DIMS - 1))])
    ours = _cost(counts, folds.assign_folds(counts, 3, seed=3, restarts=200), 3)
    patients = sorted(counts)
    random_costs = []
    for _ in range(300):  # GroupKFold-like: shuffle patients, deal them round robin
        order = rng.permutation(len(patients))
        random_costs.append(_cost(counts, {patients[j]: r % 3 for r, j in enumerate(order)}, 3))
    print(f"\n[folds] imbalance ours {ours:.3f} vs random grouping median {np.median(random_costs):.3f}, "
          f"best {min(random_costs):.3f}")
    assert ours <= min(random_costs)


def test_seeded_and_every_fold_used():
    counts = {f"P{i}": np.array([1.0] + [float(i % 2)] * (N_DIMS - 1)) for i in range(4)}
    a = folds.assign_folds(counts, 3, seed=5, restarts=50)
    assert a == folds.assign_folds(counts, 3, seed=5, restarts=50)
    assert sorted(set(a.values())) == [0, 1, 2]
    with pytest.raises(SemioflowError, match="2 labelled patients cannot fill 3"):
        folds.assign_folds({"A": np.ones(3), "B": np.ones(3)}, 3, seed=0, restarts=5)


# ---- the stage on planted tables -------------------------------------------------------


def _deid_row(rid: str, status: str) -> dict:
    return dict(recording_id=rid, status=status, reason=None if status == "ok" else "residual_faces", detail=None,
                width=384, height=288, fps=12.0, duration_s=60.0, n_frames=720, decoded_coverage=1.0,
                face_frames=10, audit_frames=120, audit_residual_frames=0 if status == "ok" else 3,
                detector="mediapipe", audit_detector="centerface", text_frames=0, text_audit_frames=0,
                text_audit_residual_frames=0, ocr_audit_frames=0, ocr_audit_residual_frames=0, audio="none")


def _manifest_row(rid: str, now, cohort: str) -> dict:
    return dict(recording_id=rid, cohort=cohort, size_bytes=1, container="mp4",
                video_codec="h264", width=384, height=288, fps=12.0, duration_s=60.0, n_frames=720, rotation_deg=0,
                vfr=False, has_audio=True, audio_codec="aac", sample_rate=16000, flags=[], ingested_at=now)


def _cohort(tmp_path, *, n_patients=7, per_patient=3):
    """Raw-side tables (source names, raw patient ids) and the data dir the pipeline would have built."""
    catalog = load_catalog()
    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    now = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    id_rows, deid, rec_rows, label_rows, truth = [], [], [], [], {}
    for p in range(n_patients):
        for r in range(per_patient):
            name = f"P{p + 1:02d}_R{r + 1}.mp4"
            rid = f"R{p:02d}{r:08x}"
            rec_rows.append(dict(source_name=name, patient_id=f"P{p + 1:02d}", duration_s=60.0, fps=12.0,
                                 width=384, height=288, seed=0))
            id_rows.append(dict(recording_id=rid, source_path=f"/secure/inbox/{name}", content_sha256="0" * 64,
                                size_bytes=1, mtime_ns=0, status="accepted", ingested_at=now))
            deid.append(_deid_row(rid, "ok"))
            for f in catalog.ids:
                lab = bool(rng.random() < 0.4)
                # every 5th present label carries an annotated onset (S3 Task 4); every 7th cell is not assessable
                onset = 3.0 + r if lab and (p + r) % 5 == 0 else None
                na = (p * per_patient + r + catalog.ids.index(f)) % 7 == 0
                label_rows.append(dict(source_name=name, feature_id=f, label=None if na else lab, annotator_1=lab,
                                       annotator_2=lab, annotator_3=not lab, onset_s=None if na else onset,
                                       offset_s=None if na or onset is None else onset + 4, justification=None))
                truth[(rid, f)] = (None if na else lab, f"P{p + 1:02d}", None if na else onset)
    def extra(rid: str, path: str, sha: str, status: str, patient: str | None) -> None:
        """A recording beside the labelled ones; ``patient``: its file name carries labels of this patient."""
        id_rows.append(dict(recording_id=rid, source_path=path, content_sha256=sha * 64, size_bytes=1, mtime_ns=0,
                            status="accepted", ingested_at=now))
        deid.append(_deid_row(rid, status))
        if patient:
            name = Path(path).name
            label_rows.extend(dict(source_name=name, feature_id=f, label=True, annotator_1=True, annotator_2=True,
                                   annotator_3=True, onset_s=None, offset_s=None, justification=None)
                              for f in catalog.ids)
            rec_rows.append(dict(source_name=name, patient_id=patient, duration_s=60.0, fps=12.0, width=384,
                                 height=288, seed=0))

    # one recording quarantined by deidentify (labelled), one accepted but never annotated, and a gait clip
    # (another cohort) whose file name the seizure labels happen to carry: never a folds recording
    extra("RQUARANTIN", "/secure/inbox/P01_R9.mp4", "1", "quarantined", "P01")
    extra("RUNLABELED", "/secure/inbox/extra.mp4", "2", "ok", None)
    extra("RGAITCLIP0", "/secure/gait/P02_R7.mp4", "3", "ok", "P02")
    write_table("manifest", [_manifest_row(r["recording_id"], now, GAIT if r["recording_id"] == "RGAITCLIP0"
                                           else SEIZURE) for r in id_rows], data / "01_ingest" / "manifest.parquet")
    write_table("id_map", id_rows, data / "01_ingest" / ID_MAP)
    write_table("deidentified", deid, data / "02_deidentify" / "deidentified.parquet")
    write_table("labels", label_rows, tmp_path / "labels.parquet")
    write_table("recordings", rec_rows, tmp_path / "recordings.parquet")
    params = Params(folds=FoldsParams(labels=str(tmp_path / "labels.parquet"),
                                      recordings=str(tmp_path / "recordings.parquet"), restarts=100))
    return data, params, truth


@pytest.fixture
def site_key(tmp_path, monkeypatch):
    key_file = tmp_path / "id_key"
    key_file.write_bytes(KEY)
    monkeypatch.setenv("SEMIOFLOW_ID_KEY_FILE", str(key_file))
    return KEY


def test_stage_moves_labels_onto_pseudonyms_without_leakage(tmp_path, site_key):
    data, params, truth = _cohort(tmp_path)
    summary = folds.run(data, data / "11_folds", params)
    fold_rows = read_table("folds", data / "11_folds" / folds.FOLDS).to_pylist()
    label_rows = read_table("recording_labels", data / "11_folds" / folds.LABELS).to_pylist()

    # only de-identified, annotated recordings of the seizure cohort; the others are counted, not silently dropped
    assert {r["recording_id"] for r in fold_rows} == {rid for rid, _ in truth}
    assert summary["unlabelled"] == 1 and summary["not_deidentified"] == 1
    assert summary["recordings"] == 21 and summary["patients"] == 7 and sum(summary["fold_recordings"]) == 21
    # no patient in two folds; every fold used
    fold_of_patient: dict[str, set[int]] = {}
    for r in fold_rows:
        fold_of_patient.setdefault(r["patient_id"], set()).add(r["fold"])
    assert all(len(v) == 1 for v in fold_of_patient.values())
    assert sorted({r["fold"] for r in fold_rows}) == [0, 1, 2]
    # labels arrive on the right recording (joined through the private id map's file names)
    # (not-assessable cells are left out of the labels and counted per feature)
    assert {(r["recording_id"], r["feature_id"]): r["label"] for r in label_rows} == \
        {k: v[0] for k, v in truth.items() if v[0] is not None}
    not_assessable = {f: sum(1 for (_, g), v in truth.items() if g == f and v[0] is None) for f in load_catalog().ids}
    assert summary["not_assessable"] == not_assessable and sum(not_assessable.values()) > 20
    # annotated onsets of present features arrive on the pseudonymous ids (S3 Task 4's truth)
    onsets = read_table("onsets", data / "11_folds" / folds.ONSETS).to_pylist()
    assert {(r["recording_id"], r["feature_id"]): (r["onset_s"], r["offset_s"]) for r in onsets} == \
        {k: (v[2], v[2] + 4) for k, v in truth.items() if v[2] is not None} != {}
    # patient ids are HMAC pseudonyms of the annotation table's ids; raw ids appear nowhere
    expected = {rid: patient_pseudonym(raw, site_key) for (rid, _), (_, raw, _) in truth.items()}
    assert {r["recording_id"]: r["patient_id"] for r in fold_rows} == expected
    assert all(p.startswith("P") and len(p) == 11 and int(p[1:], 16) >= 0 for p in expected.values())
    text = json.dumps(summary) + (data / "11_folds" / folds.SUMMARY).read_text()
    assert "P01" not in text and ".mp4" not in text and "secure" not in text
    # same key, same pseudonyms and folds: a rerun changes nothing
    assert folds.run(data, data / "11_folds", params) == summary
    assert read_table("folds", data / "11_folds" / folds.FOLDS).to_pylist() == fold_rows


def test_unknown_feature_in_annotations_fails_naming_it(tmp_path, site_key):
    data, params, _ = _cohort(tmp_path, n_patients=3, per_patient=1)
    labels = read_table("labels", params.folds.labels).to_pylist()
    labels[0]["feature_id"] = "clonus"
    with pytest.raises(SemioflowError, match="clonus"):  # semioflow never writes one
        write_table("labels", labels, params.folds.labels)
    pq.write_table(pa.Table.from_pylist(labels, schema=TABLES["labels"]), params.folds.labels)  # another tool did
    with pytest.raises(SemioflowError, match="clonus"):
        folds.run(data, data / "11_folds", params)


def test_diagnoses_move_onto_pseudonyms_and_an_unset_table_skips(tmp_path, site_key):
    import dataclasses

    data, params, truth = _cohort(tmp_path, n_patients=4, per_patient=2)
    rids = sorted({rid for rid, _ in truth})
    dx = {f"P{int(rid[1:3]) + 1:02d}_R{int(rid[3:], 16) + 1}.mp4": ("NES" if int(rid[1:3]) % 2 else "ES") for rid in rids}
    write_table("diagnoses", [dict(source_name=n, diagnosis=d) for n, d in dx.items()], tmp_path / "dx.parquet")
    params = dataclasses.replace(params, folds=dataclasses.replace(params.folds, diagnoses=str(tmp_path / "dx.parquet")))
    summary = folds.run(data, data / "11_folds", params)
    rows = read_table("recording_diagnoses", data / "11_folds" / folds.DIAGNOSES).to_pylist()
    assert summary["diagnosed"] == len(rids) == len(rows)
    assert {r["recording_id"]: r["diagnosis"] for r in rows} == {rid: "NES" if int(rid[1:3]) % 2 else "ES" for rid in rids}
    assert all(r["patient_id"].startswith("P") and len(r["patient_id"]) == 11 for r in rows)
    params = dataclasses.replace(params, folds=dataclasses.replace(params.folds, diagnoses=""))
    assert folds.run(data, data / "11_folds", params)["diagnosed"] == 0
    assert not (data / "11_folds" / folds.DIAGNOSES).exists()
