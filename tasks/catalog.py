"""The ILAE semiology feature catalog and prompt rendering.

The catalog and the prompt wording are data (``tasks/prompts/*.yaml``); this
module only loads, validates and renders them.  ``load_catalog()`` returns a
``Catalog`` with 20 ``Feature`` records in three groups; ``render_prompt``
produces the exact text sent to a model for one feature, and
``prompt_version`` the key that goes into answer-cache keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml

from tasks.errors import CatalogError

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
FEATURES_YAML = PROMPTS_DIR / "features.yaml"
TEMPLATES_YAML = PROMPTS_DIR / "templates.yaml"

GROUPS = ("facial", "limb_body", "audio")
GROUP_SIZES = {"facial": 7, "limb_body": 11, "audio": 2}
MODALITIES = ("video", "audio")
ENHANCEMENTS = ("face_crop", "pose_overlay", "denoise_transcript")
METRICS = ("f1_yes", "macro_f1")  # F1 of "yes" (default); macro F1 over yes and no (S3 scores verbal responsiveness so)

Group = Literal["facial", "limb_body", "audio"]
Modality = Literal["video", "audio"]


@dataclass(frozen=True)
class Feature:
    """One semiology feature: stable id, display name, group and prompt."""

    id: str
    name: str
    group: Group
    modality: Modality
    enhancement: str
    prompt: str
    version: int
    aliases: tuple[str, ...] = ()  # other datasets' names for it (S3's close_eyes); never asked, only read
    metric: str = "f1_yes"  # how it is scored (METRICS): F1 of "yes", or macro F1 over yes/no (S3's rule)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "group": self.group,
            "modality": self.modality,
            "enhancement": self.enhancement,
            "prompt": self.prompt,
            "version": self.version,
        }


@dataclass(frozen=True)
class Templates:
    """Prompt wrappers shared by every feature (see templates.yaml)."""

    version: int
    system: str
    context: dict[str, str]
    answer_format: str
    transcript: str  # secondary text of the audio + transcript arm ({transcript})
    batched: dict[str, str]  # intro, item ({id}, {prompt}), answer_format


@dataclass(frozen=True)
class Catalog:
    """The whole catalog: ordered features plus the group metadata."""

    version: int
    features: tuple[Feature, ...]
    group_names: dict[str, str]
    templates: Templates

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(f.id for f in self.features)

    def by_id(self, feature_id: str) -> Feature:
        for f in self.features:
            if f.id == feature_id:
                return f
        raise CatalogError(f"unknown feature id {feature_id!r}; known: {', '.join(self.ids)}")

    def resolve(self, name: str) -> str:
        """The feature id ``name`` is (an id or a declared alias); ``CatalogError`` naming it otherwise."""
        for f in self.features:
            if name == f.id or name in f.aliases:
                return f.id
        raise CatalogError(f"unknown feature {name!r}: not a feature id or alias in features.yaml (ids: "
                           f"{', '.join(self.ids)}); declare another dataset's name under the feature's `aliases`")

    def in_group(self, group: str) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.group == group)


def _require(mapping: dict, key: str, where: str):
    if not isinstance(mapping, dict) or key not in mapping:
        raise CatalogError(f"{where}: missing key {key!r}")
    return mapping[key]


def _parse_templates(raw: dict) -> Templates:
    where = TEMPLATES_YAML.name
    context = _require(raw, "context", where)
    for modality in MODALITIES:
        _require(context, modality, f"{where}: context")
    version = _require(raw, "version", where)
    if not isinstance(version, int) or version < 1:
        raise CatalogError(f"{where}: version must be a positive integer")
    return Templates(
        version=version,
        system=str(_require(raw, "system", where)).strip(),
        context={m: str(context[m]).strip() for m in MODALITIES},
        answer_format=str(_require(raw, "answer_format", where)).strip(),
        transcript=str(_require(raw, "transcript", where)).strip(),
        batched={k: str(_require(_require(raw, "batched", where), k, f"{where}: batched")).strip()
                 for k in ("intro", "item", "answer_format")},
    )


def parse_catalog(raw_features: dict, raw_templates: dict) -> Catalog:
    """Validate parsed YAML and build a ``Catalog``.

    Raises ``CatalogError`` naming the offending feature/key: duplicate ids,
    unknown group/modality, non-positive versions, or group sizes other than
    7 facial / 11 limb & body / 2 audio.
    """
    where = FEATURES_YAML.name
    groups = _require(raw_features, "groups", where)
    features_raw = _require(raw_features, "features", where)
    group_names, group_enh = {}, {}
    for g in GROUPS:
        meta = _require(groups, g, f"{where}: groups")
        group_names[g] = str(_require(meta, "display_name", f"{where}: groups.{g}"))
        enh = _require(meta, "enhancement", f"{where}: groups.{g}")
        if enh not in ENHANCEMENTS:
            raise CatalogError(f"{where}: groups.{g}.enhancement {enh!r} not in {ENHANCEMENTS}")
        group_enh[g] = enh
    feats: list[Feature] = []
    seen: set[str] = set()
    required = {"id", "name", "group", "modality", "version", "prompt"}
    allowed = required | {"aliases", "metric"}
    names: set[str] = set()
    for i, item in enumerate(features_raw):
        fid = item.get("id") if isinstance(item, dict) else None
        label = f"{where}: feature #{i} ({fid})"
        if not isinstance(item, dict):
            raise CatalogError(f"{label}: not a mapping")
        extra = set(item) - allowed
        if extra:
            raise CatalogError(f"{label}: unknown key(s) {sorted(extra)}")
        for key in sorted(required):
            _require(item, key, label)
        if not isinstance(fid, str) or not fid.isidentifier() or fid != fid.lower():
            raise CatalogError(f"{label}: id must be a lower-case identifier")
        if fid in seen:
            raise CatalogError(f"{label}: duplicate id")
        seen.add(fid)
        if item["group"] not in GROUPS:
            raise CatalogError(f"{label}: group {item['group']!r} not in {GROUPS}")
        if item["modality"] not in MODALITIES:
            raise CatalogError(f"{label}: modality {item['modality']!r} not in {MODALITIES}")
        if not isinstance(item["version"], int) or item["version"] < 1:
            raise CatalogError(f"{label}: version must be a positive integer")
        aliases = item.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
            raise CatalogError(f"{label}: aliases must be a list of names")
        for name in [fid, *aliases]:
            if name in names:
                raise CatalogError(f"{label}: {name!r} already names another feature (ids and aliases are one set)")
            names.add(name)
        metric = item.get("metric", METRICS[0])
        if metric not in METRICS:
            raise CatalogError(f"{label}: metric {metric!r} not in {METRICS}")
        prompt = " ".join(str(item["prompt"]).split())
        if not prompt.endswith("?"):
            raise CatalogError(f"{label}: prompt must be a yes/no question ending in '?'")
        feats.append(
            Feature(
                id=fid,
                name=str(item["name"]),
                group=item["group"],
                modality=item["modality"],
                enhancement=group_enh[item["group"]],
                prompt=prompt,
                version=item["version"],
                aliases=tuple(aliases),
                metric=metric,
            )
        )
    for g, size in GROUP_SIZES.items():
        n = sum(f.group == g for f in feats)
        if n != size:
            raise CatalogError(f"{where}: group {g!r} has {n} features, expected {size}")
    version = _require(raw_features, "catalog_version", where)
    return Catalog(
        version=int(version),
        features=tuple(feats),
        group_names=group_names,
        templates=_parse_templates(raw_templates),
    )


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """Load and validate the packaged catalog (cached per process)."""
    try:
        raw_f = yaml.safe_load(FEATURES_YAML.read_text(encoding="utf-8"))
        raw_t = yaml.safe_load(TEMPLATES_YAML.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CatalogError(f"prompt YAML does not parse: {exc}") from exc
    return parse_catalog(raw_f, raw_t)


def render_prompt(feature: Feature, *, duration_s: float, fps: float, catalog: Catalog | None = None) -> str:
    """The exact user text for one feature (context, question, answer format).

    The system prompt is sent separately (``catalog.templates.system``).
    ``duration_s``/``fps`` describe the media the question is about.
    """
    tpl = (catalog or load_catalog()).templates
    context = tpl.context[feature.modality].format(duration_s=_num(duration_s), fps=_num(fps))
    return f"{context}\n\n{feature.prompt}\n\n{tpl.answer_format.format()}"


def prompt_version(feature: Feature, catalog: Catalog | None = None) -> str:
    """Version key of a feature's prompt: ``<id>@v<feature>.t<template>-<sha8>``.

    The short hash covers the question, system and template text, so a text
    edit changes the key even if someone forgets to bump a version.
    """
    cat = catalog or load_catalog()
    tpl = cat.templates
    text = "\x1f".join([feature.prompt, tpl.system, tpl.context[feature.modality], tpl.answer_format])
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{feature.id}@v{feature.version}.t{tpl.version}-{digest}"


def render_batched(features: tuple[Feature, ...], *, duration_s: float, fps: float,
                   catalog: Catalog | None = None) -> str:
    """The user text asking every feature of ``features`` at once (batched mode).

    All features must share one modality; the answer is one JSON object keyed by feature id.
    """
    tpl = (catalog or load_catalog()).templates
    modalities = {f.modality for f in features}
    if len(modalities) != 1:
        raise CatalogError(f"a batched prompt needs one modality, got {sorted(modalities)}")
    context = tpl.context[modalities.pop()].format(duration_s=_num(duration_s), fps=_num(fps))
    items = "\n".join(tpl.batched["item"].format(id=f.id, prompt=f.prompt) for f in features)
    return f"{context}\n\n{tpl.batched['intro']}\n{items}\n\n{tpl.batched['answer_format'].format()}"


def batched_version(features: tuple[Feature, ...], catalog: Catalog | None = None) -> str:
    """Version key of a batched prompt: the member features' keys + the batched template text."""
    cat = catalog or load_catalog()
    parts = [prompt_version(f, cat) for f in features] + list(cat.templates.batched.values())
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:8]
    return f"batch[{','.join(f.id for f in features)}].t{cat.templates.version}-{digest}"


def render_transcript(text: str, catalog: Catalog | None = None) -> str:
    """The transcript sentence that follows the audio in the audio + transcript arm."""
    return (catalog or load_catalog()).templates.transcript.format(transcript=text.strip())


def _num(x: float) -> str:
    return f"{x:g}"
