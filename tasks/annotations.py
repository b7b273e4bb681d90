"""Annotation import: a study's labels, in S³'s layout or ours, turned into the tables the folds stage reads.

``import_labels(fmt, source, out_dir)`` writes, in ``out_dir`` (the
annotation side: it names source files, so it is kept with the raw
recordings, never under ``data/``):

* ``labels.parquet`` (table ``labels``): one row per file x feature;
  ``label`` true/false, or null where the annotators marked the feature not
  assessable; annotators where known (S³ has one consensus label); onset and
  offset in seconds where annotated; the annotator's justification;
* ``diagnoses.parquet`` (table ``diagnoses``, with ``--diagnoses``): ES / NES
  per file (S³ Task 7's truth);
* ``patients.parquet`` (table ``annotation_patients``): file -> patient id,
  from a ``patient_id`` column or parsed from the file name by a regular
  expression (S³'s names start with the patient code: ``A0002@…``).

Point ``folds.labels`` and ``folds.recordings`` at them; the folds stage
matches file names to ingested recordings through the private id map and
pseudonymises patient ids like recording ids.

Formats: ``s3`` (``tasks.s3.read_labels``) and ``semioflow``: a CSV (or
Parquet) with ``source_name``, ``feature_id`` (ids or catalog aliases),
``label`` (yes / no / empty, or true/false/null), and optionally
``patient_id``, ``annotator_1..3``, ``onset_s``, ``offset_s``,
``justification``.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from tasks.catalog import Catalog, load_catalog
from tasks.errors import SemioflowError
from tasks import layout
from tasks.identity import source_names
from tasks.s3 import DEFAULT_PATIENT_PATTERN, patient_of, read_labels, write_predictions
from tasks.schema import read_table, write_table

FORMATS = ("s3", "semioflow")
LABELS = "labels.parquet"
PATIENTS = "patients.parquet"
_BOOL = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False, "": None}
OPTIONAL = ("annotator_1", "annotator_2", "annotator_3", "onset_s", "offset_s", "justification")


def _flag(value, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _BOOL:
        raise SemioflowError(f"{where}: {value!r} is not yes, no or empty")
    return _BOOL[text]


def _seconds(value, where: str) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise SemioflowError(f"{where}: {value!r} is not a number of seconds") from None


def _ours(path: Path, catalog: Catalog) -> list[dict]:
    if path.suffix.lower() == ".parquet":
        rows = pq.read_table(path).to_pylist()
    else:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    out = []
    for line, r in enumerate(rows, start=2):
        where = f"{path.name} row {line}"
        missing = [c for c in ("source_name", "feature_id", "label") if c not in r]
        if missing:
            raise SemioflowError(f"{where}: no column(s) {', '.join(missing)}")
        out.append(dict(source_name=str(r["source_name"]).strip(), feature_id=catalog.resolve(str(r["feature_id"]).strip()),
                        label=_flag(r["label"], where), patient_id=r.get("patient_id") or None,
                        **{f"annotator_{k}": _flag(r.get(f"annotator_{k}"), where) for k in (1, 2, 3)},
                        onset_s=_seconds(r.get("onset_s"), where), offset_s=_seconds(r.get("offset_s"), where),
                        justification=(str(r.get("justification") or "").strip() or None)))
    return out


DIAGNOSES = "diagnoses.parquet"


def import_diagnoses(source: Path, out_dir: Path) -> dict:
    """``file_name,label`` (S³) or ``source_name,diagnosis`` (ours) with ES / NES -> ``out_dir/diagnoses.parquet``
    (table ``diagnoses``, what ``folds.diagnoses`` points at).  Returns counts."""
    from tasks.s3 import read_diagnoses

    source = Path(source)
    with open(source, newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), [])
    ours = "source_name" in header
    dx = read_diagnoses(source, file_col="source_name", label_col="diagnosis") if ours else read_diagnoses(source)
    write_table("diagnoses", [dict(source_name=n, diagnosis=d) for n, d in sorted(dx.items())], out_dir / DIAGNOSES)
    return {"diagnosed": len(dx), "es": sum(d == "ES" for d in dx.values())}


def import_labels(fmt: str, source: Path, out_dir: Path, *, patient_pattern: str = DEFAULT_PATIENT_PATTERN,
                  catalog: Catalog | None = None) -> dict:
    """Read ``source`` (format ``fmt``) and write ``out_dir/labels.parquet`` + ``patients.parquet``.

    Returns counts only (files, patients, rows, per state): no file name, no patient code.
    """
    if fmt not in FORMATS:
        raise SemioflowError(f"unknown labels format {fmt!r} (formats: {', '.join(FORMATS)})")
    catalog = catalog or load_catalog()
    source, out_dir = Path(source), Path(out_dir)
    if fmt == "s3":
        rows = [dict(source_name=r.file_name, feature_id=r.feature_id,
                     label=None if r.state == "not_assessable" else r.state == "yes", patient_id=None,
                     annotator_1=None, annotator_2=None, annotator_3=None, onset_s=r.onset_s, offset_s=r.offset_s,
                     justification=r.justification) for r in read_labels(source, catalog)]
    else:
        rows = _ours(source, catalog)
    seen = Counter((r["source_name"], r["feature_id"]) for r in rows)
    if (twice := sum(n > 1 for n in seen.values())):
        raise SemioflowError(f"{source.name}: {twice} file x feature pair(s) labelled twice")
    patients = {}
    for r in rows:
        pid = r.pop("patient_id") or patient_of(r["source_name"], patient_pattern)
        if patients.setdefault(r["source_name"], pid) != pid:
            raise SemioflowError(f"{source.name}: one file is given two patient ids")
    write_table("labels", rows, out_dir / LABELS)
    write_table("annotation_patients", [dict(source_name=n, patient_id=p) for n, p in sorted(patients.items())],
                out_dir / PATIENTS)
    states = Counter("not_assessable" if r["label"] is None else "yes" if r["label"] else "no" for r in rows)
    return {"files": len(patients), "patients": len(set(patients.values())), "rows": len(rows),
            "yes": states["yes"], "no": states["no"], "not_assessable": states["not_assessable"],
            "with_onset": sum(r["onset_s"] is not None for r in rows)}


def export_s3(data_dir: Path, out: Path, *, video_arm: str = "raw", audio_arm: str = "audio_raw",
              catalog: Catalog | None = None) -> dict:
    """Write the aggregated MLLM predictions in S³'s per-video layout (``tasks.s3.write_predictions``).

    Video features come from ``video_arm``, audio features from ``audio_arm``; a justification is the one of
    the first window that said yes.  The file is keyed by the original file names (S³'s scripts match on
    them), found through the private id map: it identifies recordings, so it is written owner-only and
    belongs with the raw recordings.  Returns counts only.
    """
    catalog = catalog or load_catalog()
    data_dir = Path(data_dir)
    preds = read_table("predictions", data_dir / layout.PREDICTIONS).to_pylist()
    evidence = read_table("evidence", data_dir / layout.EVIDENCE).to_pylist()
    arm_of = {f.id: video_arm if f.modality == "video" else audio_arm for f in catalog.features}
    first_words: dict[tuple, tuple[int, str | None]] = {}
    for e in evidence:
        key = (e["recording_id"], e["feature_id"], e["arm"], e["model_id"])
        if key not in first_words or e["window_index"] < first_words[key][0]:
            first_words[key] = (e["window_index"], e["justification"])
    chosen = [p for p in preds if p["arm"] == arm_of[p["feature_id"]]]
    models = {p["model_id"] for p in chosen}
    if len(models) > 1:
        raise SemioflowError(f"the chosen arms were answered by {len(models)} models: export one model's run")
    if not chosen:
        raise SemioflowError(f"no predictions of arms {video_arm!r} / {audio_arm!r} in {layout.PREDICTIONS}")
    names = source_names(layout.stage_dir(data_dir, "ingest"), {p["recording_id"] for p in chosen})
    rows: dict[str, dict[str, tuple[bool, str | None]]] = {}
    for p in chosen:
        just = first_words.get((p["recording_id"], p["feature_id"], p["arm"], p["model_id"]), (0, None))[1]
        # not assessable (no media): None, an empty cell, S³'s "not assessable" -- never "no"
        present = None if p["predicted"] is None else bool(p["predicted"])
        rows.setdefault(names[p["recording_id"]], {})[p["feature_id"]] = (present, just)
    write_predictions(Path(out), rows, catalog)  # written 0600 from the start (it names the files)
    return {"videos": len(rows), "features": len({f for r in rows.values() for f in r}),
            "positive": sum(bool(v[0]) for r in rows.values() for v in r.values()),
            "not_assessable": sum(v[0] is None for r in rows.values() for v in r.values())}
