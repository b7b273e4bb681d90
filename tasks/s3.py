"""S³ (Seizure-Semiology-Suite) files: read its labels, diagnoses and model outputs; write ours in its layout.

S³ is the field's public benchmark for the same 20 features (30 s windows,
5 s overlap, 2 fps).  semioflow ships none of its data; a site that holds
its videos reads the annotation files with these functions.  Formats:

* labels, one CSV row per video: ``file_name``, then per feature
  ``<feature>`` (``yes`` / ``no`` / empty = not assessable),
  ``justification_for_<feature>`` and, for most features,
  ``start_time_for_<feature>`` / ``end_time_for_<feature>`` (``MM:SS:cc``);
* diagnoses: ``file_name,label`` with ``ES`` / ``NES``;
* model outputs, one row per segment ``<video>_segment_<n>.mp4`` with
  ``<feature>`` (``yes`` / ``no`` / ``fail`` / ``na``) and
  ``justification_for_<feature>``; merged to the video by any-yes (``fail``
  and ``na`` count as not-yes, S³'s rule).

Feature names are read through the catalog (``Catalog.resolve``: ids and
declared aliases, e.g. S³'s ``close_eyes``); an unknown name is an error
naming it, never a dropped column.  S³ file names carry a patient code and a
date: they stay inside what these functions return (the caller maps them to
pseudonymous ids) and are never put in an error message: rows are named by
their line number.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.atomic import atomic_write_text
from tasks.catalog import Catalog
from tasks.errors import SemioflowError
from tasks.metrics import confusion, scores

FILE = "file_name"
JUSTIFICATION = "justification_for_"
START, END = "start_time_for_", "end_time_for_"
LABEL_STATES = {"yes": "yes", "no": "no", "": "not_assessable"}  # S³ cell -> our label state
OUTPUT_STATES = ("yes", "no", "fail", "na")
DIAGNOSES = ("ES", "NES")
SEGMENT = re.compile(r"^(?P<video>.+)_segment_(?P<n>\d+)(?P<ext>\.[A-Za-z0-9]+)$")
DEFAULT_PATIENT_PATTERN = r"^(?P<patient>[^@]+)@"  # S³: A0002@5-13-2021@UA6693LK@sz_v1_1.mp4 -> A0002
CENTIS_PER_S = 100  # the third field of S³'s MM:SS:cc times


class S3FormatError(SemioflowError):
    """An S³ file that does not have the layout this module reads (the message says where)."""


@dataclass(frozen=True)
class S3Label:
    """One video x feature of an S³ labels file."""

    file_name: str
    feature_id: str  # ours (aliases resolved)
    state: str  # yes | no | not_assessable
    justification: str | None
    onset_s: float | None
    offset_s: float | None


def parse_time(text: str, where: str) -> float | None:
    """Seconds of an S³ ``MM:SS:cc`` time (None for an empty cell)."""
    text = (text or "").strip()
    if not text:
        return None
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise S3FormatError(f"{where}: time {text!r} is not MM:SS:cc")
    minutes, seconds = int(parts[0]), int(parts[1])
    centis = int(parts[2]) if len(parts) == 3 else 0
    if seconds >= 60 or centis >= CENTIS_PER_S:
        raise S3FormatError(f"{where}: time {text!r} is not MM:SS:cc")
    return minutes * 60 + seconds + centis / CENTIS_PER_S


def _rows(path: Path, file_col: str = FILE) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or file_col not in reader.fieldnames:
            # not the header's text: without a header line it is the first row, a file name
            raise S3FormatError(f"{Path(path).name}: no {file_col!r} column in the first line (is the header missing?)")
        return list(reader.fieldnames), list(reader)


def _feature_columns(header: list[str], catalog: Catalog, where: str) -> dict[str, str]:
    """S³ feature column -> our feature id; every column must be a known kind."""
    out = {}
    for col in header:
        if col == FILE or col.startswith((JUSTIFICATION, START, END)):
            continue
        try:
            out[col] = catalog.resolve(col)
        except SemioflowError as exc:
            raise S3FormatError(f"{where}: column {col!r}: {exc}") from None
    for col in header:
        for prefix in (JUSTIFICATION, START, END):
            if col.startswith(prefix) and col[len(prefix):] not in out:
                raise S3FormatError(f"{where}: column {col!r} names no feature column of the file")
    if len(set(out.values())) != len(out):
        raise S3FormatError(f"{where}: two columns name the same feature ({sorted(out)})")
    return out


def read_labels(path: Path, catalog: Catalog) -> list[S3Label]:
    """Every video x feature of an S³ labels CSV (see module doc); ``S3FormatError`` names a bad cell."""
    name = Path(path).name
    header, rows = _rows(path)
    features = _feature_columns(header, catalog, name)
    out, seen = [], set()
    for line, row in enumerate(rows, start=2):
        video = (row[FILE] or "").strip()
        if not video:
            raise S3FormatError(f"{name} line {line}: empty {FILE}")
        if video in seen:
            raise S3FormatError(f"{name} line {line}: a video listed twice")
        seen.add(video)
        for col, fid in features.items():
            value = (row[col] or "").strip().lower()
            if value not in LABEL_STATES:
                raise S3FormatError(f"{name} line {line}: {col} is {value!r}, not yes, no or empty")
            just = (row.get(JUSTIFICATION + col) or "").strip() or None
            onset = parse_time(row.get(START + col, ""), f"{name} line {line} {START + col}")
            offset = parse_time(row.get(END + col, ""), f"{name} line {line} {END + col}")
            if onset is not None and offset is not None and offset < onset:
                raise S3FormatError(f"{name} line {line}: {col} ends before it starts")
            out.append(S3Label(video, fid, LABEL_STATES[value], just, onset, offset))
    return out


def read_diagnoses(path: Path, *, file_col: str = FILE, label_col: str = "label") -> dict[str, str]:
    """Video file name -> ``ES`` / ``NES`` from a diagnosis CSV: S³'s ``file_name,label`` by default (ours is
    ``source_name,diagnosis``)."""
    name = Path(path).name
    header, rows = _rows(path, file_col)
    if label_col not in header:
        raise S3FormatError(f"{name}: no {label_col!r} column")
    out = {}
    for line, row in enumerate(rows, start=2):
        label = (row[label_col] or "").strip().upper()
        if label not in DIAGNOSES:
            raise S3FormatError(f"{name} line {line}: {label_col} {label!r} is not ES or NES")
        out[row[file_col].strip()] = label
    return out


def read_segment_outputs(path: Path, catalog: Catalog) -> dict[str, dict[str, bool]]:
    """Per-segment model outputs merged to their video by any-yes: video file name -> feature id -> present.

    ``fail`` and ``na`` count as not-yes (S³'s rule); any other value is an error naming its line.
    """
    name = Path(path).name
    header, rows = _rows(path)
    features = _feature_columns(header, catalog, name)
    out: dict[str, dict[str, bool]] = {}
    for line, row in enumerate(rows, start=2):
        m = SEGMENT.match((row[FILE] or "").strip())
        if m is None:
            raise S3FormatError(f"{name} line {line}: {FILE} is not <video>_segment_<n>.<ext>")
        video = m["video"] + m["ext"]
        merged = out.setdefault(video, {fid: False for fid in features.values()})
        for col, fid in features.items():
            value = (row[col] or "").strip().lower()
            if value not in OUTPUT_STATES:
                raise S3FormatError(f"{name} line {line}: {col} is {value!r}, not one of {OUTPUT_STATES}")
            merged[fid] = merged[fid] or value == "yes"
    return out


def patient_of(file_name: str, pattern: str = DEFAULT_PATIENT_PATTERN) -> str:
    """The patient code in a file name: the ``patient`` group (else the first group) of ``pattern``."""
    m = re.search(pattern, file_name)
    if m is None:
        raise S3FormatError(f"a file name does not match the patient pattern {pattern!r}")
    return m.groupdict().get("patient") or m.group(1)


def s3_name(feature_id: str, catalog: Catalog) -> str:
    """The column name S³ uses for one of our features: its first alias, else the id."""
    f = catalog.by_id(feature_id)
    return f.aliases[0] if f.aliases else f.id


def write_predictions(path: Path, rows: dict[str, dict[str, tuple[bool, str | None]]], catalog: Catalog) -> Path:
    """Per-video predictions in S³'s labels layout, so its scripts score them like its own outputs.

    ``rows``: video file name -> feature id -> (present, justification); present None (not assessable: no
    media) is an empty cell, S³'s "not assessable", never "no".  Features in catalog order, S³'s column names
    (``s3_name``).  Written atomically.
    """
    features = [f.id for f in catalog.features if any(f.id in r for r in rows.values())]
    header = [FILE] + [c for fid in features for c in (s3_name(fid, catalog), JUSTIFICATION + s3_name(fid, catalog))]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for video in sorted(rows):
        line = [video]
        for fid in features:
            present, just = rows[video].get(fid, (None, None))
            line += ["" if present is None else ("yes" if present else "no"), just or ""]
        writer.writerow(line)
    atomic_write_text(Path(path), buf.getvalue(), mode=0o600)  # it names the source files
    return Path(path)


def score_outputs(labels: list[S3Label], outputs: dict[str, dict[str, bool]], catalog: Catalog) -> list[dict]:
    """S³ Task 1 scores of merged outputs (``read_segment_outputs``) against its labels, per feature in catalog
    order: the feature's catalog metric (F1 of yes, or macro F1 for verbal responsiveness), over the videos whose
    label is assessable; ``not_assessable`` counts the others.  A labelled video without outputs counts as
    not-yes (as ``fail``/``na`` do) and is counted in ``missing``."""
    rows = []
    for f in catalog.features:
        mine = [r for r in labels if r.feature_id == f.id]
        if not mine:
            continue
        scored = [r for r in mine if r.state != "not_assessable"]
        truth = np.array([r.state == "yes" for r in scored], bool)
        said = np.array([outputs.get(r.file_name, {}).get(f.id, False) for r in scored], bool)
        s = scores(confusion(truth, said), f.metric)
        rows.append({"feature_id": f.id, "metric": f.metric, "f1": float(s["f1"]), "n": len(scored),
                     "positives": int(truth.sum()), "not_assessable": len(mine) - len(scored),
                     "missing": sum(r.file_name not in outputs for r in scored)})
    return rows
