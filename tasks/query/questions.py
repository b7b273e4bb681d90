"""Arms, the features each arm is asked about, and one question per window x arm x feature (or group)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


from tasks.catalog import (Catalog, Feature, batched_version, prompt_version, render_batched,
                           render_prompt)
from tasks.local_models import Media
from tasks.params import QueryParams


VIDEO_ARMS = ("raw", "face_crop", "pose_overlay")
AUDIO_ARMS = ("audio_raw", "audio_denoised", "audio_transcript")
ARMS = VIDEO_ARMS + AUDIO_ARMS
ARM_GROUPS = {"raw": ("facial", "limb_body"), "face_crop": ("facial",), "pose_overlay": ("limb_body",),
              "audio_raw": ("audio",), "audio_denoised": ("audio",), "audio_transcript": ("audio",)}


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


