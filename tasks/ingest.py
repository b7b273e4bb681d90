"""ingest: scan the inboxes, probe each new recording, assign pseudonymous ids and a cohort.

Two inboxes, one per cohort (``tasks.schema.COHORTS``): ``ingest.inbox``
(seizure recordings) and ``ingest.gait_inbox`` (gait clips).  Every
recording of either goes the same way (manifest, de-identification); the
manifest's ``cohort`` says which track's stages see it afterwards.

Outputs (in ``out_dir``, normally ``data/01_ingest/``):

* ``manifest.parquet`` (table ``manifest``): one row per accepted recording,
  pseudonymous ``recording_id`` and its ``cohort``, no file names.
* ``quarantine.parquet`` (table ``quarantine``): files that cannot be used,
  with a reason code and a clear detail (no file names in it either).
* ``private/id_map.parquet`` (table ``id_map``, mode 0600 in a 0700 folder):
  the one place that maps ids to original paths.

Ids are ``R`` + 10 hex digits of HMAC-SHA256(site key, file content hash):
not derived from names or metadata, stable across re-runs and clean
rebuilds on the same site, and not reversible without the key.  The run is
idempotent: known files (same path, size and mtime, or same content) add
nothing; a file modified less than ``settle_s`` ago is left for the next run.
A known path that comes back grown (its old bytes, then more: a writer that
paused longer than ``settle_s``, then finished) is a new recording that
supersedes its old id: the old id leaves the manifest and gets a
``superseded`` quarantine row.  A path that comes back with unrelated content
(a name reused every night) is a second recording; the first keeps its id.  The
raw file is opened, hashed and probed in a timed child process, non-blocking:
a held lease or a stalled share leaves the file for the next run.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import is_partial
from tasks.errors import SemioflowError, error_words
from tasks.media import Inspection, ProbeInfo, ProbeTimeout, SourceBusy, inspect_with_timeout
from tasks.params import IngestParams, Params
from tasks.contract import Out, Stage
from tasks.identity import ID_MAP, load_id_key, recording_id, write_private
from tasks.schema import COHORTS, GAIT, SEIZURE, read_table, write_table

MANIFEST = "manifest.parquet"
QUARANTINE = "quarantine.parquet"
HEADER_MISMATCH = 0.5  # relative disagreement between header durations that is absurd
HEADER_MISMATCH_MIN_S = 2.0  # ...and at least this many seconds
MIN_DURATION_S = 1.0  # shorter recordings cannot fill a single analysis frame pair
MIN_INDEX_COVERAGE = 0.99  # share of indexed video samples that must be present
QUARANTINE_COMMAND = "`semioflow quarantine`"  # lists quarantined files with their reasons (console only)


@dataclass(frozen=True)
class IngestReport:
    """What one ingest run did (counts only; no names)."""

    accepted: tuple[str, ...] = ()
    quarantined: tuple[tuple[str, str], ...] = ()  # (recording_id, reason)
    pending: int = 0
    known: int = 0
    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unreadable: int = 0  # held by another program, not a regular file, or too slow to read: tried next run
    superseded: tuple[str, ...] = ()  # old ids whose source file came back changed

    def describe(self) -> str:
        extra = f", {self.unreadable} not readable now (tried again next run)" if self.unreadable else ""
        extra += f", {len(self.superseded)} superseded by a changed file" if self.superseded else ""
        listed = f" ({QUARANTINE_COMMAND} lists them)" if self.quarantined else ""
        return (
            f"ingest: {len(self.accepted)} new, {len(self.quarantined)} quarantined{listed}, "
            f"{self.known} already known, {self.pending} still being written{extra}"
        )


def scan_inbox(inbox: Path, params: IngestParams, *, now: float | None = None) -> tuple[list[Path], list[Path]]:
    """Candidate files under ``inbox`` (recursive, sorted): (ready, still being written).

    Hidden files and our own temp files are ignored; extensions are matched
    case-insensitively against ``params.extensions``.
    """
    if not inbox.is_dir():
        # no path here: this message reaches Prefect's logs and database, and an inbox path often names a ward
        raise SemioflowError("the inbox folder (ingest.inbox / ingest.gait_inbox or --inbox) does not exist or is "
                             "not a folder")
    now = time.time() if now is None else now
    exts = {e.lower() for e in params.extensions}
    ready, pending = [], []
    for p in sorted(inbox.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or is_partial(p) or p.suffix.lower() not in exts:
            continue
        (pending if now - p.stat().st_mtime < params.settle_s else ready).append(p)
    return ready, pending


def classify(info: ProbeInfo) -> tuple[str | None, str, list[str]]:
    """Decide on a probed file: (quarantine reason or None, detail, flags)."""
    flags = []
    if not info.first_frame_ok:
        return "undecodable", f"the {info.video_codec} video stream does not decode", flags
    if info.duration_s < MIN_DURATION_S:
        return "too_short", f"duration {info.duration_s:.2f} s is below {MIN_DURATION_S:g} s", flags
    if info.index_coverage is not None and info.index_coverage < MIN_INDEX_COVERAGE:
        return "corrupt", f"only {info.index_coverage:.0%} of the video data is present (decoded coverage)", flags
    d = info.header_durations_s
    if len(d) >= 2:
        lo, hi = min(d), max(d)
        if hi - lo > HEADER_MISMATCH_MIN_S and hi > lo * (1 + HEADER_MISMATCH):
            shown = ", ".join(f"{x:.1f}" for x in d)
            return "inconsistent_header", f"header durations disagree ({shown} s): frame count far from duration x fps", flags
    if not info.has_audio:
        flags.append("no_audio")
    if info.vfr:
        flags.append("vfr")
    if info.rotation_deg:
        flags.append(f"rotated_{info.rotation_deg}")
    if info.width % 2 or info.height % 2:
        flags.append("odd_dimensions")
    if info.video_codec not in ("h264",):
        flags.append(f"codec_{info.video_codec}")
    if info.video_streams > 1:
        flags.append("multiple_video_streams")  # the largest is read (media.video_stream)
    return None, "", flags


def _scrub(text: str, path: Path) -> str:
    """Remove the file's path and name from a message (FFmpeg quotes them); error numbers in words."""
    text = error_words(text)
    for token in sorted({str(path), str(path.resolve()), path.name, path.stem}, key=len, reverse=True):
        if token:
            text = text.replace(token, "<file>")
    return " ".join(text.split())


def _probe_reason(path: Path, seen: Inspection) -> tuple[str, str]:
    msg = _scrub(seen.error or "", path)
    if seen.timed_out:
        return "decoder_timeout", msg
    if "no video stream" in msg:
        return "no_video_stream", msg
    head = seen.head
    if head[4:8] == b"ftyp" and ("moov" in msg or "Invalid data" in msg):
        return "truncated", f"MP4/MOV without its index (moov atom): the file was cut short ({msg})"
    return "not_a_video", msg


def _read_or_empty(name: str, path: Path) -> pa.Table:
    from tasks.schema import empty_table

    return read_table(name, path) if path.exists() else empty_table(name)


def _manifest_rows(path: Path) -> list[dict]:
    """The manifest so far; one written before cohorts existed holds seizure recordings only."""
    names = set(pq.read_schema(path).names) if path.exists() else {"cohort"}
    if "cohort" not in names or "content_sha256" in names:
        # an older manifest: add the cohort, drop the raw file's hash (it now lives in the private map only)
        return [{**{k: v for k, v in r.items() if k != "content_sha256"}, "cohort": r.get("cohort", SEIZURE)}
                for r in pq.read_table(path).to_pylist()]
    return _read_or_empty("manifest", path).to_pylist()


def ingest(inbox: Path, out_dir: Path, params: IngestParams, *, id_key: bytes, now: float | None = None,
           cohort: str = SEIZURE) -> IngestReport:
    """Add new recordings from ``inbox`` to the manifest as recordings of ``cohort`` (see module doc).

    Never modifies or moves the raw files.  Bad files get a quarantine row
    and the rest of the batch continues.  A file whose content is already
    known (in either cohort) adds nothing.
    """
    if cohort not in COHORTS:
        raise SemioflowError(f"unknown cohort {cohort!r} (cohorts: {', '.join(COHORTS)})")
    inbox, out_dir = Path(inbox), Path(out_dir)
    ready, pending = scan_inbox(inbox, params, now=now)
    id_map = _read_or_empty("id_map", out_dir / ID_MAP).to_pylist()
    manifest = _manifest_rows(out_dir / MANIFEST)
    quarantine = _read_or_empty("quarantine", out_dir / QUARANTINE).to_pylist()
    by_stat = {(r["source_path"], r["size_bytes"], r["mtime_ns"]) for r in id_map}
    by_hash = {r["content_sha256"] for r in id_map}
    by_path = {r["source_path"]: r for r in id_map if r["status"] != "superseded"}
    accepted, quarantined, flags_by_id, known, unreadable, superseded = [], [], {}, 0, 0, []
    for path in ready:
        try:
            st = path.stat()
            src = str(path.resolve())
        except OSError:  # gone since the scan, or unreadable: tried again next run (no name in any message)
            unreadable += 1
            continue
        if (src, st.st_size, st.st_mtime_ns) in by_stat:
            known += 1
            continue
        old = by_path.get(src)
        try:
            seen = inspect_with_timeout(path, params.read_timeout_s, params.probe_timeout_s,
                                        prefix_bytes=old["size_bytes"] if old else 0)
        except (SourceBusy, ProbeTimeout):
            unreadable += 1  # no id without the content hash: the next run tries again
            continue
        if seen.sha256 in by_hash:
            known += 1  # same content under another name: one recording, not two
            continue
        rid = recording_id(seen.sha256, id_key)
        ts = dt.datetime.now(dt.timezone.utc)
        if old is not None and seen.size > old["size_bytes"] and seen.prefix_sha256 == old["content_sha256"]:
            # the same path, grown: what was ingested before was this file half-written.  (A path reused for
            # another recording, e.g. a nightly latest.mp4, does not start with the old bytes: both stay.)
            old["status"] = "superseded"
            manifest = [r for r in manifest if r["recording_id"] != old["recording_id"]]
            quarantine.append(dict(recording_id=old["recording_id"], stage="ingest", reason="superseded",
                                   detail=f"its source file changed after ingest (now recording {rid})",
                                   decoded_coverage=None, quarantined_at=ts))
            superseded.append(old["recording_id"])
        reason, detail, flags, info = _assess(path, seen)
        status = "accepted" if reason is None else "quarantined"
        row = dict(recording_id=rid, source_path=src, content_sha256=seen.sha256, size_bytes=seen.size,
                   mtime_ns=st.st_mtime_ns, status=status, ingested_at=ts)
        id_map.append(row)
        by_path[src] = row
        by_hash.add(seen.sha256)
        if reason is not None:
            coverage = info.index_coverage if info is not None else None
            quarantine.append(dict(recording_id=rid, stage="ingest", reason=reason, detail=detail,
                                   decoded_coverage=coverage, quarantined_at=ts))
            quarantined.append((rid, reason))
            continue
        manifest.append(_manifest_row(rid, cohort, seen.size, info, flags, ts))
        accepted.append(rid)
        flags_by_id[rid] = tuple(flags)
    # The private map is written first: a crash after it re-derives the same ids (write_private makes its
    # folder owner-only).
    write_private("id_map", id_map, out_dir / ID_MAP)
    write_table("manifest", manifest, out_dir / MANIFEST)
    write_table("quarantine", quarantine, out_dir / QUARANTINE)
    return IngestReport(accepted=tuple(accepted), quarantined=tuple(quarantined), pending=len(pending),
                        known=known, flags=flags_by_id, unreadable=unreadable, superseded=tuple(superseded))


def _assess(path: Path, seen: Inspection) -> tuple[str | None, str, list[str], ProbeInfo | None]:
    if seen.size == 0:
        return "empty_file", "the file has zero bytes", [], None
    if seen.info is None:
        reason, detail = _probe_reason(path, seen)
        return reason, detail, [], None
    reason, detail, flags = classify(seen.info)
    return reason, _scrub(detail, path), flags, seen.info


def _manifest_row(rid: str, cohort: str, size: int, info: ProbeInfo, flags: list[str], ts) -> dict:
    return dict(
        recording_id=rid, cohort=cohort, size_bytes=size, container=info.container,
        video_codec=info.video_codec, width=info.width, height=info.height, fps=info.fps,
        duration_s=info.duration_s, n_frames=info.n_frames, rotation_deg=info.rotation_deg, vfr=info.vfr,
        has_audio=info.has_audio, audio_codec=info.audio_codec, sample_rate=info.sample_rate, flags=flags,
        ingested_at=ts,
    )


def run(data_dir: Path, out_dir: Path, params: Params, inbox: str | None = None) -> dict:
    """Scan the seizure inbox (``inbox``, default ``ingest.inbox``) and the gait inbox into the manifest.

    Returns counts and a summary line only.  An unset inbox is not scanned; an
    absent gait folder is a note (a site without a gait study), an absent
    seizure folder an error.
    """
    ip, key = params.ingest, load_id_key()
    seizure = inbox if inbox is not None else ip.inbox
    if not seizure and not ip.gait_inbox:
        raise SemioflowError("no inbox to scan: set ingest.inbox (seizure recordings) or ingest.gait_inbox")
    reports, notes = {}, []
    if seizure:
        reports[SEIZURE] = ingest(Path(seizure), out_dir, ip, id_key=key)
    if ip.gait_inbox and Path(ip.gait_inbox).is_dir():
        reports[GAIT] = ingest(Path(ip.gait_inbox), out_dir, ip, id_key=key, cohort=GAIT)
    elif ip.gait_inbox:
        notes.append("no gait clip folder at ingest.gait_inbox (`semioflow synth gait` makes a phantom one)")
    for name, table in (("manifest", MANIFEST), ("quarantine", QUARANTINE)):
        if not (Path(out_dir) / table).exists():  # nothing scanned: later stages read an empty cohort
            write_table(name, [], Path(out_dir) / table)
    line = "; ".join([r.describe() if c == SEIZURE else r.describe().replace("ingest:", "ingest gait:", 1)
                      for c, r in reports.items()] + notes)
    return {"accepted": sum(len(r.accepted) for r in reports.values()),
            "quarantined": [q for r in reports.values() for _, q in r.quarantined],
            "known": sum(r.known for r in reports.values()), "pending": sum(r.pending for r in reports.values()),
            "line": line}


STAGE = Stage(
    "ingest", "source", run, "new inbox files probed, pseudonymised (keyed HMAC ids) or quarantined with a reason",
    external=("ingest.inbox", "ingest.gait_inbox"),
    outs=(Out(MANIFEST), Out(QUARANTINE)),
    note="the raw inboxes are not DVC deps (their paths and file names would reach dvc.lock and DVC's state): "
         "the stage always runs; the private id map (private/) is deliberately not tracked")
