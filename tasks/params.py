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

from tasks.errors import ConfigError, did_you_mean
from tasks.layout import rel

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class BaseParams:
    """Project-wide knobs."""

    seed: int = 20240917
    workers: int = 2  # parallel processes for CPU-heavy per-recording work (runner: local)
    runner: Literal["local", "dask"] = "local"  # local: a process pool here | dask: the Dask cluster below
    dask_address: str = ""  # runner dask: the scheduler, tcp://host:8786 (`semioflow cluster up` starts one here)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("base.workers must be >= 1")
        if self.dask_address and not self.dask_address.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
            raise ConfigError(f"base.dask_address must look like tcp://host:8786 (got {self.dask_address!r})")


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
    inbox: str = "data/" + rel("synth", "seizure", "videos")  # seizure recordings ("" = none)
    # gait clips filmed from the side: recordings of the gait cohort ("" = no gait study; an absent folder
    # is noted, not an error, so a site without one runs every night unchanged)
    gait_inbox: str = "data/" + rel("synth", "gait", "videos")
    extensions: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".avi")
    settle_s: float = 10.0  # a file modified more recently is still being written
    # seconds to open and hash one file; a share that stalls or a lease another program holds leaves the
    # file for the next run (it gets no id yet)
    read_timeout_s: float = 300.0
    probe_timeout_s: float = 60.0  # seconds for the decoder to probe it once read (then: decoder_timeout)


@dataclass(frozen=True)
class DeidentifyParams:
    detector: Literal["mediapipe", "centerface"] = "mediapipe"
    # pixels; frames are shrunk to this for detection.  mediapipe's full-range model sees 192x192
    # whatever it is given, so more only costs time; raise it for detector=centerface (small faces).
    detect_short_side: int = 360
    threshold: float = 0.3  # low: recall over precision
    box_dilation: float = 0.3  # fraction of the box size added on every side
    gap_fill_s: float = 0.5  # a face seen at t is also blurred this long before and after t
    # the gait cohort's gap fill: a walking head moves ~0.25 m in 0.2 s, and boxes unioned over +-0.5 s smear
    # the blur ~3 heads wide, where the pose model loses the walker (README "The gait track")
    gait_gap_fill_s: float = 0.2
    # A second detector on a cadence catches what the first misses (mediapipe misses profile
    # faces); gap fill carries its boxes to the frames in between.  "none" turns it off.
    second_detector: Literal["none", "mediapipe", "centerface"] = "centerface"
    second_every_s: float = 0.2  # seconds between second-detector passes while detection runs
    second_threshold: float = 0.2
    # Motion gate (tasks/motion.py): detection (both detectors, and text at its own cadence) runs again only
    # when a 64x64 px cell of the picture changed by motion_level grey levels on average since the last pass,
    # the whole picture by motion_scene_level (lights, a cut), or motion_refresh_s passed; frames in between
    # keep the last pass's boxes (face_boxes source "held").  motion_level 0: detect on every frame.
    motion_level: float = 6.0
    motion_scene_level: float = 8.0
    motion_refresh_s: float = 2.0
    # gaussian: detectors fired on 6-block mosaics (pixelate) in the phantom tests; none: audit self-test only
    blur: Literal["pixelate", "gaussian", "none"] = "gaussian"
    # The de-identified video's sound: anonymize (the voice changed, speech and vocalisations kept; what the
    # audio stage and the model see), keep (the patient's own voice: an explicit opt-in, flagged in the
    # manifest, query.json and the report) or drop (no sound: the audio features cannot be assessed).
    audio: Literal["anonymize", "keep", "drop"] = "anonymize"
    # Burned-in text (overlay name, MRN, date, clock, bed label): every text region PP-OCR finds is blurred
    # (blur: none skips it, for the audit self-test).  Detection runs every text_every_s on a copy of the frame
    # at most text_short_side; a region seen twice in a row stays covered for good (static overlay), and
    # gap_fill_s carries boxes back to the frames before a detection, so text_every_s <= gap_fill_s leaves
    # no frame of a new overlay uncovered.
    text: Literal["blur", "none"] = "blur"
    text_every_s: float = 0.5
    text_short_side: int = 540  # pixels (a 20 px line at 1080p is 10 px here: still found)
    text_threshold: float = 0.5  # PP-OCR box score
    text_dilation: float = 0.15  # fraction of the box size added on every side
    voice_alpha: float = 0.0  # McAdams coefficient; 0 = the site's own, derived from the id key (tasks/voice.py)
    encoder_preset: str = "ultrafast"  # libx264 preset: bigger files than veryfast at the same crf, less CPU
    min_decoded_coverage: float = 0.98  # share of the duration that must decode
    audit_detector: Literal["mediapipe", "centerface"] = "centerface"
    audit_fps: float = 2.0  # frames per second the audit checks (the analysis rate)
    audit_threshold: float = 0.5
    audit_short_side: int = 480  # pixels; CenterFace cost grows with the frame area
    audit_max_residual_frac: float = 0.0  # share of audited frames allowed to show a face
    text_audit_fps: float = 0.5  # frames per second the audit reads with OCR (0: no text audit)
    text_audit_score: float = 0.8  # a string read this confidently (3+ letters or digits) fails the audit
    # The independent text audit (tasks/tesseract.py, another engine than PP-OCR), on the frame's text-like regions
    ocr_audit_fps: float = 0.2  # frames per second Tesseract reads (0: none; each costs ~0.1 s a region)
    ocr_audit_conf: float = 80.0  # a word of 3+ letters or digits read this confidently (0-100) fails the audit
    text_band_frames: int = 8  # frames spread over the recording searched for the static overlay band (0: none)

    def __post_init__(self) -> None:
        if min(self.motion_level, self.motion_scene_level) < 0 or self.motion_refresh_s <= 0:
            raise ConfigError("deidentify.motion_level and motion_scene_level must be >= 0 grey levels and "
                              "motion_refresh_s > 0 seconds")
        if min(self.gap_fill_s, self.gait_gap_fill_s) < 0:
            raise ConfigError("deidentify.gap_fill_s and deidentify.gait_gap_fill_s must be >= 0 seconds")


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
class EndpointParams:
    """One model the query stage asks: an OpenAI-compatible server or a local Hugging Face folder."""

    backend: Literal["openai", "local", "none"] = "local"  # none: skip the arms this model would answer
    model: str = ""  # served model name (openai) or a local model folder (local)
    base_url: str = "http://127.0.0.1:8000/v1"  # openai: the server's /v1 root (vLLM, SGLang, LMDeploy, Ollama)
    api_key_env: str = "SEMIOFLOW_API_KEY"  # openai: name of the environment variable holding the key
    media_format: Literal["images", "video"] = "images"  # openai: frames as image parts or one video part
    structured_output: bool = True  # openai: JSON-schema response_format (dropped if the server refuses it)
    logprobs: bool = True  # openai: ask for top logprobs to record P(yes) (dropped if refused)
    concurrency: int = 4  # openai: requests in flight per recording
    timeout_s: float = 120.0  # openai: per request
    retries: int = 4  # timeouts, 429 and 5xx retried this often
    backoff_s: float = 1.0  # first retry delay, doubled each time (Retry-After honoured, capped)
    device: str = "auto"  # local: auto | cpu | cuda[:N]

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("concurrency >= 1, retries >= 0, timeout_s > 0 and backoff_s >= 0 required")


@dataclass(frozen=True)
class QueryParams:
    """The MLLM query: which arms and features, how media is packed, which models answer."""

    arms: tuple[str, ...] = ("raw", "face_crop", "pose_overlay", "audio_raw", "audio_denoised", "audio_transcript")
    features: tuple[str, ...] = ()  # feature ids to ask; empty = the whole catalog
    mode: Literal["single", "batched"] = "single"  # single: one request per feature; batched: per group
    max_frames: int = 60  # frames per window sent (2 fps x 30 s); evenly thinned above this
    max_pixels: int = 200704  # per frame (448 x 448); larger frames are shrunk, aspect kept
    jpeg_quality: int = 90
    max_tokens: int = 256  # answer length cap (finish_reason "length" = truncated)
    temperature: float = 0.0
    # local backend, single mode: the answer is the likelier of yes/no at the answer position, then the
    # justification is generated (a server's guided choice; the openai backend's structured_output)
    constrained: bool = True
    vision: EndpointParams = field(default_factory=lambda: EndpointParams(backend="local", model="models/vision"))
    audio: EndpointParams = field(default_factory=lambda: EndpointParams(backend="local", model="models/audio"))

    def __post_init__(self) -> None:
        if self.max_frames < 1 or self.max_pixels < 28 * 28 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("max_frames >= 1, max_pixels >= 784 and jpeg_quality in 1..100 required")


@dataclass(frozen=True)
class AggregateParams:
    """Window answers -> recording decision per feature and arm."""

    rule: Literal["any_yes", "k_of_n", "mean_prob"] = "any_yes"  # any_yes is the study's rule
    k: int = 2  # k_of_n: yes windows needed
    threshold: float = 0.5  # mean_prob: mean P(yes) over windows at or above this = present


@dataclass(frozen=True)
class FoldsParams:
    """Patient-grouped, label-stratified folds; labels come from users' annotation tables."""

    n_folds: int = 3
    labels: str = "data/" + rel("synth", "seizure", "labels.parquet")  # table ``labels`` keyed by source file name
    recordings: str = "data/" + rel("synth", "seizure", "recordings.parquet")  # source_name -> patient_id
    # table ``diagnoses`` (source_name -> ES | NES), S³ Task 7's truth; "" = none (no diagnosis evaluated)
    diagnoses: str = "data/" + rel("synth", "seizure", "diagnoses.parquet")
    restarts: int = 200  # seeded greedy assignments tried; the best-stratified one wins

    def __post_init__(self) -> None:
        if self.n_folds < 2 or self.restarts < 1:
            raise ConfigError("folds.n_folds must be >= 2 and folds.restarts >= 1")


@dataclass(frozen=True)
class BaselineParams:
    """One video baseline (R(2+1)D or ViViT): size preset, weights, clip shape, optimiser."""

    size: Literal["tiny", "full"] = "full"  # full = the published architecture; tiny = CPU tests
    pretrained: str = ""  # local weights (R(2+1)D: torchvision state-dict file; ViViT: HF folder); "" = random init
    frames: int = 16  # frames per clip, spread evenly over the window
    image_size: int = 112  # pixels, square clip frames
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4  # AdamW

    def __post_init__(self) -> None:
        if self.frames < 1 or self.image_size < 8 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("train baseline: frames >= 1, image_size >= 8, epochs >= 1, batch_size >= 1, lr > 0")


@dataclass(frozen=True)
class TrainParams:
    """Per-fold video baselines on the 2 fps windows; window scores -> recording score by max."""

    arms: tuple[str, ...] = ("r2plus1d", "vivit")
    mode: Literal["per_feature", "multilabel"] = "per_feature"  # per_feature = one model per feature (the study)
    # bag_max: a recording's windows are one bag scored by their max (multiple-instance learning, the rule
    # that decides); window: every window inherits its recording's label
    objective: Literal["bag_max", "window"] = "bag_max"
    features: tuple[str, ...] = ()  # video feature ids; empty = every video feature of the catalog
    # Every frame of a 30 s window at 2 fps: 16 frames spread over it (one per 1.9 s) lose rhythmic movement
    # (phantom clonic: held-out F1 0.29 at 16 frames, 0.71 at 60; bench/baselines.py).
    r2plus1d: BaselineParams = field(default_factory=lambda: BaselineParams(frames=60))
    vivit: BaselineParams = field(default_factory=lambda: BaselineParams(frames=32, image_size=224, batch_size=4,
                                                                        lr=5e-5))
    weight_decay: float = 0.01
    flip: bool = True  # random horizontal flips while training (left/right does not change a label)
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda[:N]
    save_checkpoints: bool = True  # model weights per arm x fold x feature under 12_train/models/
    keep_clips: bool = False  # keep the decoded clip cache (12_train/clips/) after the stage

    def __post_init__(self) -> None:
        unknown = set(self.arms) - {"r2plus1d", "vivit"}
        if unknown or not self.arms:
            raise ConfigError(f"train.arms must be a non-empty subset of r2plus1d, vivit (got {sorted(unknown)})")
        if self.weight_decay < 0:
            raise ConfigError("train.weight_decay must be >= 0")
        if self.objective not in ("bag_max", "window"):
            raise ConfigError(f"train.objective must be bag_max or window (got {self.objective!r})")


@dataclass(frozen=True)
class EvaluateParams:
    bootstrap: int = 1000  # patient-level bootstrap resamples
    ci: float = 0.95

    def __post_init__(self) -> None:
        if self.bootstrap < 1 or not 0 < self.ci < 1:
            raise ConfigError("evaluate.bootstrap must be >= 1 and evaluate.ci in (0, 1)")


@dataclass(frozen=True)
class KinematicsParams:
    """De-identified gait clips -> mediapipe pose, head blur, joint angles, gait events (tasks/kinematics.py)."""

    sagittal_source: Literal["image", "world"] = "image"  # landmarks the sagittal angles come from
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    head_blur: bool = True  # also blur the head box of every pose (small profile faces escape face detectors)
    head_hold_s: float = 0.5  # s; a frame without a pose takes the nearest pose's head box this far away

    def __post_init__(self) -> None:
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"kinematics.{name} must be in [0, 1]")
        if self.head_hold_s < 0:
            raise ConfigError("kinematics.head_hold_s must be >= 0 seconds")


@dataclass(frozen=True)
class GaitParams:
    """BioGait-VLM gait classification, ablations and baselines (tasks/gait.py, tasks/biogait.py)."""

    labels: str = "data/" + rel("synth", "gait", "gait_clips.parquet")  # source_name, subject_id, gait_class
    vlm: str = "models/internvl"  # local InternVL folder (Hugging Face layout); nothing downloads
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda[:N]
    train_fraction: float = 0.8  # subjects in the training split (the rest test)
    frames: int = 32  # T frames sampled evenly per clip (the processor sizes them: 448 px for InternVL3)
    token_budget: int = 1024  # tokens of the clinical prompt + biomechanical text
    queries: int = 32  # M learnable queries of the temporal evidence decoder
    decoder_layers: int = 3
    heads: int = 4
    dropout: float = 0.1
    epochs: int = 40
    batch_size: int = 2
    lr: float = 5e-4  # AdamW
    weight_decay: float = 0.01
    baseline_arm: Literal["r2plus1d", "vivit", "none"] = "r2plus1d"  # fine-tuned video-encoder baseline
    baseline: BaselineParams = field(default_factory=BaselineParams)
    zero_shot: bool = True  # zero-shot VLM classification with the clinical prompt
    rationales: bool = True  # VLM rationales for the test clips, with the number check
    rationale_tokens: int = 160  # max new tokens of a rationale

    def __post_init__(self) -> None:
        if not 0 < self.train_fraction < 1:
            raise ConfigError("gait.train_fraction must be in (0, 1)")
        if min(self.frames, self.queries, self.decoder_layers, self.heads, self.epochs, self.batch_size,
               self.rationale_tokens) < 1 or self.token_budget < 64 or self.lr <= 0:
            raise ConfigError("gait: frames, queries, decoder_layers, heads, epochs, batch_size and "
                              "rationale_tokens must be >= 1, token_budget >= 64 and lr > 0")


@dataclass(frozen=True)
class ReportParams:
    """The self-contained HTML report (tasks/report.py)."""

    keyframe_width: int = 320  # pixels; keyframes of yes windows are scaled to this width
    jpeg_quality: int = 80  # keyframes are inlined as base64 JPEG
    snippet_chars: int = 300  # transcript characters shown per yes window
    # planted per-time truth (phantom, table events); "" = none
    events: str = "data/" + rel("synth", "seizure", "events.parquet")

    def __post_init__(self) -> None:
        if self.keyframe_width < 16 or not 1 <= self.jpeg_quality <= 100 or self.snippet_chars < 0:
            raise ConfigError("report: keyframe_width must be >= 16, jpeg_quality in 1..100, snippet_chars >= 0")


@dataclass(frozen=True)
class ReviewParams:
    """The blinded expert review app and its statistics (tasks/review.py, tasks/review_app.py)."""

    database: str = ""  # "" = SQLite at <data dir>/17_review/review.sqlite; or postgresql+psycopg://user@host/db
    database_env: str = "SEMIOFLOW_REVIEW_DB"  # this environment variable, when set, overrides database
    host: str = "127.0.0.1"
    port: int = 8765
    session_hours: float = 12.0  # a login lasts this long
    # Secure session cookie (sent over https only): auto = on when the app listens beyond this machine
    # (put it behind an https proxy then), off on loopback, where plain http never leaves the machine
    secure_cookie: Literal["auto", "on", "off"] = "auto"
    faithfulness_arms: tuple[str, ...] = ()  # Study 1: arms whose correct predictions are reviewed; empty = all
    rationales: tuple[str, ...] = (rel("gait", "review_rationales.parquet"),)  # Study 2 inputs (table rationales)
    pass_score: int = 3  # stats: a justification scoring at least this counts as faithful

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536 or self.session_hours <= 0 or not 1 <= self.pass_score <= 5:
            raise ConfigError("review: port must be in 1..65535, session_hours > 0 and pass_score in 1..5")


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
    query: QueryParams = field(default_factory=QueryParams)
    aggregate: AggregateParams = field(default_factory=AggregateParams)
    folds: FoldsParams = field(default_factory=FoldsParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    kinematics: KinematicsParams = field(default_factory=KinematicsParams)
    gait: GaitParams = field(default_factory=GaitParams)
    report: ReportParams = field(default_factory=ReportParams)
    review: ReviewParams = field(default_factory=ReviewParams)


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


# Keys that moved, so an older params.yaml fails saying where they went.
MOVED = {"kinematics.videos": "ingest.gait_inbox (gait clips are ingested as the gait cohort)",
         "kinematics.labels": "gait.labels", "kinematics.gap_fill_s": "deidentify.gait_gap_fill_s"}


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
            moved = MOVED.get(prefix + str(key))
            hint = f"; it moved to {moved}" if moved else did_you_mean(prefix + str(key), [prefix + f for f in fields])
            raise ConfigError(f"unknown key {prefix + str(key)!r}{hint} (allowed: {', '.join(fields)})")
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
