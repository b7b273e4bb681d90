"""review: blinded expert review of model explanations — storage, case sampling, statistics.

Two studies, one database (SQLAlchemy Core: SQLite by default, PostgreSQL by URL):

* **Study 1, faithfulness** (``faithfulness``): reviewers score the
  justification of correctly predicted samples 1-5.  A sample is one
  recording x feature x arm x model decision of ``10_aggregate`` that agrees
  with the reference label of ``11_folds/labels.parquet``: every true
  positive, plus as many true negatives as true positives drawn at random
  (seeded by ``base.seed``) per feature x arm x model, as in the study; a
  not-assessable decision (no media) is neither, and a case's windows without
  media are listed as not assessable.  A
  true positive shows the justifications of its yes windows
  (``10_aggregate/evidence.parquet``), a true negative those of its windows
  (all said no; ``09_query/answers.parquet``).  The case set is fixed the
  first time it is built (when labels and predictions exist): later data
  never re-draws the true negatives under ratings already given.
* **Study 2, blinded comparison** (``comparison``): per case, the rationales
  of up to three variants (table ``rationales``, written by any track; the
  paths in ``review.rationales``) are shown as A/B/C in an order shuffled per
  reviewer and case, each rated on four 1-5 scales (``SCALES``), plus best,
  second best and a comment.  An empty or whitespace-only rationale is none: it
  is left out of its case, and a case left without one is no case.  New case ids are appended; a stored case never
  changes.

Every rating is an upsert of one value the moment it is given.  Reviewers
are identified by name with an argon2 password hash; the web layer
(``tasks.review_app``) only ever queries the logged-in reviewer's rows and
never sends variant names or model ids to the browser.

Media: a case's video must be a de-identified file under ``MEDIA_DIRS`` of
the data dir (``deidentified_media``); anything else is refused.

Outputs of ``export`` (``out_dir`` = ``data_dir/17_review``):
``faithfulness.parquet`` (table ``faithfulness_ratings``), ``comparison.parquet``
(``comparison_ratings``), ``choices.parquet`` (``comparison_choices``),
``review_stats.parquet`` (``review_stats``) and ``review_stats.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import secrets
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from statistics import median

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tasks.answers import NO_MODEL, NOT_ASSESSABLE, is_random
from tasks.layout import ANSWERS, EVIDENCE, LABELS, PREDICTIONS, WINDOWS, folder, rel
from tasks.atomic import atomic_write_text
from tasks.catalog import load_catalog
from tasks.errors import ConfigError, SemioflowError
from tasks.cache import recorded_digest
from tasks.identity import secret_file, sha256_file
from tasks.params import Params, ReviewParams
from tasks.schema import read_table, write_table

STUDY_FAITHFULNESS = "faithfulness"
STUDY_COMPARISON = "comparison"
STUDIES = (STUDY_FAITHFULNESS, STUDY_COMPARISON)
SCALES = ("evidence_grounding", "explainability", "clinical_usefulness", "consistency")
SCALE_NAMES = {"evidence_grounding": "Evidence grounding", "explainability": "Explainability",
               "clinical_usefulness": "Clinical usefulness", "consistency": "Consistency"}
SCORE_MIN, SCORE_MAX = 1, 5  # every scale is a 1-5 Likert scale
SLOTS = ("A", "B", "C")
MAX_VARIANTS = len(SLOTS)
CHOICE_FIELDS = ("best", "second", "comment")
MAX_COMMENT_CHARS = 4000
MIN_PASSWORD_CHARS = 8
OVERALL = "overall"  # mean_likert over the four scales together
ALL = "all"  # key of a statistic over every feature / variant

OUT_DIR = folder("review")
DEFAULT_DB = rel("review", "review.sqlite")
VIDEO_DIR = rel("deidentify", "videos")  # full-rate de-identified video with audio: what Study 1 reviewers watch
# De-identified layers only: raw inbox files and the private id map are never under these.
MEDIA_DIRS = (VIDEO_DIR, rel("downsample", "videos"), rel("kinematics", "videos"))
MEDIA_SUFFIXES = (".mp4",)
TN_TP = ("tn", "tp")

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CASE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_SQLITE_BUSY_MS = 10_000  # writers wait this long for a concurrent writer instead of failing


metadata = sa.MetaData()
REVIEWERS = sa.Table(
    "reviewers", metadata,
    sa.Column("reviewer_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
CASES = sa.Table(
    "cases", metadata,
    sa.Column("study", sa.String(16), primary_key=True),
    sa.Column("case_id", sa.String(64), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON; variant names live here and never leave the server
)
FAITH_SCORES = sa.Table(
    "faithfulness_scores", metadata,
    sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("reviewers.reviewer_id"), primary_key=True),
    sa.Column("case_id", sa.String(64), primary_key=True),
    sa.Column("score", sa.SmallInteger, nullable=False),
    sa.Column("rated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint(f"score BETWEEN {SCORE_MIN} AND {SCORE_MAX}", name="faithfulness_score_range"),
)
LIKERT_SCORES = sa.Table(
    "comparison_scores", metadata,
    sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("reviewers.reviewer_id"), primary_key=True),
    sa.Column("case_id", sa.String(64), primary_key=True),
    sa.Column("variant", sa.String(200), primary_key=True),
    sa.Column("scale", sa.String(32), primary_key=True),
    sa.Column("score", sa.SmallInteger, nullable=False),
    sa.Column("rated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint(f"score BETWEEN {SCORE_MIN} AND {SCORE_MAX}", name="comparison_score_range"),
)
CHOICES = sa.Table(
    "comparison_choices", metadata,
    sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("reviewers.reviewer_id"), primary_key=True),
    sa.Column("case_id", sa.String(64), primary_key=True),
    sa.Column("best", sa.String(200), nullable=True),
    sa.Column("second", sa.String(200), nullable=True),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("rated_at", sa.DateTime(timezone=True), nullable=False),
)
SESSIONS = sa.Table(
    "sessions", metadata,
    # the SHA-256 of the cookie's session token: a copy of the database holds no usable session
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("reviewers.reviewer_id"), nullable=False, index=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
)
SECRETS = sa.Table(
    "app_secrets", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)


SECRET_ENV = "SEMIOFLOW_REVIEW_SECRET"
SECRET_FILE_ENV = "SEMIOFLOW_REVIEW_SECRET_FILE"
DEFAULT_SECRET_FILE = Path(".semioflow") / "review_secret"


class ReviewError(SemioflowError):
    """A rating, reviewer or case the review store refuses (the message says why)."""


# ---- database ----------------------------------------------------------------
def database_url(data_dir: Path, params: ReviewParams, override: str | None = None) -> str:
    """The database URL: ``override``, ``$<database_env>``, ``review.database``, else SQLite in the data dir."""
    url = override or (os.environ.get(params.database_env) if params.database_env else None) or params.database
    if url:
        return url
    path = Path(data_dir) / DEFAULT_DB
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def safe_url(engine: Engine) -> str:
    """The engine's URL with any password masked (for messages)."""
    return engine.url.render_as_string(hide_password=True)


def open_db(url: str) -> Engine:
    """Connect and create the review tables if missing (SQLite or PostgreSQL)."""
    try:
        engine = sa.create_engine(url, future=True, pool_pre_ping=True,
                                  connect_args={"check_same_thread": False} if url.startswith("sqlite") else {})
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise ConfigError(f"review database URL is not usable: {exc}") from None
    if engine.dialect.name not in ("sqlite", "postgresql"):
        raise ConfigError(f"review database must be SQLite or PostgreSQL, got {engine.dialect.name}")
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
            cur.close()
    try:
        metadata.create_all(engine)
    except sa.exc.OperationalError as exc:
        raise SemioflowError(f"cannot open the review database {safe_url(engine)}: "
                             f"{str(exc.orig).strip().splitlines()[0]}") from None
    return engine


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were written as UTC."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _upsert(conn: sa.Connection, table: sa.Table, keys: dict, values: dict) -> None:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table).values(**keys, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=values))


def session_secret() -> str:
    """The key that signs reviewer session cookies: ``$SEMIOFLOW_REVIEW_SECRET``, else the 0600 file
    ``$SEMIOFLOW_REVIEW_SECRET_FILE`` or ``.semioflow/review_secret`` (created on first use).

    Never in the database: anyone who can read a database file (SQLite is a file) could forge a session.
    """
    value = os.environ.get(SECRET_ENV, "")
    if value:
        if len(value) < 32:
            raise ConfigError(f"${SECRET_ENV} is too short: use at least 32 random characters")
        return value
    return secret_file(Path(os.environ.get(SECRET_FILE_ENV) or DEFAULT_SECRET_FILE), "review secret").decode()


def forget_db_secrets(engine: Engine) -> int:
    """Delete session secrets older versions kept in the database (``app_secrets``); returns how many."""
    with engine.begin() as conn:
        return conn.execute(SECRETS.delete()).rowcount or 0


# ---- reviewers ---------------------------------------------------------------
def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def add_reviewer(engine: Engine, name: str, password: str, *, replace: bool = False) -> int:
    """Create reviewer ``name`` (or, with ``replace``, set a new password); returns the reviewer id."""
    if not _NAME.match(name):
        raise ReviewError("reviewer names are 1-64 letters, digits, '.', '_' or '-'")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ReviewError(f"passwords need at least {MIN_PASSWORD_CHARS} characters")
    with engine.begin() as conn:
        row = conn.execute(sa.select(REVIEWERS.c.reviewer_id).where(REVIEWERS.c.name == name)).first()
        if row and not replace:
            raise ReviewError(f"reviewer {name!r} exists (use --reset to set a new password)")
        hashed = _hasher().hash(password)
        if row:
            conn.execute(REVIEWERS.update().where(REVIEWERS.c.reviewer_id == row[0]).values(password_hash=hashed))
            # a new password ends every session of the old one (a leaked password or a stolen cookie)
            conn.execute(SESSIONS.delete().where(SESSIONS.c.reviewer_id == row[0]))
            return int(row[0])
        return int(conn.execute(REVIEWERS.insert().values(name=name, password_hash=hashed, created_at=_now())
                                ).inserted_primary_key[0])


def authenticate(engine: Engine, name: str, password: str) -> int | None:
    """The reviewer id if ``password`` is ``name``'s, else None (unknown names cost the same hash check)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    with engine.begin() as conn:
        row = conn.execute(sa.select(REVIEWERS.c.reviewer_id, REVIEWERS.c.password_hash)
                           .where(REVIEWERS.c.name == name)).first()
    hasher = _hasher()
    stored = row[1] if row else _dummy_hash()
    try:
        hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    return int(row[0]) if row else None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(engine: Engine, reviewer_id: int) -> str:
    """A new session for ``reviewer_id``; returns its token (for the signed cookie; only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(SESSIONS.insert().values(token_hash=_token_hash(token), reviewer_id=reviewer_id,
                                              started_at=_now()))
    return token


def session_reviewer(engine: Engine, token: str, max_age_s: float) -> int | None:
    """The reviewer of a live session ``token`` (started less than ``max_age_s`` ago, not ended), else None."""
    with engine.begin() as conn:
        row = conn.execute(sa.select(SESSIONS.c.reviewer_id, SESSIONS.c.started_at)
                           .where(SESSIONS.c.token_hash == _token_hash(token))).first()
    if row is None or (_now() - _utc(row[1])).total_seconds() >= max_age_s:
        return None
    return int(row[0])


def end_session(engine: Engine, token: str) -> None:
    """Log a session out: its cookie no longer works, even a copy of it."""
    with engine.begin() as conn:
        conn.execute(SESSIONS.delete().where(SESSIONS.c.token_hash == _token_hash(token)))


def end_sessions(engine: Engine, name: str) -> int:
    """End every session of reviewer ``name`` (``semioflow review logout NAME``); returns how many."""
    with engine.begin() as conn:
        rid = conn.execute(sa.select(REVIEWERS.c.reviewer_id).where(REVIEWERS.c.name == name)).scalar()
        if rid is None:
            raise ReviewError(f"no reviewer named {name!r}")
        return conn.execute(SESSIONS.delete().where(SESSIONS.c.reviewer_id == rid)).rowcount


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(_hasher().hash(secrets.token_urlsafe(16)))
    return _DUMMY[0]


def reviewer_name(engine: Engine, reviewer_id: int) -> str | None:
    """The name of reviewer ``reviewer_id`` (None if unknown)."""
    with engine.begin() as conn:
        return conn.execute(sa.select(REVIEWERS.c.name).where(REVIEWERS.c.reviewer_id == reviewer_id)).scalar()


def reviewer_names(engine: Engine) -> list[str]:
    """Every reviewer's name, sorted."""
    with engine.begin() as conn:
        return sorted(r[0] for r in conn.execute(sa.select(REVIEWERS.c.name)))


# ---- media -----------------------------------------------------------------
def deidentified_media(data_dir: Path, rel: str) -> Path:
    """The file of media path ``rel`` (relative to the data dir) if it is de-identified media, else ``ReviewError``.

    Only ``.mp4`` files under ``MEDIA_DIRS`` qualify; absolute paths, ``..``
    and symlinks that lead elsewhere are refused.
    """
    pure = PurePosixPath(rel)
    if not rel or "\\" in rel or pure.is_absolute() or ".." in pure.parts or pure.suffix.lower() not in MEDIA_SUFFIXES:
        raise ReviewError("media must be a de-identified .mp4 path relative to the data dir")
    root = next((d for d in MEDIA_DIRS if str(pure).startswith(d + "/")), None)
    if root is None:
        raise ReviewError(f"media must lie under one of the de-identified layers: {', '.join(MEDIA_DIRS)}")
    base = (Path(data_dir) / root).resolve()
    path = (Path(data_dir) / pure).resolve()
    if not path.is_relative_to(base):
        raise ReviewError("media path leaves its de-identified layer")
    if not path.is_file():
        raise ReviewError("media file is missing")
    # a file put there by hand (a hard link to a raw recording passes every path check) is not what the
    # stage wrote: serve only bytes whose hash its marker recorded
    st = path.stat()
    stamp = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if stamp not in _VERIFIED:
        expected = recorded_digest(base.parent, path.relative_to(base.parent).as_posix())  # the stage's folder
        if expected is None or sha256_file(path) != expected:
            raise ReviewError("media file is not one the pipeline wrote (its hash is not in the stage's marker)")
        _VERIFIED.add(stamp)
    return path


_VERIFIED: set[tuple] = set()  # (path, inode, size, mtime) of media whose hash matched (hashing once per file)


# ---- case sampling ----------------------------------------------------------
def _case_id(prefix: str, *parts: str) -> str:
    return prefix + hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def _read(data_dir: Path, rel: str, table: str) -> list[dict] | None:
    path = Path(data_dir) / rel
    return read_table(table, path).to_pylist() if path.is_file() else None


def faithfulness_cases(data_dir: Path, params: Params) -> list[dict]:
    """Study 1 cases (see module doc), in a seeded random order; [] until labels and predictions exist."""
    data_dir = Path(data_dir)
    labels = _read(data_dir, LABELS, "recording_labels")
    preds = _read(data_dir, PREDICTIONS, "predictions")
    if not labels or not preds:
        return []
    evidence = _read(data_dir, EVIDENCE, "evidence") or []
    answers = _read(data_dir, ANSWERS, "answers") or []
    windows = _read(data_dir, WINDOWS, "windows") or []
    catalog = load_catalog()
    known = set(catalog.ids)
    truth = {(r["recording_id"], r["feature_id"]): bool(r["label"]) for r in labels}
    times = {(w["recording_id"], w["window_index"]): (w["t_start_s"], w["t_end_s"]) for w in windows}
    arms = set(params.review.faithfulness_arms)
    groups: dict[tuple[str, str, str], dict[str, list[dict]]] = defaultdict(lambda: {"tp": [], "tn": []})
    for p in preds:
        key = (p["recording_id"], p["feature_id"])
        if p["model_id"] == NO_MODEL or key not in truth or p["feature_id"] not in known:
            continue
        if arms and p["arm"] not in arms:
            continue
        if p["predicted"] is None:  # not assessable (no media): neither a true positive nor a true negative
            continue
        if not p["n_windows"]:  # no window gave a yes/no (all unparsed, refused...): nothing the model said to rate
            continue
        if p["predicted"] != truth[key]:
            continue
        if not (data_dir / VIDEO_DIR / f"{p['recording_id']}.mp4").is_file():
            continue  # no de-identified video (quarantined): nothing to review it against
        groups[(p["feature_id"], p["arm"], p["model_id"])][TN_TP[int(p["predicted"])]].append(p)
    yes_just: dict[tuple, list[dict]] = defaultdict(list)
    for e in evidence:
        yes_just[(e["recording_id"], e["feature_id"], e["arm"], e["model_id"])].append(e)
    no_just: dict[tuple, list[dict]] = defaultdict(list)
    blind: dict[tuple, list[dict]] = defaultdict(list)  # windows without media: shown as not assessable
    for a in answers:
        if a["status"] in ("no", NOT_ASSESSABLE):
            (no_just if a["status"] == "no" else blind)[(a["recording_id"], a["feature_id"], a["arm"],
                                                         a["model_id"])].append(a)

    cases = []
    for (fid, arm, model), both in sorted(groups.items()):
        tps = sorted(both["tp"], key=lambda r: r["recording_id"])
        tns = sorted(both["tn"], key=lambda r: r["recording_id"])
        rng = random.Random(f"{params.base.seed}|{fid}|{arm}|{model}")
        picked = tps + rng.sample(tns, min(len(tps), len(tns)))
        feature = catalog.by_id(fid)
        for p in picked:
            k = (p["recording_id"], fid, arm, model)
            rows = (yes_just[k] if p["predicted"] else no_just[k]) + blind[k]
            just = [dict(window_index=int(r["window_index"]),
                         t_start_s=times.get((p["recording_id"], r["window_index"]), (None, None))[0],
                         t_end_s=times.get((p["recording_id"], r["window_index"]), (None, None))[1],
                         text="" if r in blind[k] else (r["justification"] or "").strip(),
                         not_assessable=r in blind[k])
                    for r in sorted(rows, key=lambda r: r["window_index"])]
            cases.append(dict(case_id=_case_id("F", *k), recording_id=p["recording_id"], feature_id=fid,
                              feature_name=feature.name, question=feature.prompt, arm=arm, model_id=model,
                              outcome="tp" if p["predicted"] else "tn", predicted=bool(p["predicted"]),
                              media=f"{VIDEO_DIR}/{p['recording_id']}.mp4", justifications=just,
                              random_weights=is_random(model)))
    random.Random(f"{params.base.seed}|order").shuffle(cases)
    return cases


def comparison_cases(data_dir: Path, params: Params) -> list[dict]:
    """Study 2 cases from every ``review.rationales`` table that exists, sorted by case id.

    Raises ``ReviewError`` for a case with more than three variants, media
    that differs between its variants, media that is not de-identified, or a
    case id that is not URL-safe.
    """
    data_dir = Path(data_dir)
    rows: list[dict] = []
    for source in params.review.rationales:
        rows += _read(data_dir, source, "rationales") or []
    by_case: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_case[r["case_id"]].append(r)
    cases = []
    for cid, rs in sorted(by_case.items()):
        if not _CASE_ID.match(cid):
            raise ReviewError(f"rationales: case id {cid!r} must be 1-64 letters, digits, '.', '_', ':' or '-'")
        variants, seen = {}, set()
        for r in rs:
            if r["variant"] in seen:
                raise ReviewError(f"rationales: case {cid} has variant {r['variant']!r} twice")
            seen.add(r["variant"])
            if (r["rationale"] or "").strip():  # an empty or whitespace-only rationale is no rationale: not shown
                variants[r["variant"]] = r["rationale"].strip()
        if len(variants) > MAX_VARIANTS:
            raise ReviewError(f"rationales: case {cid} has {len(variants)} variants; Study 2 compares at most "
                              f"{MAX_VARIANTS}")
        media = {r["media"] for r in rs}
        if len(media) != 1:
            raise ReviewError(f"rationales: case {cid} names different media for its variants")
        (rel,) = media
        deidentified_media(data_dir, rel)
        if not variants:  # every variant gave nothing to compare: not a case
            continue
        context = next((r["context"] for r in rs if r["context"]), None)
        cases.append(dict(case_id=cid, media=rel, context=context, variants=dict(sorted(variants.items())),
                          # from the variants' names, which carry their model's random-weights tag
                          random_weights=any(is_random(v) for v in seen)))
    return cases


def random_weights(case: dict) -> bool:
    """Whether a stored case shows a random-weight smoke model's output, from its model id or variant names
    (they carry the tag), so the banner never hangs on a flag stored with the case."""
    ids = [case.get("model_id") or ""] + list(case.get("variants") or {})
    return bool(case.get("random_weights")) or any(is_random(i) for i in ids)


def prepare(engine: Engine, data_dir: Path, params: Params) -> dict[str, int]:
    """Store the cases of both studies (Study 1 once; Study 2 appends new case ids); returns cases per study."""
    with engine.begin() as conn:
        have = {s: {r[0] for r in conn.execute(sa.select(CASES.c.case_id).where(CASES.c.study == s))}
                for s in STUDIES}
    new: dict[str, list[dict]] = {STUDY_FAITHFULNESS: [], STUDY_COMPARISON: []}
    if not have[STUDY_FAITHFULNESS]:
        new[STUDY_FAITHFULNESS] = faithfulness_cases(data_dir, params)
    new[STUDY_COMPARISON] = [c for c in comparison_cases(data_dir, params)
                             if c["case_id"] not in have[STUDY_COMPARISON]]
    with engine.begin() as conn:
        for study, cases in new.items():
            start = len(have[study])
            if cases:
                conn.execute(CASES.insert(), [dict(study=study, case_id=c["case_id"], position=start + i,
                                                   payload=json.dumps(c, sort_keys=True))
                                              for i, c in enumerate(cases)])
    return {s: len(have[s]) + len(new[s]) for s in STUDIES}


def case_list(engine: Engine, study: str) -> list[dict]:
    """Every case of ``study`` in display order (payloads included: server side only)."""
    with engine.begin() as conn:
        rows = conn.execute(sa.select(CASES.c.case_id, CASES.c.payload).where(CASES.c.study == study)
                            .order_by(CASES.c.position)).all()
    return [json.loads(p) for _, p in rows]


def get_case(engine: Engine, study: str, case_id: str) -> dict | None:
    """One case's payload, or None."""
    with engine.begin() as conn:
        p = conn.execute(sa.select(CASES.c.payload).where(CASES.c.study == study, CASES.c.case_id == case_id)).scalar()
    return json.loads(p) if p else None


def slots(case: dict, reviewer_id: int, seed: int) -> list[tuple[str, str]]:
    """(letter, variant) pairs of a Study 2 case in this reviewer's shuffled order."""
    order = sorted(case["variants"])
    random.Random(f"{seed}|slots|{reviewer_id}|{case['case_id']}").shuffle(order)
    return list(zip(SLOTS, order))


# ---- ratings -----------------------------------------------------------------
def _score(value: object) -> int:
    try:
        score = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ReviewError(f"a score is a whole number {SCORE_MIN}-{SCORE_MAX}") from None
    if not SCORE_MIN <= score <= SCORE_MAX or str(value).strip() != str(score):
        raise ReviewError(f"a score is a whole number {SCORE_MIN}-{SCORE_MAX}")
    return score


def _require_case(engine: Engine, study: str, case_id: str) -> dict:
    case = get_case(engine, study, case_id)
    if case is None:
        raise ReviewError("no such case")
    return case


def save_faithfulness(engine: Engine, reviewer_id: int, case_id: str, score: object) -> int:
    """Store (or replace) a reviewer's Study 1 score for a case; returns the score."""
    _require_case(engine, STUDY_FAITHFULNESS, case_id)
    s = _score(score)
    with engine.begin() as conn:
        _upsert(conn, FAITH_SCORES, dict(reviewer_id=reviewer_id, case_id=case_id), dict(score=s, rated_at=_now()))
    return s


def faithfulness_scores(engine: Engine, reviewer_id: int) -> dict[str, int]:
    """This reviewer's Study 1 scores by case id (nobody else's)."""
    with engine.begin() as conn:
        rows = conn.execute(sa.select(FAITH_SCORES.c.case_id, FAITH_SCORES.c.score)
                            .where(FAITH_SCORES.c.reviewer_id == reviewer_id)).all()
    return {c: int(s) for c, s in rows}


def save_likert(engine: Engine, reviewer_id: int, case_id: str, variant: str, scale: str, score: object) -> int:
    """Store (or replace) one Study 2 Likert rating; returns the score."""
    case = _require_case(engine, STUDY_COMPARISON, case_id)
    if variant not in case["variants"]:
        raise ReviewError("no such variant in this case")
    if scale not in SCALES:
        raise ReviewError(f"scale must be one of {', '.join(SCALES)}")
    s = _score(score)
    with engine.begin() as conn:
        _upsert(conn, LIKERT_SCORES, dict(reviewer_id=reviewer_id, case_id=case_id, variant=variant, scale=scale),
                dict(score=s, rated_at=_now()))
    return s


def save_choice(engine: Engine, reviewer_id: int, case_id: str, field: str, value: str | None) -> dict:
    """Store best / second (a variant, or None) or comment; returns the reviewer's choices for the case.

    Best and second best are different variants: choosing as best the
    variant that was second (or the reverse) clears the other choice.
    """
    case = _require_case(engine, STUDY_COMPARISON, case_id)
    if field not in CHOICE_FIELDS:
        raise ReviewError(f"field must be one of {', '.join(CHOICE_FIELDS)}")
    if field == "comment":
        value = (value or "").strip()
        if len(value) > MAX_COMMENT_CHARS:
            raise ReviewError(f"comments are at most {MAX_COMMENT_CHARS} characters")
    elif value is not None and value not in case["variants"]:
        raise ReviewError("no such variant in this case")
    with engine.begin() as conn:
        values = {field: value, "rated_at": _now()}
        if field in ("best", "second") and value is not None:
            other = "second" if field == "best" else "best"
            cur = conn.execute(sa.select(CHOICES.c[other]).where(CHOICES.c.reviewer_id == reviewer_id,
                                                                 CHOICES.c.case_id == case_id)).scalar()
            if cur == value:
                values[other] = None
        _upsert(conn, CHOICES, dict(reviewer_id=reviewer_id, case_id=case_id), values)
    return comparison_state(engine, reviewer_id, case_id)["choices"]


def comparison_state(engine: Engine, reviewer_id: int, case_id: str) -> dict:
    """This reviewer's Study 2 ratings of one case: {"scores": {(variant, scale): score}, "choices": {...}}."""
    with engine.begin() as conn:
        scores = conn.execute(sa.select(LIKERT_SCORES.c.variant, LIKERT_SCORES.c.scale, LIKERT_SCORES.c.score)
                              .where(LIKERT_SCORES.c.reviewer_id == reviewer_id,
                                     LIKERT_SCORES.c.case_id == case_id)).all()
        ch = conn.execute(sa.select(CHOICES.c.best, CHOICES.c.second, CHOICES.c.comment)
                          .where(CHOICES.c.reviewer_id == reviewer_id, CHOICES.c.case_id == case_id)).first()
    return {"scores": {(v, s): int(x) for v, s, x in scores},
            "choices": dict(best=ch[0], second=ch[1], comment=ch[2] or "") if ch else
            dict(best=None, second=None, comment="")}


def comparison_done(engine: Engine, reviewer_id: int) -> set[str]:
    """Study 2 case ids this reviewer has finished (every scale of every variant, best and second best)."""
    cases = {c["case_id"]: c for c in case_list(engine, STUDY_COMPARISON)}
    with engine.begin() as conn:
        n_scores = dict(conn.execute(sa.select(LIKERT_SCORES.c.case_id, sa.func.count())
                                     .where(LIKERT_SCORES.c.reviewer_id == reviewer_id)
                                     .group_by(LIKERT_SCORES.c.case_id)).all())
        choices = {c: (b, s) for c, b, s in conn.execute(
            sa.select(CHOICES.c.case_id, CHOICES.c.best, CHOICES.c.second).where(CHOICES.c.reviewer_id == reviewer_id))}
    done = set()
    for cid, case in cases.items():
        n = len(case["variants"])
        best, second = choices.get(cid, (None, None))
        if n_scores.get(cid, 0) == n * len(SCALES) and (n < 2 or best) and (n < 3 or second):
            done.add(cid)
    return done


# ---- statistics -----------------------------------------------------------------
def _binom_pmf(n: int, p: float) -> list[float]:
    if p <= 0.0 or p >= 1.0:
        return [1.0 if k == (0 if p <= 0 else n) else 0.0 for k in range(n + 1)]
    lp, lq = math.log(p), math.log1p(-p)
    return [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq)
            for k in range(n + 1)]


def exact_test(k: int, probs: Sequence[float]) -> float:
    """Two-sided exact test of ``k`` successes in independent trials with success probabilities ``probs``.

    The p-value sums the probabilities of every outcome no more likely than
    the one observed (the "minlike" rule of ``scipy.stats.binomtest``); with
    equal probabilities it is the exact binomial test, otherwise the exact
    Poisson-binomial one.
    """
    n = len(probs)
    if not 0 <= k <= n:
        raise ValueError("k must lie in 0..len(probs)")
    if n == 0:
        return 1.0
    if len(set(probs)) == 1:
        pmf = _binom_pmf(n, probs[0])
    else:
        pmf = [1.0]
        for p in probs:
            nxt = [0.0] * (len(pmf) + 1)
            for j, v in enumerate(pmf):
                nxt[j] += v * (1.0 - p)
                nxt[j + 1] += v * p
            pmf = nxt
    rel_tol = 1 + 1e-7  # outcomes equally likely up to rounding count as "as extreme"
    return min(1.0, sum(v for v in pmf if v <= pmf[k] * rel_tol))


def binomial_test(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test of ``k`` successes in ``n`` trials at success probability ``p``."""
    return exact_test(k, [p] * n)


def _stat(study: str, metric: str, key: str, value: float, n: int, *, scale: str | None = None,
          p_value: float | None = None) -> dict:
    return dict(study=study, metric=metric, key=key, scale=scale, value=float(value), n=int(n), p_value=p_value)


def faithfulness_stats(rows: list[dict], pass_score: int) -> list[dict]:
    """Share of scores >= ``pass_score``, median and mean per feature and over all (rows: faithfulness_ratings)."""
    by: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        by[r["feature_id"]].append(int(r["score"]))
        by[ALL].append(int(r["score"]))
    out = []
    for key in sorted(by, key=lambda k: (k == ALL, k)):
        s = by[key]
        out += [_stat(STUDY_FAITHFULNESS, "share_pass", key, sum(x >= pass_score for x in s) / len(s), len(s)),
                _stat(STUDY_FAITHFULNESS, "median", key, median(s), len(s)),
                _stat(STUDY_FAITHFULNESS, "mean", key, sum(s) / len(s), len(s))]
    return out


def comparison_stats(likert: list[dict], choices: list[dict], variants_of: dict[str, list[str]]) -> list[dict]:
    """Mean Likert per variant x scale, best-choice rate vs chance, and pairwise preference rates.

    ``best_rate``: share of reviews (reviewer x case with a best choice) that
    chose the variant, tested against chance (1 / variants shown) with the
    exact test.  ``preference`` ``X>Y``: among reviews of cases showing both
    whose ranking tells them apart (best > second > unranked), the share
    ranking X above Y, with the two-sided binomial test against 0.5.
    """
    out = []
    by: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in likert:
        by[(r["variant"], r["scale"])].append(int(r["score"]))
        by[(r["variant"], OVERALL)].append(int(r["score"]))
    for (variant, scale), s in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] == OVERALL, kv[0][1])):
        out.append(_stat(STUDY_COMPARISON, "mean_likert", variant, sum(s) / len(s), len(s), scale=scale))
    reviews = [c for c in choices if c["best"] is not None and c["case_id"] in variants_of]
    all_variants = sorted({v for vs in variants_of.values() for v in vs})
    for v in all_variants:
        trials = [c for c in reviews if v in variants_of[c["case_id"]] and len(variants_of[c["case_id"]]) > 1]
        if not trials:
            continue
        wins = sum(c["best"] == v for c in trials)
        p = exact_test(wins, [1.0 / len(variants_of[c["case_id"]]) for c in trials])
        out.append(_stat(STUDY_COMPARISON, "best_rate", v, wins / len(trials), len(trials), p_value=p))
    for i, x in enumerate(all_variants):
        for y in all_variants[i + 1:]:
            wins = n = 0
            for c in reviews:
                if x not in variants_of[c["case_id"]] or y not in variants_of[c["case_id"]]:
                    continue
                rank = {c["best"]: 1, c["second"]: 2}
                rx, ry = rank.get(x, 3), rank.get(y, 3)
                if rx != ry:
                    n += 1
                    wins += rx < ry
            if n:
                out.append(_stat(STUDY_COMPARISON, "preference", f"{x}>{y}", wins / n, n,
                                 p_value=binomial_test(wins, n, 0.5)))
    return out


def ratings(engine: Engine, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Every reviewer's ratings as rows of tables faithfulness_ratings, comparison_ratings, comparison_choices."""
    faith_cases = {c["case_id"]: c for c in case_list(engine, STUDY_FAITHFULNESS)}
    comp_cases = {c["case_id"]: c for c in case_list(engine, STUDY_COMPARISON)}
    with engine.begin() as conn:
        names = dict(conn.execute(sa.select(REVIEWERS.c.reviewer_id, REVIEWERS.c.name)).all())
        f_rows = conn.execute(sa.select(FAITH_SCORES)).mappings().all()
        l_rows = conn.execute(sa.select(LIKERT_SCORES)).mappings().all()
        c_rows = conn.execute(sa.select(CHOICES)).mappings().all()
    faith = []
    for r in sorted(f_rows, key=lambda r: (names[r["reviewer_id"]], r["case_id"])):
        c = faith_cases.get(r["case_id"])
        if c:
            faith.append(dict(reviewer=names[r["reviewer_id"]], case_id=r["case_id"], recording_id=c["recording_id"],
                              feature_id=c["feature_id"], arm=c["arm"], model_id=c["model_id"], outcome=c["outcome"],
                              score=int(r["score"]), rated_at=_utc(r["rated_at"])))
    likert = []
    for r in sorted(l_rows, key=lambda r: (names[r["reviewer_id"]], r["case_id"], r["variant"], r["scale"])):
        c = comp_cases.get(r["case_id"])
        if c:
            letter = {v: s for s, v in slots(c, r["reviewer_id"], seed)}[r["variant"]]
            likert.append(dict(reviewer=names[r["reviewer_id"]], case_id=r["case_id"], variant=r["variant"],
                               slot=letter, scale=r["scale"], score=int(r["score"]), rated_at=_utc(r["rated_at"])))
    choices = [dict(reviewer=names[r["reviewer_id"]], case_id=r["case_id"], best=r["best"], second=r["second"],
                    comment=r["comment"] or None, rated_at=_utc(r["rated_at"]))
               for r in sorted(c_rows, key=lambda r: (names[r["reviewer_id"]], r["case_id"]))
               if r["case_id"] in comp_cases]
    return faith, likert, choices


def stats(engine: Engine, params: Params, rated: tuple[list[dict], list[dict], list[dict]] | None = None
          ) -> tuple[list[dict], dict]:
    """(review_stats rows, summary) over every reviewer's ratings (``rated``: ``ratings()`` already read)."""
    faith, likert, choices = rated or ratings(engine, params.base.seed)
    variants_of = {c["case_id"]: sorted(c["variants"]) for c in case_list(engine, STUDY_COMPARISON)}
    rows = faithfulness_stats(faith, params.review.pass_score) + comparison_stats(likert, choices, variants_of)
    summary = {"reviewers": len({r["reviewer"] for r in faith + likert + choices}),
               "faithfulness_ratings": len(faith), "comparison_ratings": len(likert), "choices": len(choices),
               "pass_score": params.review.pass_score,
               "cases": {s: len(case_list(engine, s)) for s in STUDIES}}
    return rows, summary


def export(engine: Engine, out_dir: Path, params: Params) -> dict:
    """Write the ratings and statistics to Parquet (+ ``review_stats.json``) under ``out_dir``.

    Returns the summary (counts) with the statistics rows under ``"stats"``.
    """
    out_dir = Path(out_dir)
    faith, likert, choices = ratings(engine, params.base.seed)
    rows, summary = stats(engine, params, (faith, likert, choices))
    write_table("faithfulness_ratings", faith, out_dir / "faithfulness.parquet")
    write_table("comparison_ratings", likert, out_dir / "comparison.parquet")
    write_table("comparison_choices", choices, out_dir / "choices.parquet")
    write_table("review_stats", rows, out_dir / "review_stats.parquet")
    atomic_write_text(out_dir / "review_stats.json", json.dumps({"summary": summary, "stats": rows}, indent=2,
                                                                sort_keys=True))
    return {**summary, "stats": rows}
