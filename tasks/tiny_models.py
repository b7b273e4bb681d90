"""Tiny random-weight checkpoints of the real architectures, saved as Hugging Face folders.

``build_tiny(arch, out_dir, seed=...)`` writes a folder of the layout a
downloaded checkpoint has, with a random-weight model of the real
architecture (``tasks.local_models.ARCH_CLASSES``) at toy size (hidden 64,
2 layers, byte-level BPE tokenizer of ~1000 tokens trained offline on the
prompt YAML files).  It loads through ``tasks.local_models.load_local`` like
a user's checkpoint, serves with ``transformers serve``, and carries
``semioflow_tiny.json`` (``{"arch", "seed", "random_weights": true}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tasks.errors import ConfigError
from tasks.local_models import ARCH_CLASSES, ARCHES, DEFAULT_MAX_PIXELS, NO_VARIANTS, TINY_MARKER, YES_VARIANTS


# ---- tiny random-weight checkpoints --------------------------------------------------

TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6)
TINY_HEAD_DIM = 16  # hidden_size / num_attention_heads
TINY_MROPE_SECTION = [2, 3, 3]  # temporal, height, width rotary pairs; sums to TINY_HEAD_DIM / 2
TINY_VOCAB_TARGET = 1000  # BPE vocabulary size asked of the trainer (specials come on top)
TINY_VOCAB_MULTIPLE = 64  # embedding rows are padded to a multiple of this, as real checkpoints do
TINY_INTERNVL_IMAGE = 56  # InternVL tile side (pixels): 4x4 patches of 14 -> 4 tokens per frame after pixel shuffle
TINY_MIN_PIXELS = 56 * 56  # Qwen-family processors' min pixels per frame (the real checkpoints' value)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                   "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
AF3_SOUND_TOKEN = "<sound>"

# The Qwen2-VL / Qwen2.5-VL-Instruct chat template (as shipped with the checkpoints).
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL-Instruct's layout without the tool-call branches: no default system message; the
# processor expands each <|video_pad|> into "<t seconds><|vision_start|>...<|vision_end|>" per frame pair.
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# InternVL3-hf's template (transformers' conversion script): <IMG_CONTEXT> / <video> placeholders.
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Audio Flamingo 3-hf's processor template: one <sound> first, then the user's text parts.
AF3_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages if m['content'] is not none %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% set audio = namespace(found=False) %}{% set text_buf = namespace(v='') %}"
    "{% for c in m['content'] %}{% if c.get('type') == 'audio' or 'audio' in c %}{% set audio.found = True %}"
    "{% elif c.get('type') == 'text' or 'text' in c %}{% set text_buf.v = text_buf.v + c['text'] %}{% endif %}"
    "{% endfor %}{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATES = {"qwen2_5_vl": QWEN2_5_VL_TEMPLATE, "qwen3_vl": QWEN3_VL_TEMPLATE,
                  "internvl": INTERNVL_TEMPLATE, "audioflamingo3": AF3_TEMPLATE}

# Extra corpus lines so the answer vocabulary gets whole tokens ("yes", " yes", "no", JSON keys).
_ANSWER_LINES = ['{"present": "yes", "justification": "The patient moves."}',
                 '{"present": "no", "justification": "Nothing is seen or heard."}',
                 "Answer yes or no. yes no Yes No 0.5 seconds 1.0 seconds Frame1: Frame2:"]
_ANSWER_REPEATS = 50


def _train_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE (Qwen2's pre-tokenizer) trained on tasks/prompts/*.yaml + answer lines: (vocab, merges)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    corpus = [p.read_text() for p in sorted((Path(__file__).parent / "prompts").glob("*.yaml"))]
    corpus += _ANSWER_LINES * _ANSWER_REPEATS
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_TARGET, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"])
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def _tiny_tokenizer(arch: str) -> Any:
    """A Qwen2Tokenizer (the class all four architectures ship) with ``arch``'s special tokens added."""
    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    vocab, merges = _train_vocab()
    specials = QWEN_SPECIALS[1:]  # <|endoftext|> is in the trained vocabulary already
    named: dict[str, str] = {}  # model-specific names the processor reads, e.g. tokenizer.start_image_token
    if arch == "internvl":
        specials = specials + list(INTERNVL_TOKENS.values())
        named = dict(INTERNVL_TOKENS)
    elif arch == "audioflamingo3":
        specials = specials + [AF3_SOUND_TOKEN]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         unk_token=None, extra_special_tokens=named or list(specials), model_max_length=32768)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
    for word in YES_VARIANTS + NO_VARIANTS:
        ids = tok.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise AssertionError(f"tiny tokenizer splits {word!r} into {ids}; add it to _ANSWER_LINES")
    return tok


def _padded_vocab(tokenizer: Any) -> int:
    n = len(tokenizer)
    return -(-n // TINY_VOCAB_MULTIPLE) * TINY_VOCAB_MULTIPLE


def _tiny_text_config(tokenizer: Any, **extra: Any) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {**TINY_TEXT, "vocab_size": _padded_vocab(tokenizer), "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"), "pad_token_id": ids("<|endoftext|>"), **extra}


def _tiny_parts(arch: str, tokenizer: Any) -> tuple[Any, Any]:
    """(config, processor) of a tiny model of ``arch``."""
    import transformers as tf

    ids = tokenizer.convert_tokens_to_ids
    template = CHAT_TEMPLATES[arch]
    qwen_ids = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                    vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": TINY_MROPE_SECTION}
    if arch == "qwen2_5_vl":
        size = {"shortest_edge": TINY_MIN_PIXELS, "longest_edge": DEFAULT_MAX_PIXELS}
        config = tf.Qwen2_5_VLConfig(
            text_config=_tiny_text_config(tokenizer, rope_parameters=rope),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                               spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2,
                               window_size=112, out_hidden_size=TINY_TEXT["hidden_size"],
                               fullatt_block_indexes=[1]),
            **qwen_ids)
        processor = tf.Qwen2_5_VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2),
            tokenizer=tokenizer,
            video_processor=tf.Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2),
            chat_template=template)
    elif arch == "qwen3_vl":
        config = tf.Qwen3VLConfig(
            text_config=_tiny_text_config(tokenizer, head_dim=TINY_HEAD_DIM,
                                          rope_parameters={**rope, "mrope_interleaved": True}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                               spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=TINY_TEXT["hidden_size"],
                               num_position_embeddings=64, deepstack_visual_indexes=[1]),
            **qwen_ids)
        mean_std = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        processor = tf.Qwen3VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(
                size={"shortest_edge": TINY_MIN_PIXELS, "longest_edge": DEFAULT_MAX_PIXELS}, patch_size=16,
                merge_size=2, temporal_patch_size=2, **mean_std),
            tokenizer=tokenizer,
            video_processor=tf.Qwen3VLVideoProcessor(
                size={"shortest_edge": 4096, "longest_edge": DEFAULT_MAX_PIXELS * 64}, patch_size=16,
                merge_size=2, temporal_patch_size=2, **mean_std),
            chat_template=template)
    elif arch == "internvl":
        side = TINY_INTERNVL_IMAGE
        config = tf.InternVLConfig(
            vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               image_size=[side, side], patch_size=[14, 14]),
            text_config=dict(model_type="qwen2", **_tiny_text_config(tokenizer)),
            image_token_id=ids(INTERNVL_TOKENS["context_image_token"]), image_seq_length=4, downsample_ratio=0.5)
        processor = tf.InternVLProcessor(
            image_processor=tf.GotOcr2ImageProcessor(size={"height": side, "width": side}, max_patches=1),
            tokenizer=tokenizer,
            video_processor=tf.InternVLVideoProcessor(size={"height": side, "width": side}),
            image_seq_length=4, chat_template=template)
    elif arch == "audioflamingo3":
        config = tf.AudioFlamingo3Config(
            audio_config=dict(model_type="audioflamingo3_encoder", num_mel_bins=128, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=64, hidden_size=32),
            text_config=dict(model_type="qwen2", **_tiny_text_config(tokenizer)),
            audio_token_id=ids(AF3_SOUND_TOKEN))
        processor = tf.AudioFlamingo3Processor(
            feature_extractor=tf.WhisperFeatureExtractor(feature_size=128, return_attention_mask=True),
            tokenizer=tokenizer, chat_template=template, audio_token=AF3_SOUND_TOKEN)
    else:
        raise ConfigError(f"no tiny model for arch {arch!r}; use one of {', '.join(ARCHES)}")
    return config, processor


def build_tiny(arch: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a random-weight model of the real ``arch`` at toy size as a Hugging Face folder.

    Inputs: ``arch`` (a key of ``ARCH_CLASSES``), ``out_dir`` (created; files
    are overwritten), ``seed`` (same seed -> byte-identical weights).
    Output: ``out_dir`` holding config.json, model.safetensors,
    generation_config.json, tokenizer files, processor config, chat template
    and ``semioflow_tiny.json``.  Loads with ``AutoProcessor`` +
    ``ARCH_CLASSES[arch]`` (or ``load_local``) and serves with
    ``transformers serve``.
    """
    import transformers as tf

    if arch not in ARCH_CLASSES:
        raise ConfigError(f"no tiny model for arch {arch!r}; use one of {', '.join(ARCHES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer(arch)
    config, processor = _tiny_parts(arch, tokenizer)
    config.architectures = [ARCH_CLASSES[arch]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(tf, ARCH_CLASSES[arch])(config).eval()
    ids = tokenizer.convert_tokens_to_ids
    model.generation_config = tf.GenerationConfig(
        bos_token_id=ids("<|endoftext|>"), eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
        pad_token_id=ids("<|endoftext|>"))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / TINY_MARKER).write_text(json.dumps({"arch": arch, "seed": seed, "random_weights": True}, indent=2) + "\n")
    return out
