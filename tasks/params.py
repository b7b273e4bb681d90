"""params.yaml -> frozen, validated dataclasses (one per top-level key).

Each top-level key of ``params.yaml`` is one stage (or ``base``) and maps to
one dataclass below; the field defaults are the study's protocol.  Loading
is strict: an unknown key, a missing section or a value of the wrong type is
a ``ConfigError`` that names the dotted key (``window.overlap_s``).

These live in ``tasks/`` (not ``flows/``) because the stage functions take
them as arguments and ``tasks/`` must not depend on ``flows/``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tasks.errors import ConfigError

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class BaseParams:
    """Project-wide knobs."""

    seed: int = 20240917
    workers: int = 2  # parallel processes for CPU-heavy per-recording work


@dataclass(frozen=True)
class SeizureSynthParams:
    """Phantom EMU cohort size and rendering (small defaults for tests/demo)."""

    patients: int = 8
    recordings_per_patient: int = 3
    width: int = 384
    height: int = 288
    fps: float = 12.0
    min_duration_s: float = 40.0
    max_duration_s: float = 180.0
    sample_rate: int = 16000  # Hz, AAC audio track


@dataclass(frozen=True)
class GaitSynthParams:
    """Phantom gait cohort: sagittal walking clips, 8 classes."""

    subjects_per_class: int = 3
    clips_per_subject: int = 2
    width: int = 320
    height: int = 240
    fps: float = 25.0
    duration_s: float = 6.0


@dataclass(frozen=True)
class SynthParams:
    seizure: SeizureSynthParams = field(default_factory=SeizureSynthParams)
    gait: GaitSynthParams = field(default_factory=GaitSynthParams)


@dataclass(frozen=True)
class IngestParams:
    inbox: str = "data/00_synth/seizure/videos"
    extensions: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".avi")
    settle_s: float = 10.0  # a file modified more recently is still being written
    probe_timeout_s: float = 60.0


@dataclass(frozen=True)
class DeidentifyParams:
    detector: Literal["mediapipe", "centerface"] = "mediapipe"
    # pixels; frames are shrunk to this for detection.  mediapipe's full-range model sees 192x192
    # whatever it is given, so more only costs time; raise it for detector=centerface (small faces).
    detect_short_side: int = 360
    threshold: float = 0.3  # low: recall over precision
    box_dilation: float = 0.3  # fraction of the box size added on every side
    gap_fill_s: float = 0.5  # a face seen at t is also blurred this long before and after t
    # A second detector on a cadence catches what the first misses (mediapipe misses profile
    # faces); gap fill carries its boxes to the frames in between.  "none" turns it off.
    second_detector: Literal["none", "mediapipe", "centerface"] = "centerface"
    second_every_s: float = 0.2  # seconds between second-detector passes
    second_threshold: float = 0.2
    # gaussian: detectors fired on 6-block mosaics (pixelate) in the phantom tests; none: audit self-test only
    blur: Literal["pixelate", "gaussian", "none"] = "gaussian"
    keep_audio: bool = True
    encoder_preset: str = "ultrafast"  # libx264 preset: bigger files than veryfast at the same crf, less CPU
    min_decoded_coverage: float = 0.98  # share of the duration that must decode
    audit_detector: Literal["mediapipe", "centerface"] = "centerface"
    audit_fps: float = 2.0  # frames per second the audit checks (the analysis rate)
    audit_threshold: float = 0.5
    audit_short_side: int = 480  # pixels; CenterFace cost grows with the frame area
    audit_max_residual_frac: float = 0.0  # share of audited frames allowed to show a face


@dataclass(frozen=True)
class DownsampleParams:
    fps: float = 2.0  # the study's frame rate
    short_side: int = 448  # pixels


@dataclass(frozen=True)
class WindowParams:
    length_s: float = 30.0
    overlap_s: float = 5.0

    def __post_init__(self) -> None:
        if self.length_s <= 0:
            raise ConfigError("window.length_s must be > 0")
        if not 0 <= self.overlap_s < self.length_s:
            raise ConfigError("window.overlap_s must be >= 0 and < window.length_s")

    @property
    def stride_s(self) -> float:
        return self.length_s - self.overlap_s


@dataclass(frozen=True)
class FaceCropParams:
    """Smoothed patient face track per window, cropped to a fixed-size clip."""

    size: int = 224  # pixels, square output clip
    margin: float = 0.6  # fraction of the face box added on every side
    hold_s: float = 2.0  # keep the last box through misses this long
    smooth_s: float = 1.5  # temporal smoothing window of the crop box

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 2:
            raise ConfigError("face_crop.size must be an even number of pixels >= 16 (H.264 4:2:0)")
        if self.margin < 0 or self.hold_s < 0 or self.smooth_s < 0:
            raise ConfigError("face_crop.margin, hold_s and smooth_s must be >= 0")


@dataclass(frozen=True)
class PoseParams:
    """mediapipe pose per 2 fps frame; skeleton overlay clips per window."""

    model_complexity: int = 1  # the only complexity mediapipe 0.10.14 ships
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5

    def __post_init__(self) -> None:
        if self.model_complexity != 1:
            # 0 (lite) and 2 (heavy) are not in the wheel; mediapipe would download them at run time
            raise ConfigError("pose.model_complexity must be 1 (the only model mediapipe 0.10.14 ships)")
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"pose.{name} must be in [0, 1]")


@dataclass(frozen=True)
class AudioParams:
    """Mono 16 kHz extraction and DSP denoising (stationary noise profile, STFT gain)."""

    sample_rate: int = 16000  # Hz
    method: Literal["spectral_gate", "wiener"] = "spectral_gate"
    silence_dbfs: float = -60.0  # whole-recording RMS below this counts as silent
    noise_quantile: float = 0.2  # share of the quietest STFT frames that define the noise profile
    gate_db: float = 6.0  # spectral_gate: a bin opens this far above the noise power
    floor_db: float = -25.0  # gain of a fully gated bin (deeper floors add musical noise)

    def __post_init__(self) -> None:
        if self.sample_rate < 8000:
            raise ConfigError("audio.sample_rate must be >= 8000 Hz")
        if not 0 < self.noise_quantile < 1:
            raise ConfigError("audio.noise_quantile must be in (0, 1)")
        if self.floor_db > 0:
            raise ConfigError("audio.floor_db must be <= 0 dB")


@dataclass(frozen=True)
class TranscriptParams:
    """Whisper ASR per recording, aligned to windows; models only from local files."""

    backend: Literal["openai-whisper", "faster-whisper"] = "faster-whisper"
    model: str = "base"  # "base" = the packaged weights; or a CT2 folder / openai-whisper .pt path
    language: str = "en"
    audio_source: Literal["denoised", "raw"] = "denoised"  # which 07_audio track is transcribed
    beam_size: int = 5
    compute_type: str = "int8"  # faster-whisper (CTranslate2) CPU precision
    no_speech_threshold: float = 0.6  # window text skips segments above this that also decode poorly


@dataclass(frozen=True)
class AggregateParams:
    rule: Literal["any_yes", "k_of_n", "mean_prob"] = "any_yes"
    k: int = 2
    threshold: float = 0.5


@dataclass(frozen=True)
class FoldsParams:
    n_folds: int = 3


@dataclass(frozen=True)
class EvaluateParams:
    bootstrap: int = 1000
    ci: float = 0.95


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    base: BaseParams = field(default_factory=BaseParams)
    synth: SynthParams = field(default_factory=SynthParams)
    ingest: IngestParams = field(default_factory=IngestParams)
    deidentify: DeidentifyParams = field(default_factory=DeidentifyParams)
    downsample: DownsampleParams = field(default_factory=DownsampleParams)
    window: WindowParams = field(default_factory=WindowParams)
    face_crop: FaceCropParams = field(default_factory=FaceCropParams)
    pose: PoseParams = field(default_factory=PoseParams)
    audio: AudioParams = field(default_factory=AudioParams)
    transcript: TranscriptParams = field(default_factory=TranscriptParams)
    aggregate: AggregateParams = field(default_factory=AggregateParams)
    folds: FoldsParams = field(default_factory=FoldsParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)


def load_params(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Load ``params.yaml`` into ``Params``; every section must be present.

    ``overrides`` maps dotted keys to values (``{"window.overlap_s": 10}``)
    and is applied before validation.  Raises ``ConfigError`` naming the key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no params file at {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name} does not parse: {exc}") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return build(Params, raw, prefix="", require_all=True)


def parse_params(raw: dict[str, Any]) -> Params:
    """Build ``Params`` from an already-parsed mapping; missing sections take defaults."""
    return build(Params, raw, prefix="", require_all=False)


def to_dict(params: Any) -> dict[str, Any]:
    """Plain-data view (tuples as lists) for YAML dumps and cache keys."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(params)


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {p} is not a section")
    node[parts[-1]] = value


def build(cls: type, raw: Any, *, prefix: str, require_all: bool = False) -> Any:
    """Build dataclass ``cls`` from mapping ``raw`` strictly (see module doc)."""
    where = prefix or "params"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"unknown key {prefix + str(key)!r} (allowed: {', '.join(fields)})")
    kwargs = {}
    for name in fields:
        key = prefix + name
        typ = hints[name]
        if name not in raw:
            if require_all and dataclasses.is_dataclass(typ) and not prefix:
                raise ConfigError(f"missing section {key!r} in params")
            continue
        kwargs[name] = _coerce(typ, raw[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(typ: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(typ):
        return build(typ, value, prefix=key + ".")
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {typ}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if typ is Any:
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {typ}")
