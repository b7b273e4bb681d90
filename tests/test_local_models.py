"""local_models: tiny random-weight checkpoints of the real architectures through the real
loaders (AutoProcessor + ...ForConditionalGeneration), the in-process backend's prompt layout,
fps reaching the model, pixel caps, yes_prob, and clear errors for missing/unsupported folders."""

from __future__ import annotations

import io
import json
import re
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.errors import ConfigError, ModelNotFoundError
from tasks.local_models import Media, Reply, decode_wav, load_local
from tasks.tiny_models import build_tiny

VIDEO_ARCHES = ["qwen2_5_vl", "internvl", "qwen3_vl"]
PREFIX = '{"present": "'
SYSTEM = "You assist epileptologists."
PROMPT = "Does the patient move an arm? Answer yes or no."
N_FRAMES = 4
FRAME_W, FRAME_H = 80, 64  # pixels
SINE_HZ = 440.0
WAV_RATE = 22_050  # Hz; not the feature extractor's 16 kHz, so decoding must resample


def jpeg_frames(n: int = N_FRAMES, w: int = FRAME_W, h: int = FRAME_H) -> tuple[bytes, ...]:
    """n JPEG frames of a white square moving right over a darkening background."""
    out = []
    for i in range(n):
        a = np.full((h, w, 3), 200 - 30 * i, np.uint8)
        a[10:30, 5 + 8 * i:25 + 8 * i] = 255
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG")
        out.append(buf.getvalue())
    return tuple(out)


def sine_wav(seconds: float = 1.0, rate: int = WAV_RATE) -> bytes:
    """Mono 16-bit PCM WAV bytes of a sine tone."""
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * SINE_HZ * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def video(fps: float = 2.0, text: str | None = None, **kw) -> Media:
    return Media(kind="video", images=jpeg_frames(**kw), fps=fps, text=text)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(arch, seed=0) -> folder, each built once per module."""
    built = {}

    def get(arch: str, seed: int = 0):
        if (arch, seed) not in built:
            built[arch, seed] = build_tiny(arch, tmp_path_factory.mktemp(f"{arch}_s{seed}"), seed=seed)
        return built[arch, seed]

    return get


@pytest.fixture(scope="module")
def loaded(tiny):
    """loaded(arch) -> LocalModel of the seed-0 tiny folder, loaded once per module."""
    models = {}

    def get(arch: str):
        if arch not in models:
            models[arch] = load_local(tiny(arch), device="cpu")
        return models[arch]

    return get


# ---- the tiny folders ----------------------------------------------------------------


def test_tiny_folder_is_a_normal_hf_checkpoint(tiny):
    import transformers

    folder = tiny("qwen2_5_vl")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "chat_template.jinja", "generation_config.json",
            "semioflow_tiny.json"} <= names
    assert json.loads((folder / "semioflow_tiny.json").read_text()) == {
        "arch": "qwen2_5_vl", "seed": 0, "random_weights": True}
    processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    for word in ("yes", "no", " yes", " no"):
        assert len(processor.tokenizer.encode(word, add_special_tokens=False)) == 1


def test_same_seed_same_weights(tiny, tmp_path):
    again = build_tiny("qwen2_5_vl", tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny("qwen2_5_vl") / "model.safetensors").read_bytes()


# ---- video models ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", VIDEO_ARCHES)
def test_video_generate(arch, tiny, loaded):
    model = loaded(arch)
    assert model.arch == arch and model.modality == "video" and model.random_weights
    reply = model.generate(SYSTEM, video(text="transcript words"), PROMPT, max_new_tokens=6, temperature=0.0,
                           answer_prefix=PREFIX)
    assert isinstance(reply, Reply)
    assert reply.text.startswith(PREFIX)
    assert reply.finish_reason in {"stop", "length"}
    assert reply.yes_prob is not None and 0.0 <= reply.yes_prob <= 1.0
    # greedy is deterministic
    assert model.generate(SYSTEM, video(text="transcript words"), PROMPT, max_new_tokens=6, temperature=0.0,
                          answer_prefix=PREFIX) == reply
    # identity: stable across loads, changes with the weights
    assert re.fullmatch(rf"{arch}:{tiny(arch).name}@[0-9a-f]{{12}}", model.model_id)
    assert load_local(tiny(arch), device="cpu").model_id == model.model_id
    assert load_local(tiny(arch, seed=1), device="cpu").model_id.split("@")[1] != model.model_id.split("@")[1]


def test_sampling_is_seeded(loaded):
    model = loaded("qwen2_5_vl")
    a, b = (model.generate(SYSTEM, video(), PROMPT, max_new_tokens=8, temperature=1.0, answer_prefix=PREFIX)
            for _ in range(2))
    assert a == b
    assert a.finish_reason == "length"  # random weights rarely say <|im_end|> within 8 tokens


def test_prompt_layout(loaded):
    """system, then media first, then media.text, then the prompt, then the forced prefix."""
    model = loaded("qwen2_5_vl")
    text = model.prompt_text(SYSTEM, video(text="the transcript"), PROMPT, answer_prefix=PREFIX)
    assert text.index(SYSTEM) < text.index("<|video_pad|>") < text.index("the transcript") < text.index(PROMPT)
    assert text.endswith("<|im_start|>assistant\n" + PREFIX)
    assert text.count("<|video_pad|>") == 1  # the frames are ONE video, not N images
    assert "<|image_pad|>" not in text


def test_yes_prob_is_first_position_softmax(loaded):
    """yes_prob = P(yes) / (P(yes) + P(no)) at the position right after the prefix."""
    model = loaded("internvl")
    media = video()
    reply = model.generate(SYSTEM, media, PROMPT, max_new_tokens=1, temperature=0.0, answer_prefix=PREFIX)
    with torch.inference_mode():
        logits = model.model(**model.inputs(SYSTEM, media, PROMPT, answer_prefix=PREFIX)).logits[0, -1]
    probs = torch.softmax(logits.float(), dim=-1)
    p_yes = max(float(probs[i]) for i in model.yes_ids)
    p_no = max(float(probs[i]) for i in model.no_ids)
    assert reply.yes_prob == pytest.approx(p_yes / (p_yes + p_no), rel=1e-4)


# ---- fps and pixels reach the model ----------------------------------------------------


def test_fps_reaches_qwen2_5_vl_positions(loaded):
    """second_per_grid_ts = temporal_patch_size / fps, and the temporal rope ids follow it."""
    model = loaded("qwen2_5_vl")
    temporal = {}
    for fps in (1.0, 2.0):
        inputs = model.inputs(SYSTEM, video(fps=fps), PROMPT)
        assert inputs["second_per_grid_ts"].tolist() == [pytest.approx(2 / fps)]
        positions, _ = model.model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs["second_per_grid_ts"], attention_mask=inputs["attention_mask"])
        is_video = inputs["mm_token_type_ids"][0] == 2
        temporal[fps] = sorted(set(positions[0, 0, is_video].tolist()))
    # 4 frames = 2 temporal patches; tokens_per_second 2: ids 2 s * 2 apart at 1 fps, 1 s * 2 at 2 fps
    assert temporal[1.0][1] - temporal[1.0][0] == 4
    assert temporal[2.0][1] - temporal[2.0][0] == 2


def test_fps_reaches_qwen3_vl_timestamps(loaded):
    model = loaded("qwen3_vl")
    stamps = {}
    for fps in (1.0, 2.0):
        ids = model.inputs(SYSTEM, video(fps=fps), PROMPT)["input_ids"][0]
        stamps[fps] = re.findall(r"<([\d.]+) seconds>", model.processor.tokenizer.decode(ids))
    # frame pairs (0, 1) and (2, 3): mean times 0.5 s and 2.5 s at 1 fps, 0.25 s and 1.25 s at 2 fps
    assert stamps[1.0] == ["0.5", "2.5"]
    assert stamps[2.0] == ["0.2", "1.2"]


def test_qwen3_vl_single_frame(loaded):
    model = loaded("qwen3_vl")
    reply = model.generate(SYSTEM, video(n=1), PROMPT, max_new_tokens=2, temperature=0.0)
    assert reply.finish_reason in {"stop", "length"}


def test_pixel_cap(tiny):
    """max_pixels caps each frame (Qwen2.5-VL: 28-pixel units; Qwen3-VL: 32) ..."""
    big = video(w=224, h=224)
    for arch, unit in (("qwen2_5_vl", 28), ("qwen3_vl", 32)):
        model = load_local(tiny(arch), device="cpu", max_pixels=64 * 64)
        t, h, w = model.inputs(SYSTEM, big, PROMPT)["video_grid_thw"][0].tolist()
        patch = unit // 2
        assert t == 2 and (h * patch) * (w * patch) <= 64 * 64, arch
    # ... and InternVL frames become its fixed tile, one per frame
    model = load_local(tiny("internvl"), device="cpu")
    assert tuple(model.inputs(SYSTEM, big, PROMPT)["pixel_values"].shape) == (N_FRAMES, 3, 56, 56)


# ---- audio -------------------------------------------------------------------------------


def test_audio_generate(loaded):
    model = loaded("audioflamingo3")
    assert model.modality == "audio" and model.random_weights
    media = Media(kind="audio", wav=sine_wav(), text="hello")
    assert "<sound>hello" in model.prompt_text(SYSTEM, media, PROMPT)
    reply = model.generate(SYSTEM, media, PROMPT, max_new_tokens=4, temperature=0.0, answer_prefix=PREFIX)
    assert reply.text.startswith(PREFIX)
    assert reply.finish_reason in {"stop", "length"}
    assert 0.0 <= reply.yes_prob <= 1.0


def test_decode_wav_resamples():
    x = decode_wav(sine_wav(seconds=0.5), 16_000)
    assert x.dtype == np.float32 and len(x) == 8_000
    assert 0.25 < np.abs(x).max() < 0.35


# ---- errors ---------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelNotFoundError) as err:
        load_local(missing)
    assert str(missing) in str(err.value)
    assert "Hugging Face model folder" in str(err.value) and "query.vision.model" in str(err.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_local(tmp_path)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="'llama' is not supported"):
        load_local(tmp_path)


def test_wrong_media_kind(loaded):
    with pytest.raises(ConfigError, match="takes video"):
        loaded("qwen2_5_vl").generate(SYSTEM, Media(kind="audio", wav=sine_wav()), PROMPT,
                                      max_new_tokens=1, temperature=0.0)


def test_unknown_tiny_arch(tmp_path):
    with pytest.raises(ConfigError, match="no tiny model"):
        build_tiny("llava", tmp_path)
