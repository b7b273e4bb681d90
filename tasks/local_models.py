"""local_models: Hugging Face video/audio language models run in-process.

- ``load_local(folder)`` loads a Hugging Face model folder (``config.json``,
  ``*.safetensors``, tokenizer, processor configs, chat template) with
  ``local_files_only=True`` (nothing ever downloads) and returns a
  ``LocalModel`` whose ``generate`` answers one request: a system message, the
  media (``Media``: JPEG frames + fps, or a WAV), optional secondary text and
  the prompt, optionally continuing a forced ``answer_prefix``.  Supported
  ``model_type`` values (the real architectures, see ``ARCH_CLASSES``):
  ``qwen2_5_vl``, ``qwen3_vl``, ``internvl`` (video) and ``audioflamingo3``
  (audio).
- A folder written by ``tasks.tiny_models.build_tiny`` (a random-weight
  model of the real architecture at toy size) loads the same way; its
  ``semioflow_tiny.json`` (``TINY_MARKER``) makes every output made with it
  say "random-weight smoke model".

How a request becomes model input (``LocalModel.inputs``):

- Messages: the system message (left out when ``system`` is empty, so the
  template's own default applies), then one user message whose content is the
  media first, then ``media.text`` (followed by ``MEDIA_TEXT_SEPARATOR``), then
  the prompt.  The chat template renders it with the generation prompt, and
  ``answer_prefix`` is appended after the assistant turn start.
- Video: the frames are ONE video (never a list of images) with metadata
  ``fps = media.fps``, ``frames_indices = 0..n-1``, and frame sampling switched
  off (the frames are already sampled).  So Qwen2.5-VL gets
  ``second_per_grid_ts = temporal_patch_size / fps`` (temporal rope ids spaced
  by real seconds), Qwen3-VL gets ``<t seconds>`` text timestamps from the same
  fps, and InternVL gets "Frame1: ... FrameN:" (InternVL has no notion of time;
  fps only matters to the prompt text the caller writes).
- Pixel cap: ``max_pixels`` per frame.  Qwen2.5-VL: the processor's
  ``size = {shortest_edge: min_pixels, longest_edge: max_pixels}`` (per
  frame).  Qwen3-VL: its video ``size`` counts pixels of the WHOLE clip
  (frames x height x width), so it gets ``max_pixels * n_frames``.  InternVL:
  frames are resized to the model's fixed tile (``size`` of its processor,
  448 x 448 for InternVL3), ``max_pixels`` does not apply.
- Audio (Audio Flamingo 3): the WAV is decoded with ``wave`` + numpy (mono
  16-bit PCM; channels are averaged), resampled to the feature extractor's
  rate, and sent as the one audio of the message.

Decoding (``LocalModel.generate``): temperature 0 is greedy; temperature > 0
is plain temperature sampling with a fixed seed (``seed``, default ``SAMPLING_SEED``) inside a
forked RNG.  The checkpoint's own ``top_k``/``top_p``/``repetition_penalty``
are switched off so results do not depend on which generation_config.json a
folder ships.  ``yes_prob`` is P(yes) / (P(yes) + P(no)) from the softmax of
the raw logits at the FIRST generated position (see ``yes_no_token_ids``).

Serving a folder over HTTP instead (OpenAI-compatible, transformers 5.23):
``transformers serve <folder> --host 127.0.0.1 --port <port> --device cpu``
(the folder is the positional FORCE_MODEL; there is no ``--force-model``
flag).  Requests must leave ``model`` out or give exactly ``<folder>`` as typed
on the command line (anything else is a 400 "Server is pinned to ..."); the
reply's ``model`` reads ``<folder>@main``.  ``logprobs``/``top_logprobs`` are
accepted but silently ignored, so ``yes_prob`` needs this in-process backend,
and ``GET /v1/models`` fails (500) when no Hugging Face cache folder exists.

Known transformers 5.23 behaviour worth knowing: Qwen2.5-VL text tokens after
a video restart at (video start + max(grid h, grid w) / 2), not after the
video's largest temporal position id as in Qwen's reference code, so with
long clips the first text ids fall inside the video's temporal range.

transformers is imported inside the functions that need it, so importing
this module (for ``Media``/``Reply``) stays cheap.
"""

from __future__ import annotations

import hashlib
import io
import json
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tasks.devices import resolve_device
from tasks.errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import BatchFeature

# ---- supported architectures -----------------------------------------------------

ARCH_CLASSES = {  # config.json model_type -> transformers model class
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "audioflamingo3": "AudioFlamingo3ForConditionalGeneration",
}
ARCH_MODALITY = {"qwen2_5_vl": "video", "internvl": "video", "qwen3_vl": "video", "audioflamingo3": "audio"}
ARCHES = tuple(ARCH_CLASSES)

TINY_MARKER = "semioflow_tiny.json"  # written by build_tiny; {"arch", "seed", "random_weights"}
DEFAULT_MAX_PIXELS = 448 * 448  # pixels per video frame
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAMPLING_SEED = 0  # torch seed for temperature > 0 (same request -> same sample)
MEDIA_TEXT_SEPARATOR = "\n\n"  # between media.text and the prompt (templates concatenate text parts)
YES_VARIANTS = ("yes", " yes")  # first tokens scored for yes_prob: max over the variants
NO_VARIANTS = ("no", " no")
HASH_CHUNK_BYTES = 1 << 20  # bytes read at a time when hashing weight files
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
PCM16_MAX = 32768.0  # full scale of 16-bit PCM
PIXEL_KEYS = ("pixel_values", "pixel_values_videos", "input_features")  # cast to the model dtype

HOW_TO = ("put a Hugging Face model folder there (config.json, *.safetensors, tokenizer, processor "
          "configs and chat template, as downloaded with `hf download <repo> --local-dir <folder>`) "
          "or set query.vision.model / query.audio.model to such a folder; for a smoke run build a "
          "random-weight one with `python -c \"from tasks.tiny_models import build_tiny; "
          "build_tiny('qwen2_5_vl', '<folder>')\"`. Nothing is downloaded.")


@dataclass(frozen=True)
class Media:
    """Canonical request media (one window of one recording).

    kind: "video" | "audio".
    images: JPEG-encoded frames in time order (video), all of one size.
    fps: frames per second of ``images`` (> 0 for video).
    wav: a mono 16-bit PCM WAV file's bytes (audio).
    text: secondary text, e.g. a speech transcript; goes after the media, before the prompt.
    """

    kind: str
    images: tuple[bytes, ...] = ()
    fps: float = 0.0
    wav: bytes | None = None
    text: str | None = None


@dataclass(frozen=True)
class Reply:
    """One model answer.

    text: full answer text, including any forced ``answer_prefix``.
    finish_reason: "stop" (end-of-turn token) | "length" (``max_new_tokens`` hit first).
    yes_prob: P(yes) / (P(yes) + P(no)) from the first generated position's logits;
        None when the tokenizer cannot tell the two apart.
    answer: with ``generate(..., constrained=...)`` the word chosen at the answer position
        ("yes" | "no"); the justification after it may still be cut by ``max_new_tokens``.
    """

    text: str
    finish_reason: str
    yes_prob: float | None
    answer: str | None = None  # "yes" | "no" when the answer was chosen by constrained decoding
    gen: dict | None = None  # the generation settings actually sent, when they differ from the configured ones


# ---- media decoding --------------------------------------------------------------


def decode_frames(images: tuple[bytes, ...]) -> np.ndarray:
    """JPEG (or any PIL-readable) frames -> uint8 array (n_frames, height, width, 3), RGB.

    Raises ValueError when there are no frames or they differ in size.
    """
    from PIL import Image

    if not images:
        raise ValueError("video media has no frames")
    frames = []
    for i, data in enumerate(images):
        with Image.open(io.BytesIO(data)) as im:
            frames.append(np.asarray(im.convert("RGB")))
        if frames[-1].shape != frames[0].shape:
            raise ValueError(f"frame {i} is {frames[-1].shape[1]}x{frames[-1].shape[0]}, frame 0 is "
                             f"{frames[0].shape[1]}x{frames[0].shape[0]}: all frames must have one size")
    return np.stack(frames)


def decode_wav(data: bytes, sample_rate: int) -> np.ndarray:
    """16-bit PCM WAV bytes -> mono float32 samples in [-1, 1] at ``sample_rate`` Hz.

    Channels are averaged; other rates are resampled (torchaudio sinc, as
    ``tasks.dsp.resample``).  Raises ValueError for other sample widths.
    """
    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"audio media must be 16-bit PCM WAV, got {8 * w.getsampwidth()}-bit")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
    x = (pcm.mean(axis=1) / PCM16_MAX).astype(np.float32)
    if rate != sample_rate:
        from tasks.dsp import resample

        x = resample(x, rate, sample_rate)
    return x


# ---- model identity --------------------------------------------------------------


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder (``*.safetensors``, else ``pytorch_model*.bin``), sorted."""
    for pattern in WEIGHT_GLOBS:
        files = sorted(folder.glob(pattern))
        if files:
            return files
    return []


def folder_digest(folder: Path) -> str:
    """sha256 hex of config.json plus every weight file (names and bytes, in name order).

    Reads every weight byte: ~1-2 s per GB.
    """
    h = hashlib.sha256()
    for path in [folder / "config.json", *weight_files(folder)]:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                h.update(chunk)
    return h.hexdigest()


def yes_no_token_ids(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Ids of the first token of each spelling in ``YES_VARIANTS`` / ``NO_VARIANTS``.

    ``yes_prob`` takes, for each word, the max probability over its variants
    (bare "yes" follows an opening quote as in ``{"present": "``; " yes" follows
    a space).  Ids shared by both words are dropped (they tell nothing).
    """
    def first_ids(words: tuple[str, ...]) -> set[int]:
        return {ids[0] for w in words if (ids := tokenizer.encode(w, add_special_tokens=False))}

    yes, no = first_ids(YES_VARIANTS), first_ids(NO_VARIANTS)
    return tuple(sorted(yes - no)), tuple(sorted(no - yes))


# ---- in-process backend ----------------------------------------------------------


def _resolve_dtype(dtype: str, device: str) -> torch.dtype | str:
    if dtype == "auto":  # the checkpoint's own dtype on GPU; float32 on CPU (bf16 matmuls are slow there)
        return "auto" if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


class LocalModel:
    """A Hugging Face VLM/ALM folder loaded in-process (build with ``load_local``).

    Attributes: ``model_id`` ("<model_type>:<folder name>@<sha256[:12] of
    config.json + weight files>"), ``arch`` (a key of ``ARCH_CLASSES``),
    ``modality`` ("video" | "audio"), ``random_weights`` (True when the
    folder's ``semioflow_tiny.json`` says so), ``folder``, ``device``,
    ``max_pixels``, and the loaded ``model`` / ``processor``.
    """

    def __init__(self, *, folder: Path, arch: str, model_id: str, random_weights: bool, model: Any,
                 processor: Any, device: str, max_pixels: int):
        self.folder = folder
        self.arch = arch
        self.modality = ARCH_MODALITY[arch]
        self.model_id = model_id
        self.random_weights = random_weights
        self.model = model
        self.processor = processor
        self.device = device
        self.max_pixels = max_pixels
        self.yes_ids, self.no_ids = yes_no_token_ids(processor.tokenizer)

    def __repr__(self) -> str:
        return f"LocalModel({self.model_id!r}, device={self.device!r}, random_weights={self.random_weights})"

    # -- prompt ---------------------------------------------------------------------

    def messages(self, system: str, media: Media, prompt: str) -> list[dict]:
        """The chat messages of one request: system (if any), then user = media, media.text, prompt."""
        if media.kind != self.modality:
            raise ConfigError(f"{self.model_id} takes {self.modality}, got {media.kind} media; set the "
                              f"{media.kind} arm's model to a {media.kind} model folder")
        content: list[dict] = [{"type": media.kind}]
        if media.text:
            content.append({"type": "text", "text": media.text + MEDIA_TEXT_SEPARATOR})
        content.append({"type": "text", "text": prompt})
        messages = [{"role": "system", "content": system}] if system else []
        return messages + [{"role": "user", "content": content}]

    def prompt_text(self, system: str, media: Media, prompt: str, *, answer_prefix: str = "") -> str:
        """The rendered chat text (media placeholders not yet expanded) + ``answer_prefix``."""
        text = self.processor.apply_chat_template(
            self.messages(system, media, prompt), tokenize=False, add_generation_prompt=True)
        return text + answer_prefix

    def inputs(self, system: str, media: Media, prompt: str, *, answer_prefix: str = "") -> BatchFeature:
        """The processor output for one request (tensors on ``device``), exactly what ``generate`` feeds.

        For Qwen2.5-VL it holds ``second_per_grid_ts``; for Qwen3-VL the
        timestamps are in ``input_ids`` as text.
        """
        text = self.prompt_text(system, media, prompt, answer_prefix=answer_prefix)
        if media.kind == "audio":
            if media.wav is None:
                raise ValueError("audio media has no wav bytes")
            rate = self.processor.feature_extractor.sampling_rate
            batch = self.processor(text=[text], audio=[decode_wav(media.wav, rate)], sampling_rate=rate,
                                   return_tensors="pt")
        else:
            video, kwargs = self._video(media)
            batch = self.processor(text=[text], videos=[video], **kwargs, return_tensors="pt")
        batch.pop("video_metadata", None)
        batch = batch.to(self.model.device)
        for key in PIXEL_KEYS:  # only these: second_per_grid_ts must keep float32 precision
            if key in batch:
                batch[key] = batch[key].to(self.model.dtype)
        return batch

    def _video(self, media: Media) -> tuple[np.ndarray, dict]:
        """(frames (n, h, w, 3), processor kwargs): video metadata with the fps, and the pixel cap."""
        if not media.fps > 0:
            raise ValueError(f"video media needs fps > 0, got {media.fps}")
        video = decode_frames(media.images)
        n = len(video)
        frames_indices = list(range(n))
        vp = self.processor.video_processor
        if self.arch == "qwen3_vl" and n < vp.temporal_patch_size:
            # its resize refuses clips shorter than one temporal patch: repeat the last frame with
            # its own index, so the timestamps stay those of the real frames
            pad = vp.temporal_patch_size - n
            video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
            frames_indices += [n - 1] * pad
        metadata = {"total_num_frames": n, "fps": float(media.fps), "frames_indices": frames_indices,
                    "duration": n / media.fps, "height": video.shape[1], "width": video.shape[2]}
        kwargs: dict[str, Any] = {"video_metadata": [metadata], "do_sample_frames": False}
        if self.arch == "qwen2_5_vl":
            kwargs["size"] = {"shortest_edge": min(vp.size["shortest_edge"], self.max_pixels),
                              "longest_edge": self.max_pixels}
            kwargs["cap_pixels_per_frame"] = True
        elif self.arch == "qwen3_vl":
            t = len(frames_indices)  # size counts pixels of the whole clip (t x h x w)
            kwargs["size"] = {"shortest_edge": min(vp.size["shortest_edge"], self.max_pixels * t),
                              "longest_edge": self.max_pixels * t}
            kwargs["cap_pixels_per_frame"] = True
        return video, kwargs

    # -- generation -------------------------------------------------------------------

    def generate(self, system: str, media: Media, prompt: str, *, max_new_tokens: int, temperature: float,
                 answer_prefix: str = "", constrained: str | None = None, seed: int = SAMPLING_SEED) -> Reply:
        """Answer one request.

        Inputs: system message, media, prompt; ``max_new_tokens`` (> 0);
        ``temperature`` (0 = greedy, > 0 = sampling with torch seed ``seed``: same seed, same sample);
        ``answer_prefix``: text the answer is forced to start with (appended
        after the assistant turn start, e.g. '{"present": "').
        Output: ``Reply`` (text = answer_prefix + generated continuation).
        """
        from transformers import GenerationConfig

        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        batch = self.inputs(system, media, prompt, answer_prefix=answer_prefix)
        base = self.model.generation_config
        eos = base.eos_token_id if base.eos_token_id is not None else self.processor.tokenizer.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        if temperature > 0:  # plain temperature sampling: top_k=0 / top_p=1 switch the filters off
            sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:  # greedy; the neutral values (ignored, no warning) keep the checkpoint's own ones out
            sampling = dict(do_sample=False, temperature=1.0, top_k=50, top_p=1.0)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, repetition_penalty=1.0, **sampling,
            eos_token_id=sorted(eos_ids) or None,
            pad_token_id=base.pad_token_id if base.pad_token_id is not None else self.processor.tokenizer.pad_token_id,
            bos_token_id=base.bos_token_id,
            output_logits=True, return_dict_in_generate=True)
        n_prompt = batch["input_ids"].shape[1]
        processors = None
        if constrained is not None:
            from transformers import LogitsProcessorList

            processors = LogitsProcessorList([_YesNoChoice(self.processor.tokenizer, n_prompt, constrained)])
        fork_devices = [self.model.device] if self.model.device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            out = self.model.generate(**batch, generation_config=config, logits_processor=processors)
        new_ids = out.sequences[0, n_prompt:].tolist()
        stopped = bool(new_ids) and new_ids[-1] in eos_ids
        finish = "length" if not stopped and len(new_ids) >= max_new_tokens else "stop"
        continuation = self.processor.tokenizer.decode(new_ids, skip_special_tokens=True)
        answer = processors[0].word_of(new_ids[0]) if processors is not None and new_ids else None
        return Reply(text=answer_prefix + continuation, finish_reason=finish,
                     yes_prob=self._yes_prob(out.logits[0][0]), answer=answer)

    def _yes_prob(self, logits: torch.Tensor) -> float | None:
        if not self.yes_ids or not self.no_ids:
            return None
        probs = torch.softmax(logits.float(), dim=-1)
        p_yes = max(float(probs[i]) for i in self.yes_ids)
        p_no = max(float(probs[i]) for i in self.no_ids)
        return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else None


class _YesNoChoice:
    """Logits processor of constrained yes/no decoding (see ``LocalModel.generate``).

    Step 0 keeps only the first tokens of the spellings in ``YES_VARIANTS`` /
    ``NO_VARIANTS`` (the ids ``yes_prob`` compares, so greedy says yes exactly when
    ``yes_prob >= 0.5``); the following steps force the rest of the chosen
    spelling's tokens and then ``then``'s tokens; after that the scores are left alone.
    ``word_of(first new token)`` is the word picked ("yes" | "no").
    """

    def __init__(self, tokenizer: Any, n_prompt: int, then: str):
        yes_first, no_first = yes_no_token_ids(tokenizer)
        if not yes_first or not no_first:
            raise ConfigError("constrained decoding: the tokenizer cannot tell 'yes' from 'no' by a first token")
        self.spellings: dict[int, tuple[str, list[int]]] = {}  # first token id -> (word, the spelling's ids)
        for word, variants, firsts in (("yes", YES_VARIANTS, yes_first), ("no", NO_VARIANTS, no_first)):
            for v in variants:
                ids = tokenizer.encode(v, add_special_tokens=False)
                if ids and ids[0] in firsts:
                    self.spellings.setdefault(ids[0], (word, ids))
        self.then = tokenizer.encode(then, add_special_tokens=False) if then else []
        self.n_prompt = n_prompt

    def word_of(self, first_id: int) -> str:
        return self.spellings[first_id][0]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.n_prompt
        if step == 0:
            allowed = list(self.spellings)
        else:
            forced = self.spellings[int(input_ids[0, self.n_prompt])][1] + self.then
            if step >= len(forced):
                return scores
            allowed = [forced[step]]
        masked = torch.full_like(scores, float("-inf"))
        masked[:, allowed] = scores[:, allowed]
        return masked


def tiny_info(folder: str | Path) -> dict:
    """The folder's ``semioflow_tiny.json`` ({"arch", "seed", "random_weights"}); {} for a real checkpoint."""
    marker = Path(folder) / TINY_MARKER
    if not marker.is_file():
        return {}
    try:
        return json.loads(marker.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{marker} is not valid JSON ({e}); rebuild the folder with build_tiny") from e


def _read_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"no config.json in model folder {folder}: {HOW_TO}")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config_path} is not valid JSON ({e}); re-download the model folder") from e


def load_local(path: str | Path, *, device: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
               dtype: str = "auto") -> LocalModel:
    """Load a Hugging Face model folder in-process (``local_files_only``; nothing downloads).

    Inputs: ``path`` of the folder; ``device`` ("auto" = cuda if available,
    else cpu; or e.g. "cpu", "cuda:0"); ``max_pixels`` per video frame;
    ``dtype`` ("auto" = checkpoint dtype on GPU, float32 on CPU; or float32 /
    bfloat16 / float16).
    Output: a ``LocalModel``.
    Raises ``ModelNotFoundError`` (no folder, no config.json, no weights,
    files the loader cannot read) or ``ConfigError`` (unsupported model_type,
    bad device/dtype/max_pixels).
    """
    import transformers

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(f"no model folder at {folder}: {HOW_TO}")
    config = _read_config(folder)
    model_type = config.get("model_type")
    if model_type not in ARCH_CLASSES:
        raise ConfigError(f"{folder}: model_type {model_type!r} is not supported by the in-process backend; "
                          f"use a folder of one of {', '.join(ARCH_CLASSES)} (or serve it with "
                          f"`transformers serve` / vLLM and use the OpenAI-compatible backend)")
    if not weight_files(folder):
        raise ModelNotFoundError(f"no weight files (*.safetensors) in {folder}: {HOW_TO}")
    if max_pixels < 1:
        raise ConfigError(f"max_pixels must be a positive number of pixels per frame, got {max_pixels}")
    device = str(resolve_device(device, "device"))
    torch_dtype = _resolve_dtype(dtype, device)
    random_weights = bool(tiny_info(folder).get("random_weights"))
    model_cls = getattr(transformers, ARCH_CLASSES[model_type])
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
        model = model_cls.from_pretrained(folder, local_files_only=True, dtype=torch_dtype, device_map=device)
    except (OSError, ValueError) as e:  # missing / unreadable tokenizer, processor or weight files
        raise ModelNotFoundError(f"could not load the model folder {folder} ({e}): {HOW_TO}") from e
    model.eval()
    model_id = f"{model_type}:{folder.name}@{folder_digest(folder)[:12]}"
    return LocalModel(folder=folder, arch=model_type, model_id=model_id, random_weights=random_weights,
                      model=model, processor=processor, device=device, max_pixels=max_pixels)
