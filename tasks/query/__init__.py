"""query: ask a multimodal model each feature's yes/no question, per window and arm.

Inputs (under ``data_dir``), per recording ``<id>``:

- ``03_downsample/videos/<id>.mp4`` + ``03_downsample/frames/<id>.parquet`` and
  ``04_window/windows/<id>.parquet``: the ``raw`` arm (the window's 2 fps frames);
- ``05_face_crop/arms/<id>.parquet`` (``face_crop``), ``06_pose/arms/<id>.parquet``
  (``pose_overlay``), ``07_audio/arms/<id>.parquet`` (``audio_raw``,
  ``audio_denoised``) and ``08_transcript/arms/<id>.parquet`` (the text of the
  ``audio_transcript`` arm = denoised audio + transcript).

Arms and the features asked on them (the study's pairing):
``raw`` -> the 18 video features; ``face_crop`` -> the 7 facial;
``pose_overlay`` -> the 11 limb & body; the three audio arms -> the 2 audio features.

A request is: system prompt; one user message whose parts are the window's
media FIRST (frames as image parts or one video part, or the audio, then the
transcript sentence), then the question.  The media parts of a window x arm
are built once and reused, byte-identical, for every question, so a server's
prefix cache serves all of them.  ``mode: batched`` asks one request per
window x arm x feature group and parses one JSON object keyed by feature id.

Answers: ``{"present": "yes"|"no", "justification": ...}``.  Every reply's
text is scrubbed of identifiers (``tasks.phi``) before it is cached or stored:
a model that read a name off the screen or heard one must not carry it into
``answers``, the evidence or the review app.  Anything else is
kept with its raw text and a status that is never scored: ``truncated``
(finish_reason length), ``refused`` or ``unparsed``.  Media an arm does not
have (no face track, no pose, silent audio, stage not run) gives ``not_assessable``
rows: never asked, so never "no"; an arm without a model (``backend: none``)
gives ``skipped`` rows.

Response cache (``cache/<k[:2]>/<k>.json``): key = model identity + backend +
prompt version + SHA-256 of the rendered text + SHA-256 of the media +
generation params.  Entries are written atomically once a reply has arrived
(complete or absent, never partial); transport failures are never cached, so
a rerun after a crash or a dead endpoint asks only what is missing.

Outputs (under ``out_dir`` = ``data_dir/09_query``): ``answers/<id>.parquet``
(table ``answers``), ``answers.parquet`` and ``query.json`` (models, counts,
the random-weights flag).

The package: this module is the stage (media per window x arm, one
recording's questions, the stage contract); ``questions`` (arms, features,
questions), ``parse`` (replies -> answers), ``responses`` (the response
cache), ``openai`` and ``local`` (the two backends).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.answers import NO_MODEL, NOT_ASSESSABLE, RANDOM_BANNER, RANDOM_TAG, SKIPPED
from tasks.atomic import atomic_write_text
from tasks.catalog import Catalog, load_catalog, prompt_version, render_transcript
from tasks.phi import scrub_text
from tasks.contract import Stage, Table
from tasks.errors import ConfigError
from tasks import layout
from tasks.layout import rel
from tasks.local_models import Media
from tasks.media import iter_frames
from tasks.params import EndpointParams, Params, QueryParams, to_dict
from tasks.schema import read_table, write_table
from tasks.query.local import LocalBackend
from tasks.query.openai import OpenAIBackend
from tasks.query.parse import parse_answer
from tasks.query.questions import (ARMS, AUDIO_ARMS, VIDEO_ARMS, Question,
                                   arm_features, questions_for)
from tasks.query.responses import ResponseCache, request_key


log = logging.getLogger(__name__)
# arm -> (stage, arm name in that stage's arms table)
ARM_SOURCES = {"face_crop": ("face_crop", "face_crop"), "pose_overlay": ("pose", "pose_overlay"),
               "audio_raw": ("audio", "audio_raw"), "audio_denoised": ("audio", "audio_denoised"),
               "audio_transcript": ("audio", "audio_denoised")}
TRANSCRIPT_SOURCE = ("transcript", "transcript")

# ---- media -----------------------------------------------------------------------------


def jpeg(rgb: np.ndarray, params: QueryParams) -> bytes:
    """JPEG bytes of an RGB frame, shrunk (aspect kept) to at most ``max_pixels``."""
    from PIL import Image

    img = Image.fromarray(rgb)
    w, h = img.size
    if w * h > params.max_pixels:
        s = math.sqrt(params.max_pixels / (w * h))
        img = img.resize((max(2, int(w * s)), max(2, int(h * s))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=params.jpeg_quality)
    return buf.getvalue()


def thin(items: list, max_n: int) -> list:
    """At most ``max_n`` items, evenly spaced, first and last kept."""
    if len(items) <= max_n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, max_n).round().astype(int))
    return [items[i] for i in idx]


def video_media(frames: list[bytes], duration_s: float, params: QueryParams) -> Media:
    """Media of a window's frames (thinned to ``max_frames``; fps = what the model actually gets)."""
    kept = thin(frames, params.max_frames)
    fps = round(len(kept) / duration_s, 3) if duration_s > 0 else 0.0
    return Media(kind="video", images=tuple(kept), fps=fps)


def _clip_frames(path: Path, params: QueryParams) -> list[bytes]:
    return [jpeg(f.rgb, params) for f in iter_frames(path)]


def _arms_table(data_dir: Path, stage: str, rid: str) -> dict[tuple[int, str], dict]:
    p = layout.path(data_dir, stage, "arms", f"{rid}.parquet")
    if not p.is_file():
        return {}
    return {(r["window_index"], r["arm"]): r for r in read_table("arms", p).to_pylist()}


def window_media(rid: str, data_dir: Path, windows: list[dict], params: QueryParams, arms: tuple[str, ...],
                 catalog: Catalog) -> dict[tuple[int, str], Media | str]:
    """Media per (window index, arm), or the reason it is missing (a string).

    The raw arm decodes the recording's 2 fps video once; the enhanced arms
    read their per-window files through the enhancement stages' arms tables.
    """
    out: dict[tuple[int, str], Media | str] = {}
    durations = {w["window_index"]: w["t_end_s"] - w["t_start_s"] for w in windows}
    if "raw" in arms:
        video = layout.path(data_dir, "downsample", "videos", f"{rid}.mp4")
        if not video.is_file():
            out.update({(wi, "raw"): "no 2 fps video (run downsample)" for wi in durations})
        else:
            frames = _clip_frames(video, params)
            for w in windows:
                sel = frames[w["frame_start"]:w["frame_end"]]
                out[(w["window_index"], "raw")] = (video_media(sel, durations[w["window_index"]], params) if sel
                                                   else "no frames in window")
    tables = {folder: _arms_table(data_dir, folder, rid) for folder in
              {ARM_SOURCES[a][0] for a in arms if a != "raw"} | ({TRANSCRIPT_SOURCE[0]}
                                                                 if "audio_transcript" in arms else set())}
    for arm in arms:
        if arm == "raw":
            continue
        folder, source_arm = ARM_SOURCES[arm]
        for wi, dur in durations.items():
            row = tables[folder].get((wi, source_arm))
            if row is None:
                out[(wi, arm)] = f"no {source_arm} output (run {folder})"
                continue
            if row["status"] != "ok" or not row["path"]:
                out[(wi, arm)] = f"{source_arm}: {row['status']}"
                continue
            path = data_dir / row["path"]
            if arm in VIDEO_ARMS:
                out[(wi, arm)] = video_media(_clip_frames(path, params), dur, params)
                continue
            text = None
            if arm == "audio_transcript":
                trow = tables[TRANSCRIPT_SOURCE[0]].get((wi, TRANSCRIPT_SOURCE[1]))
                if trow is None or trow["status"] != "ok" or not trow["path"]:
                    out[(wi, arm)] = f"transcript: {trow['status'] if trow else 'missing (run transcript)'}"
                    continue
                text = render_transcript((data_dir / trow["path"]).read_text(encoding="utf-8"), catalog)
            out[(wi, arm)] = Media(kind="audio", wav=path.read_bytes(), text=text)
    return out


def make_backend(ep: EndpointParams, params: QueryParams):
    """The backend an endpoint section names (``None`` for ``backend: none``)."""
    if ep.backend == "none":
        return None
    return (OpenAIBackend if ep.backend == "openai" else LocalBackend)(ep, params)


def model_fingerprint(params: QueryParams) -> str:
    """Cheap identity of the models the params point to (config text + weight file names, sizes, mtimes).

    Part of the per-recording cache key, so swapping the files behind ``models/vision`` reruns the stage.
    """
    h = hashlib.sha256()
    for ep in (params.vision, params.audio):
        h.update(f"{ep.backend}|{ep.model}|{ep.base_url}|".encode())
        folder = Path(ep.model)
        if ep.backend == "local" and folder.is_dir():
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    st = f.stat()
                    h.update(f"{f.relative_to(folder).as_posix()}|{st.st_size}|{st.st_mtime_ns}|".encode())
            cfg = folder / "config.json"
            h.update(cfg.read_bytes() if cfg.is_file() else b"")
    return h.hexdigest()


def preflight(params: QueryParams) -> list[str]:
    """Check the config before any recording runs; returns lines describing the models.

    Raises ``ConfigError`` for unknown arms/features or an arm whose model is unset.
    """
    catalog = load_catalog()
    unknown = [a for a in params.arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"query.arms: unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    for fid in params.features:
        catalog.by_id(fid)
    lines = []
    for kind, arms, ep in (("vision", VIDEO_ARMS, params.vision), ("audio", AUDIO_ARMS, params.audio)):
        wanted = [a for a in params.arms if a in arms and arm_features(a, catalog, params.features)]
        if not wanted:
            continue
        if ep.backend == "none":
            lines.append(f"{kind}: backend none, arms {', '.join(wanted)} recorded as skipped")
            continue
        if not ep.model:
            raise ConfigError(f"query.{kind}.model is empty but arms {', '.join(wanted)} need it: set it to a "
                              f"served model name (backend openai) or a local model folder (backend local), "
                              f"or set query.{kind}.backend: none")
        if ep.backend == "local" and not Path(ep.model).is_dir():
            raise ConfigError(f"query.{kind}.model: no model folder at {ep.model}; put a Hugging Face model "
                              "folder there (config.json + weights), or `semioflow models tiny` for a smoke model")
        lines.append(f"{kind}: {ep.backend} {ep.model} for {', '.join(wanted)}")
    return lines


# ---- per recording ---------------------------------------------------------------------


@dataclass
class _Run:
    backend: object
    gen: dict
    cache: ResponseCache
    hits: int = 0
    asked: int = 0
    rows: list[dict] = field(default_factory=list)


def _rows(q: Question, reply: dict, key: str, run: _Run) -> list[dict]:
    parsed = parse_answer(reply["text"], reply["finish_reason"], tuple(f.id for f in q.features), batched=q.batched,
                          answer=reply.get("answer"))
    return [dict(recording_id=q.recording_id, window_index=q.window_index, feature_id=f.id, arm=q.arm,
                 model_id=run.backend.model_id, backend=run.backend.name, prompt_version=q.prompt_version,
                 status=parsed[f.id].status, present=parsed[f.id].present,
                 yes_prob=reply.get("yes_prob"),  # the first answer token's P(yes), parsed or not
                 justification=scrub_text(parsed[f.id].justification), raw_text=scrub_text(reply["text"]),
                 finish_reason=reply["finish_reason"], cache_key=key) for f in q.features]


def _skipped(rid: str, wi: int, arm: str, reason: str, params: QueryParams, catalog: Catalog, model_id: str,
             backend: str, status: str = SKIPPED) -> list[dict]:
    """Rows of questions not asked: ``skipped`` (no model) or ``not_assessable`` (no media), with the reason."""
    return [dict(recording_id=rid, window_index=wi, feature_id=f.id, arm=arm, model_id=model_id, backend=backend,
                 prompt_version=prompt_version(f, catalog), status=status, present=None, yes_prob=None,
                 justification=f"no media: {reason}", raw_text=None, finish_reason=None, cache_key="")
            for feats in arm_features(arm, catalog, params.features).values() for f in feats]


def _ask_all(run: _Run, work: list[tuple[Question, object]], concurrency: int) -> None:
    """Ask every uncached question; each reply is cached the moment it arrives."""
    todo = []
    for q, parts in work:
        key = request_key(run.backend.model_id, run.backend.name, q, run.gen)
        entry = run.cache.get(key)
        if entry is not None:
            run.hits += 1
            run.rows.extend(_rows(q, entry, key, run))
        else:
            todo.append((q, parts, key))

    def one(item):
        q, parts, key = item
        reply = run.backend.ask(q, parts)
        if reply.gen is not None and reply.gen != run.gen:  # an option was dropped: keyed on what was sent
            key = request_key(run.backend.model_id, run.backend.name, q, reply.gen)
        # a model that read a name off the screen or heard one says it here: scrubbed before it is kept
        entry = {"text": scrub_text(reply.text), "finish_reason": reply.finish_reason, "yes_prob": reply.yes_prob,
                 "answer": reply.answer, "model_id": run.backend.model_id, "prompt_version": q.prompt_version}
        run.cache.put(key, entry)
        return _rows(q, entry, key, run)

    if concurrency <= 1:
        for item in todo:
            run.rows.extend(one(item))
            run.asked += 1
        return
    # Prefix-cache warm-up: a window x arm's questions share its media and system prompt, which a server like
    # vLLM encodes once and reuses from its prefix cache, but only once a first request has filled it.  Sent
    # all at once, they would each encode the same frames.  So each window x arm's first question goes
    # alone; its others are sent, concurrently, when it has returned.
    groups: dict[tuple, list] = {}
    for item in todo:
        groups.setdefault((item[0].window_index, item[0].arm), []).append(item)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        running = {pool.submit(one, g[0]): g[1:] for g in groups.values()}
        error = None
        while running and error is None:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                rest = running.pop(fut)
                if fut.exception() is not None:
                    error = error or fut.exception()
                    continue
                run.rows.extend(fut.result())
                run.asked += 1
                running.update({pool.submit(one, item): [] for item in rest})
        if error is not None:
            for fut in running:
                fut.cancel()
            for fut in running:  # finished ones are cached: count them, as before
                if not fut.cancelled() and fut.exception() is None:
                    run.rows.extend(fut.result())
                    run.asked += 1
            raise error


def query_recording(rid: str, data_dir: Path, out_dir: Path, params: QueryParams, *, backends: dict | None = None
                    ) -> dict:
    """Ask every question of one recording; writes ``answers/<rid>.parquet``.

    ``backends`` ({"vision": ..., "audio": ...}) lets a caller reuse loaded models; by default
    they are built from ``params``.  Returns counts: questions, cache hits, requests, statuses.
    Raises ``EndpointError`` when an endpoint fails for good (answers so far stay cached).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    catalog = load_catalog()
    backends = backends if backends is not None else {
        "vision": make_backend(params.vision, params), "audio": make_backend(params.audio, params)}
    windows = read_table("windows", layout.path(data_dir, "window", "windows", f"{rid}.parquet")).to_pylist()
    arms = tuple(a for a in params.arms if arm_features(a, catalog, params.features))
    live = tuple(a for a in arms if backends["vision" if a in VIDEO_ARMS else "audio"] is not None)
    media = window_media(rid, data_dir, windows, params, live, catalog)
    cache = ResponseCache(out_dir / "cache")
    rows: list[dict] = []
    stats = {"questions": 0, "cache_hits": 0, "requests": 0}
    for kind, kind_arms in (("vision", VIDEO_ARMS), ("audio", AUDIO_ARMS)):
        backend = backends[kind]
        ep = getattr(params, kind)
        mine = [a for a in arms if a in kind_arms]
        if not mine:
            continue
        if backend is None:
            for w in windows:
                for a in mine:
                    rows += _skipped(rid, w["window_index"], a, f"query.{kind}.backend is none", params, catalog,
                                     NO_MODEL, NO_MODEL)
            continue
        run = _Run(backend, backend.gen_params(), cache)
        work = []
        for w in windows:
            wi = w["window_index"]
            for a in mine:
                m = media[(wi, a)]
                if isinstance(m, str):  # no media: not assessable, never asked
                    rows += _skipped(rid, wi, a, m, params, catalog, backend.model_id, backend.name, NOT_ASSESSABLE)
                    continue
                parts = backend.media_parts(m)
                work += [(q, parts) for q in questions_for(rid, wi, a, m, w["t_end_s"] - w["t_start_s"], params,
                                                           catalog)]
        before = backend.requests
        try:
            _ask_all(run, work, ep.concurrency if backend.name == "openai" else 1)
        finally:
            stats["requests"] += backend.requests - before
        rows += run.rows
        stats["questions"] += len(work)
        stats["cache_hits"] += run.hits
        if backend.random_weights:
            log.info("query %s: %s (%s)", rid, RANDOM_BANNER, backend.model_id)  # the run summary says it once
    rows.sort(key=lambda r: (r["window_index"], ARMS.index(r["arm"]), catalog.ids.index(r["feature_id"])))
    write_table("answers", rows, out_dir / "answers" / f"{rid}.parquet")
    statuses = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {"recording_id": rid, "n_windows": len(windows), **stats, "answers": len(rows), "statuses": statuses,
            "random_weights": any(b is not None and b.random_weights for b in backends.values())}


def write_summary(out_dir: Path, recording_ids: list[str]) -> None:
    """``query.json`` from ``answers.parquet``: models, counts per status, the random-weights flag and banner."""
    table = read_table("answers", Path(out_dir) / "answers.parquet")
    models = sorted(set(table.column("model_id").to_pylist())) if table.num_rows else []
    statuses: dict[str, int] = {}
    for s in table.column("status").to_pylist() if table.num_rows else []:
        statuses[s] = statuses.get(s, 0) + 1
    random = any(m.endswith(RANDOM_TAG) for m in models)
    deid = layout.stage_dir(Path(out_dir).parent, "deidentify") / "deidentified.parquet"
    voices = sorted(r["recording_id"] for r in (read_table("deidentified", deid).to_pylist() if deid.is_file() else [])
                    if r["status"] == "ok" and r["audio"] == "original" and r["recording_id"] in set(recording_ids))
    atomic_write_text(Path(out_dir) / "query.json", json.dumps(
        {"models": models, "random_weights": random, "banner": RANDOM_BANNER if random else "",
         "recordings": len(recording_ids), "answers": table.num_rows, "statuses": statuses,
         "original_voice": voices}, indent=2, sort_keys=True))


_BACKENDS: dict[str, dict] = {}  # loaded models, per process (a worker or the flow process), for one query config


def backends_for(params: QueryParams) -> dict:
    """{"vision": ..., "audio": ...} for ``params``, loaded once per process and reused across recordings."""
    key = json.dumps(to_dict(params), sort_keys=True)
    if key not in _BACKENDS:
        _BACKENDS.clear()
        _BACKENDS[key] = {"vision": make_backend(params.vision, params), "audio": make_backend(params.audio, params)}
    return _BACKENDS[key]


def run(recording_id: str, data_dir: Path, out_dir: Path, params: Params) -> dict:
    return query_recording(recording_id, data_dir, out_dir, params.query, backends=backends_for(params.query))


def _local(params: Params) -> bool:
    return "local" in (params.query.vision.backend, params.query.audio.backend)


def _device(params: Params) -> str | None:
    """The device of the in-process models (a cuda one wins), or None when both backends are remote."""
    devices = [b.device for b in (params.query.vision, params.query.audio) if b.backend == "local"]
    return next((d for d in devices if d.startswith("cuda")), devices[0] if devices else None)


WINDOWS = rel("window", "windows", "{rid}.parquet")
STAGE = Stage(
    "query", "recording", run, "yes/no questions for the 20 features to a multimodal model, per window and arm",
    after="window",
    inputs=(rel("downsample", "videos", "{rid}.mp4"), rel("downsample", "frames", "{rid}.parquet"), WINDOWS)
    + tuple(rel(stage, "done", "{rid}.json") for stage in ("face_crop", "pose", "audio", "transcript")),
    tables=(Table("answers", "answers"),), finish=write_summary,
    identity=lambda p: model_fingerprint(p.query), preflight=lambda p: preflight(p.query), in_process=_local,
    device=_device, note="the response cache lives here too: persist keeps it across reruns")
