"""The arms: which are baselines, MLLM arms or the reference, their order, their readable names, and the verdict.

Shared by evaluate (``tables.md``, ``metrics.json``) and the report (its
overview), so both say the same verdict from the same F1 values; the review
app may use the names too.  No stage imports another for these.

An arm answered by several models is evaluated per model as
``<arm>@<model_id>``; ``base_arm`` strips the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from tasks.catalog import Catalog

BASELINE_ARMS = ("r2plus1d", "vivit")  # video classifiers fine-tuned by train
REFERENCE_ARM = "always_yes"  # every recording positive: the floor an arm must clear
RAW_ARM = {"video": "raw", "audio": "audio_raw"}  # per catalog modality
ENHANCED_ARMS = {"face_crop": ("face_crop",), "pose_overlay": ("pose_overlay",),
                 "denoise_transcript": ("audio_denoised", "audio_transcript")}  # per catalog enhancement
ARM_ORDER = ("r2plus1d", "vivit", "raw", "face_crop", "pose_overlay", "audio_raw", "audio_denoised",
             "audio_transcript", REFERENCE_ARM)
ARM_NAMES = {"r2plus1d": "R(2+1)D", "vivit": "ViViT", "raw": "MLLM raw", "face_crop": "MLLM + face crop",
             "pose_overlay": "MLLM + pose overlay", "audio_raw": "MLLM raw audio",
             "audio_denoised": "MLLM + denoised audio", "audio_transcript": "MLLM + transcript",
             REFERENCE_ARM: "Always yes"}
MODEL_SEP = "@"  # "<arm>@<model_id>" where an arm has several models
# gait (15_gait) models: BioGait, its ablations and the baselines
GAIT_MODEL_NAMES = {"biogait": "BioGait", "biogait_no_ted": "BioGait without TED",
                    "biogait_no_bio": "BioGait without biomechanics (vision only)",
                    "biogait_no_ted_no_bio": "BioGait without TED or biomechanics",
                    "zero_shot": "Zero-shot VLM", "kinematics_logreg": "Kinematics only (logistic regression)"}
GAIT_VIDEO_PREFIX = "video_"  # gait's video baselines: video_<baseline arm>
COMPARISONS = ("mllm_vs_baseline", "enhanced_vs_raw")


def base_arm(arm: str) -> str:
    """The arm id without its model (``raw@m`` -> ``raw``)."""
    return arm.partition(MODEL_SEP)[0]


def order(arm: str) -> int:
    """Position of an arm (or ``arm@model``) in ``ARM_ORDER``; unknown arms last."""
    base = base_arm(arm)
    return ARM_ORDER.index(base) if base in ARM_ORDER else len(ARM_ORDER)


def sort_arms(arms: Iterable[str]) -> list[str]:
    """Arms in ``ARM_ORDER``, then by name (so models of one arm sit together)."""
    return sorted(set(arms), key=lambda a: (order(a), a))


def display(arm: str) -> str:
    """The readable name of an arm, with its model where the id carries one: ``MLLM raw (model)``."""
    base, _, model = arm.partition(MODEL_SEP)
    name = ARM_NAMES.get(base, base)
    return f"{name} ({model})" if model else name


def kind(arm: str) -> str:
    """``baseline``, ``reference`` or ``mllm``."""
    base = base_arm(arm)
    return "baseline" if base in BASELINE_ARMS else "reference" if base == REFERENCE_ARM else "mllm"


def gait_model_name(model: str) -> str:
    """The readable name of a gait model (``video_<arm>`` is the video baseline of that arm)."""
    if model.startswith(GAIT_VIDEO_PREFIX):
        return f"{display(model[len(GAIT_VIDEO_PREFIX):])} (video baseline)"
    return GAIT_MODEL_NAMES.get(model, model)


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of ``k`` successes in ``n`` fair coin flips (doubling the smaller tail)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def best(f1: Mapping[str, float], base_arms: Iterable[str]) -> str | None:
    """The arm of highest F1 among those whose base arm is in ``base_arms``; ties go to the arm first in
    ``ARM_ORDER``, then by name, so the choice is stable.  ``f1``: arm -> F1 of one feature."""
    bases = set(base_arms)
    cands = [a for a in sort_arms(f1) if base_arm(a) in bases]
    return max(cands, key=lambda a: (f1[a], -order(a)), default=None)  # max keeps the first of equal keys


def pairs(f1: Mapping[tuple[str, str], float], catalog: Catalog) -> dict[str, dict[str, tuple[str, str]]]:
    """Which arms are compared per feature: ``{"mllm_vs_baseline": {feature: (best MLLM arm, best baseline)},
    "enhanced_vs_raw": {feature: (best enhanced arm, raw arm)}}``.

    ``f1``: (arm, feature_id) -> F1.  MLLM vs baseline on the video features only (the baselines see video);
    enhanced vs raw on every feature, the enhancement being the feature's catalog ``enhancement``.
    """
    per: dict[str, dict[str, float]] = {}
    for (arm, fid), v in f1.items():
        per.setdefault(fid, {})[arm] = v
    mllm = {base_arm(a) for a, _ in f1} - set(BASELINE_ARMS) - {REFERENCE_ARM}
    out: dict[str, dict[str, tuple[str, str]]] = {key: {} for key in COMPARISONS}
    for f in catalog.features:
        arms = per.get(f.id, {})
        if f.modality == "video":
            a, b = best(arms, mllm), best(arms, BASELINE_ARMS)
            if a and b:
                out["mllm_vs_baseline"][f.id] = (a, b)
        a, b = best(arms, ENHANCED_ARMS.get(f.enhancement, ())), best(arms, (RAW_ARM[f.modality],))
        if a and b:
            out["enhanced_vs_raw"][f.id] = (a, b)
    return out


def verdict(f1: Mapping[tuple[str, str], float], catalog: Catalog) -> dict:
    """The summary of ``pairs``: per comparison wins, losses, ties, features, of (features it could have had),
    sign_test_p (exact, over the features that differ) and pairs; and ``line``, the sentence tables.md and the
    report lead with (descriptive: the "best" arm is chosen on the same data)."""
    chosen = pairs(f1, catalog)
    n_video = sum(f.modality == "video" for f in catalog.features)
    out: dict = {}
    for key, total in (("mllm_vs_baseline", n_video), ("enhanced_vs_raw", len(catalog.features))):
        diffs = [f1[(a, fid)] - f1[(b, fid)] for fid, (a, b) in chosen[key].items()]
        wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        out[key] = {"wins": wins, "losses": losses, "ties": len(diffs) - wins - losses, "features": len(diffs),
                    "of": total, "sign_test_p": binomial_two_sided(wins, wins + losses), "pairs": chosen[key]}
    mb, er = out["mllm_vs_baseline"], out["enhanced_vs_raw"]
    first = (f"best MLLM arm beats best baseline on {mb['wins']}/{mb['features']} features" if mb["features"]
             else f"best MLLM arm beats best baseline on 0/{n_video} features (no MLLM or baseline predictions)")
    second = (f"enhancement improves {er['wins']}/{er['features']}" if er["features"]
              else f"enhancement improves 0/{len(catalog.features)} (no raw/enhanced MLLM predictions)")
    out["line"] = f"{first}; {second}"
    return out
