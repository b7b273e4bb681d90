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

Answers: ``{"present": "yes"|"no", "justification": ...}``.  Anything else is
kept with its raw text and a status that is never scored: ``truncated``
(finish_reason length), ``refused`` or ``unparsed``.  Media an arm does not
have (no face track, silent audio, stage not run) gives ``skipped`` rows.

Response cache (``cache/<k[:2]>/<k>.json``): key = model identity + backend +
prompt version + SHA-256 of the rendered text + SHA-256 of the media +
generation params.  Entries are written atomically once a reply has arrived
(complete or absent, never partial); transport failures are never cached, so
a rerun after a crash or a dead endpoint asks only what is missing.

Outputs (under ``out_dir`` = ``data_dir/09_query``): ``answers/<id>.parquet``
(table ``answers``), ``answers.parquet`` and ``query.json`` (models, counts,
the random-weights flag) from ``collect``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from tasks.answers import NO_MODEL, RANDOM_BANNER, RANDOM_TAG, SCORED
from tasks.atomic import atomic_write_text
from tasks.catalog import (Catalog, Feature, batched_version, load_catalog, prompt_version, render_batched,
                           render_prompt, render_transcript)
from tasks.contract import Stage, Table
from tasks.errors import ConfigError, SemioflowError
from tasks import layout
from tasks.layout import rel
from tasks.local_models import Media, Reply
from tasks.media import iter_frames, output_size
from tasks.params import EndpointParams, Params, QueryParams, to_dict
from tasks.schema import read_table, write_table

log = logging.getLogger(__name__)

VIDEO_ARMS = ("raw", "face_crop", "pose_overlay")
AUDIO_ARMS = ("audio_raw", "audio_denoised", "audio_transcript")
ARMS = VIDEO_ARMS + AUDIO_ARMS
ARM_GROUPS = {"raw": ("facial", "limb_body"), "face_crop": ("facial",), "pose_overlay": ("limb_body",),
              "audio_raw": ("audio",), "audio_denoised": ("audio",), "audio_transcript": ("audio",)}
# arm -> (stage, arm name in that stage's arms table)
ARM_SOURCES = {"face_crop": ("face_crop", "face_crop"), "pose_overlay": ("pose", "pose_overlay"),
               "audio_raw": ("audio", "audio_raw"), "audio_denoised": ("audio", "audio_denoised"),
               "audio_transcript": ("audio", "audio_denoised")}
TRANSCRIPT_SOURCE = ("transcript", "transcript")
SINGLE_PREFIX = '{"present": "'  # local backends continue this, so the first token is yes/no
JUSTIFICATION_PREFIX = '", "justification": "'  # forced after a constrained yes/no
CUT_MARK = " [cut at max_tokens]"  # ends a constrained answer's justification that hit the token cap
BACKOFF_CAP_S = 30.0  # longest wait between retries (also caps Retry-After)
ANSWER_SCHEMA = {"type": "object", "properties": {"present": {"type": "string", "enum": ["yes", "no"]},
                                                   "justification": {"type": "string"}},
                 "required": ["present", "justification"], "additionalProperties": False}
_REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i can(?:no|')t|i am (?:not able|unable)|i'm (?:not able|unable)|"
                      r"cannot (?:help|assist|provide|comply)|as an ai)\b", re.IGNORECASE)
_YES_NO = re.compile(r"^\W*(yes|no)\b[\s.,:;!-]*(.*)$", re.IGNORECASE | re.DOTALL)


class EndpointError(SemioflowError):
    """The model endpoint failed for good (after retries); finished answers stay cached."""


# ---- questions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """One model call: a window x arm x (feature | feature group)."""

    recording_id: str
    window_index: int
    arm: str
    features: tuple[Feature, ...]
    prompt_version: str
    system: str
    prompt: str
    media: Media
    batched: bool


def arm_features(arm: str, catalog: Catalog, selected: tuple[str, ...] = ()) -> dict[str, tuple[Feature, ...]]:
    """Features asked on ``arm``, by group (only ``selected`` ids when given)."""
    out = {}
    for group in ARM_GROUPS[arm]:
        feats = tuple(f for f in catalog.in_group(group) if not selected or f.id in selected)
        if feats:
            out[group] = feats
    return out


def media_sha256(media: Media) -> str:
    """Content hash of everything a request shows the model besides the question."""
    h = hashlib.sha256(f"{media.kind}|{media.fps!r}|".encode())
    for img in media.images:
        h.update(hashlib.sha256(img).digest())
    h.update(b"|wav|" + hashlib.sha256(media.wav or b"").digest())
    h.update(b"|text|" + (media.text or "").encode("utf-8"))
    return h.hexdigest()


def questions_for(rid: str, window_index: int, arm: str, media: Media, duration_s: float, params: QueryParams,
                  catalog: Catalog) -> list[Question]:
    """The questions of one window x arm, all sharing the same ``media`` object."""
    system = catalog.templates.system
    groups = arm_features(arm, catalog, params.features)
    out = []
    for feats in groups.values():
        if params.mode == "batched":
            prompt = render_batched(feats, duration_s=duration_s, fps=media.fps, catalog=catalog)
            out.append(Question(rid, window_index, arm, feats, batched_version(feats, catalog), system, prompt,
                                media, True))
            continue
        for f in feats:
            prompt = render_prompt(f, duration_s=duration_s, fps=media.fps, catalog=catalog)
            out.append(Question(rid, window_index, arm, (f,), prompt_version(f, catalog), system, prompt, media,
                                False))
    return out


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


# ---- answers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    status: str  # yes | no | unparsed | refused | truncated
    present: bool | None
    justification: str | None


def _json_object(text: str) -> dict | None:
    s = text.strip()
    s = re.sub(r"^```(?:json)?\s*|\s*```$", "", s)
    start, end = s.find("{"), s.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(s[start:end + 1])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _present(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "no", "true", "false"):
        return value.strip().lower() in ("yes", "true")
    return None


def _one(obj) -> Parsed | None:
    if not isinstance(obj, dict):
        return None
    present = _present(obj.get("present"))
    if present is None:
        return None
    just = obj.get("justification")
    return Parsed("yes" if present else "no", present, _printable(str(just)) if just is not None else None)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")  # not text: HTML, Parquet viewers choke on them


def _printable(text: str) -> str:
    """A justification as shown: control characters and replacement marks dropped (raw_text keeps all)."""
    return _CONTROL.sub("", text).strip()


def _constrained(text: str, finish_reason: str | None, answer: str) -> Parsed:
    """A constrained yes/no: the word is known; the justification is whatever follows it (maybe cut)."""
    obj = _json_object(text)
    if obj is not None and isinstance(obj.get("justification"), str):
        just = _printable(obj["justification"])
    else:
        just = text.split(JUSTIFICATION_PREFIX, 1)[1] if JUSTIFICATION_PREFIX in text else ""
        just = _printable(re.sub(r'"\s*}?\s*$', "", just))
    if _REFUSAL.search(just):  # forced to pick a word, the model refused in its own words: not an answer
        return Parsed("refused", None, None)
    if finish_reason == "length":
        just = (just + CUT_MARK).strip()
    return Parsed(answer, answer == "yes", just or None)


def parse_answer(text: str, finish_reason: str | None, feature_ids: tuple[str, ...], *, batched: bool,
                 answer: str | None = None) -> dict[str, Parsed]:
    """Per feature id: the parsed answer, or why the text is not one (never scored then).

    Single mode accepts the JSON object, or plain text starting with yes/no.
    Batched mode needs one JSON object keyed by feature id; a missing key is unparsed.
    ``answer`` ("yes" | "no"): chosen by constrained decoding (single mode); it stands even when the
    justification after it was cut, unless that justification is a refusal.
    """
    if answer in SCORED and not batched:
        return {feature_ids[0]: _constrained(text or "", finish_reason, answer)}
    if finish_reason == "length":
        return {fid: Parsed("truncated", None, None) for fid in feature_ids}
    obj = _json_object(text or "")
    if batched:
        got = {fid: _one(obj.get(fid)) if obj else None for fid in feature_ids}
    else:
        one = _one(obj)
        if one is None and obj is None:
            m = _YES_NO.match(text or "")
            if m:
                yes = m.group(1).lower() == "yes"
                one = Parsed("yes" if yes else "no", yes, m.group(2).strip() or None)
        got = {feature_ids[0]: one}
    fallback = "refused" if _REFUSAL.search(text or "") else "unparsed"
    return {fid: p if p is not None else Parsed(fallback, None, None) for fid, p in got.items()}


# ---- response cache ----------------------------------------------------------------------


class ResponseCache:
    """One JSON file per completed reply; written atomically, so complete or absent."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry if entry.get("key") == key else None

    def put(self, key: str, entry: dict) -> None:
        atomic_write_text(self._path(key), json.dumps({"key": key, **entry}, sort_keys=True))


def request_seed(q: Question) -> int:
    """Sampling seed of one request (temperature > 0): fixed by its text and media, so the same request
    draws the same sample, and different requests draw independently (one seed for all would pick the
    same side of every close yes/no)."""
    blob = f"{q.system}\x1f{q.prompt}\x1f{media_sha256(q.media)}".encode("utf-8")
    return int(hashlib.sha256(blob).hexdigest()[:8], 16)


def request_key(model_id: str, backend: str, q: Question, gen: dict) -> str:
    """Cache key of one request (see module doc)."""
    text = hashlib.sha256(f"{q.system}\x1f{q.prompt}".encode("utf-8")).hexdigest()
    blob = json.dumps({"model": model_id, "backend": backend, "prompt": q.prompt_version, "text": text,
                       "media": media_sha256(q.media), "gen": gen}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---- backends ----------------------------------------------------------------------------


class OpenAIBackend:
    """Any OpenAI-compatible chat-completions server (vLLM, SGLang, LMDeploy, Ollama, transformers serve)."""

    name = "openai"

    def __init__(self, ep: EndpointParams, params: QueryParams):
        if not ep.model:
            raise ConfigError("query: the openai backend needs a model name (query.vision.model / query.audio.model)")
        self.ep, self.params = ep, params
        self.url = ep.base_url.rstrip("/") + "/chat/completions"
        self.random_weights = (Path(ep.model) / "semioflow_tiny.json").is_file()
        self.model_id = f"openai:{ep.model}" + (RANDOM_TAG if self.random_weights else "")
        self.structured = ep.structured_output
        self.logprobs = ep.logprobs
        self.requests = 0  # HTTP attempts made (what a cached rerun must keep at zero)
        self._lock = threading.Lock()
        self._client = None

    def gen_params(self) -> dict:
        """Generation settings that change an answer (part of the cache key; configured, not negotiated)."""
        return {"max_tokens": self.params.max_tokens, "temperature": self.params.temperature,
                "structured": self.ep.structured_output, "media_format": self.ep.media_format}

    def media_parts(self, media: Media) -> list[dict]:
        """Content parts of the media, built once per window x arm and reused by every question."""
        parts: list[dict] = []
        if media.kind == "video" and self.ep.media_format == "video":
            parts.append({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,"
                                                             + base64.b64encode(frames_mp4(media)).decode()}})
        elif media.kind == "video":
            parts.extend({"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,"
                                                            + base64.b64encode(img).decode()}}
                         for img in media.images)
        else:
            parts.append({"type": "input_audio", "input_audio": {"data": base64.b64encode(media.wav).decode(),
                                                                 "format": "wav"}})
        if media.text:
            parts.append({"type": "text", "text": media.text})
        return parts

    def body(self, q: Question, media_parts: list[dict]) -> dict:
        """The chat-completions request body (media parts first, then the question)."""
        body = {"model": self.ep.model, "max_tokens": self.params.max_tokens,
                "temperature": self.params.temperature,
                "messages": [{"role": "system", "content": q.system},
                             {"role": "user", "content": media_parts + [{"type": "text", "text": q.prompt}]}]}
        if self.structured:
            schema = ANSWER_SCHEMA if not q.batched else {
                "type": "object", "properties": {f.id: ANSWER_SCHEMA for f in q.features},
                "required": [f.id for f in q.features], "additionalProperties": False}
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "semiology_answer", "schema": schema, "strict": True}}
        if self.logprobs and not q.batched:
            body["logprobs"], body["top_logprobs"] = True, 5
        return body

    def ask(self, q: Question, media_parts: list[dict]) -> Reply:
        """POST one question, retrying timeouts, 429 and 5xx with bounded backoff."""
        import httpx

        if self._client is None:
            key = os.environ.get(self.ep.api_key_env, "")
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._client = httpx.Client(timeout=self.ep.timeout_s, headers=headers)
        last = ""
        attempt = 0
        while attempt <= self.ep.retries:
            with self._lock:
                self.requests += 1
            wait_s = min(BACKOFF_CAP_S, self.ep.backoff_s * 2 ** attempt)
            try:
                body = self.body(q, media_parts)
                r = self._client.post(self.url, json=body)
            except httpx.TimeoutException:
                last = f"timed out after {self.ep.timeout_s:g} s"
            except httpx.TransportError as exc:
                last = f"cannot reach the endpoint ({type(exc).__name__})"
            else:
                if r.status_code == 200:
                    return self._reply(r.json(), q)
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code in (400, 422) and self._drop_optional(body):
                    continue  # same attempt again without the refused option
                if r.status_code != 429 and r.status_code < 500:
                    raise EndpointError(f"{self.ep.base_url} refused the request: {last}")
                retry_after = r.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait_s = min(BACKOFF_CAP_S, float(retry_after))
            attempt += 1
            if attempt <= self.ep.retries:
                time.sleep(wait_s)
        raise EndpointError(f"{self.ep.base_url} failed {self.ep.retries + 1} times, last: {last}. "
                            "Finished answers are cached; rerun to resume.")

    def _drop_optional(self, sent: dict) -> bool:
        """After a 400/422: drop structured output, else logprobs, if ``sent`` carried them (True = ask again).

        Requests in flight may fail for an option another thread already dropped: they just ask again.
        """
        with self._lock:
            if "response_format" in sent:
                if self.structured:
                    self.structured = False
                    log.warning("query: the server refused JSON-schema output; asking without it (%s)",
                                self.ep.model)
                return True
            if "logprobs" in sent:
                if self.logprobs:
                    self.logprobs = False
                    log.warning("query: the server refused logprobs; P(yes) will be empty (%s)", self.ep.model)
                return True
        return False

    def _reply(self, data: dict, q: Question) -> Reply:
        choice = (data.get("choices") or [{}])[0]
        content = (choice.get("message") or {}).get("content") or ""
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        yes_prob = None if q.batched else yes_prob_from_logprobs((choice.get("logprobs") or {}).get("content"))
        return Reply(text=content, finish_reason=choice.get("finish_reason") or "stop", yes_prob=yes_prob)


def yes_prob_from_logprobs(tokens: list[dict] | None) -> float | None:
    """P(yes)/(P(yes)+P(no)) at the first answer token that reads yes or no (top logprobs summed over variants)."""
    for tok in tokens or []:
        word = str(tok.get("token", "")).strip().strip('"').lower()
        if not (word.startswith("yes") or word.startswith("no")):
            continue
        p = {"yes": 0.0, "no": 0.0}
        for alt in tok.get("top_logprobs") or [tok]:
            w = str(alt.get("token", "")).strip().strip('"').lower()
            for k in p:
                if w == k:
                    p[k] += math.exp(alt.get("logprob", -math.inf))
        total = p["yes"] + p["no"]
        return p["yes"] / total if total > 0 else None
    return None


def frames_mp4(media: Media) -> bytes:
    """The frames as one H.264 MP4 (for servers that take a video part)."""
    import tempfile

    from PIL import Image

    from tasks.media import VideoWriter

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "window.mp4"
        first = np.asarray(Image.open(io.BytesIO(media.images[0])).convert("RGB"))
        w, h = output_size(first.shape[1], first.shape[0], min(first.shape[:2]) // 2 * 2)
        with VideoWriter(path, width=w, height=h, fps=media.fps or 1.0) as vw:
            for img in media.images:
                rgb = np.asarray(Image.open(io.BytesIO(img)).convert("RGB").resize((w, h)))
                vw.write(rgb)
        return path.read_bytes()


class LocalBackend:
    """A Hugging Face folder loaded in-process (Qwen2.5-VL, InternVL, Qwen3-VL, Audio Flamingo 3)."""

    name = "local"

    def __init__(self, ep: EndpointParams, params: QueryParams):
        if not ep.model:
            raise ConfigError("query: the local backend needs a model folder (query.vision.model / "
                              "query.audio.model); `semioflow models tiny` builds a random-weight one for smoke runs")
        self.ep, self.params = ep, params
        self.model = _load_local(ep.model, ep.device, params.max_pixels)
        self.random_weights = self.model.random_weights
        self.model_id = self.model.model_id + (RANDOM_TAG if self.random_weights else "")
        self.requests = 0

    def gen_params(self) -> dict:
        return {"max_tokens": self.params.max_tokens, "temperature": self.params.temperature,
                "prefix": SINGLE_PREFIX, "max_pixels": self.params.max_pixels,
                "constrained": self.params.constrained and self.params.mode == "single", "seed": "per-request"}

    def media_parts(self, media: Media) -> Media:
        return media

    def ask(self, q: Question, media_parts: Media) -> Reply:
        self.requests += 1
        constrained = JUSTIFICATION_PREFIX if self.params.constrained and not q.batched else None
        return self.model.generate(q.system, media_parts, q.prompt, max_new_tokens=self.params.max_tokens,
                                   temperature=self.params.temperature,
                                   answer_prefix="" if q.batched else SINGLE_PREFIX, constrained=constrained,
                                   seed=request_seed(q))


@lru_cache(maxsize=4)
def _load_local(path: str, device: str, max_pixels: int):
    from tasks.local_models import load_local

    return load_local(path, device=device, max_pixels=max_pixels)


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
                 justification=parsed[f.id].justification, raw_text=reply["text"],
                 finish_reason=reply["finish_reason"], cache_key=key) for f in q.features]


def _skipped(rid: str, wi: int, arm: str, reason: str, params: QueryParams, catalog: Catalog, model_id: str,
             backend: str) -> list[dict]:
    return [dict(recording_id=rid, window_index=wi, feature_id=f.id, arm=arm, model_id=model_id, backend=backend,
                 prompt_version=prompt_version(f, catalog), status="skipped", present=None, yes_prob=None,
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
        entry = {"text": reply.text, "finish_reason": reply.finish_reason, "yes_prob": reply.yes_prob,
                 "answer": reply.answer, "model_id": run.backend.model_id, "prompt_version": q.prompt_version}
        run.cache.put(key, entry)
        return _rows(q, entry, key, run)

    if concurrency <= 1:
        for item in todo:
            run.rows.extend(one(item))
            run.asked += 1
        return
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(one, item) for item in todo]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in pending:
            fut.cancel()
        errors = [f.exception() for f in done if f.exception() is not None]
        for fut in done:
            if fut.exception() is None:
                run.rows.extend(fut.result())
                run.asked += 1
        if errors:
            raise errors[0]


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
                if isinstance(m, str):
                    rows += _skipped(rid, wi, a, m, params, catalog, backend.model_id, backend.name)
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
    atomic_write_text(Path(out_dir) / "query.json", json.dumps(
        {"models": models, "random_weights": random, "banner": RANDOM_BANNER if random else "",
         "recordings": len(recording_ids), "answers": table.num_rows, "statuses": statuses}, indent=2,
        sort_keys=True))


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


WINDOWS = rel("window", "windows", "{rid}.parquet")
STAGE = Stage(
    "query", "recording", run, "yes/no questions for the 20 features to a multimodal model, per window and arm",
    after="window",
    inputs=(rel("downsample", "videos", "{rid}.mp4"), rel("downsample", "frames", "{rid}.parquet"), WINDOWS)
    + tuple(rel(stage, "done", "{rid}.json") for stage in ("face_crop", "pose", "audio", "transcript")),
    tables=(Table("answers", "answers"),), finish=write_summary,
    identity=lambda p: model_fingerprint(p.query), preflight=lambda p: preflight(p.query), in_process=_local,
    note="the response cache lives here too: persist keeps it across reruns")
