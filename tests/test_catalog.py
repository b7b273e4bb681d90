"""Feature catalog: structure, verbatim study prompts, and the prompt snapshot."""

import json

import pytest
import yaml

from tasks.catalog import FEATURES_YAML, TEMPLATES_YAML, load_catalog, parse_catalog, render_prompt
from tasks.errors import CatalogError
from tests.snapshot_prompts import SNAPSHOT, render_all

GIVEN_PROMPTS = {
    "oral_automatisms": "Does the patient exhibit repetitive, stereotyped mouth or tongue movements such as "
    "chewing, lip-smacking, or swallowing?",
    "figure4_arms": 'Does the patient\'s posture resemble a "figure-4" pattern, with one arm flexed and the '
    "other extended?",
    "pelvic_thrusting": "Does the patient display repetitive, rhythmic, anteroposterior (forward-and-backward) "
    "movements of the hips?",
    "ictal_vocalization": "Does the patient make any groaning, moaning, guttural sounds or do they utter "
    "stereotyped repetitive phrases?",
}

FACIAL = {"blank_stare", "closed_eyes", "eye_blinking", "face_pulling", "face_twitching", "oral_automatisms",
          "head_turning"}
LIMB = {"occur_during_sleep", "arm_flexion", "arms_move_simultaneously", "arm_straightening", "figure4_arms",
        "tonic", "clonic", "limb_automatisms", "asynchronous_movement", "pelvic_thrusting", "full_body_shaking"}
AUDIO = {"verbal_responsiveness", "ictal_vocalization"}


def test_catalog_has_the_20_study_features_in_three_groups():
    cat = load_catalog()
    assert len(cat.features) == 20
    assert {f.id for f in cat.in_group("facial")} == FACIAL
    assert {f.id for f in cat.in_group("limb_body")} == LIMB
    assert {f.id for f in cat.in_group("audio")} == AUDIO
    assert {f.enhancement for f in cat.in_group("facial")} == {"face_crop"}
    assert {f.enhancement for f in cat.in_group("limb_body")} == {"pose_overlay"}
    assert {f.enhancement for f in cat.in_group("audio")} == {"denoise_transcript"}
    assert {f.modality for f in cat.features if f.group != "audio"} == {"video"}
    assert {f.modality for f in cat.in_group("audio")} == {"audio"}


@pytest.mark.parametrize("fid", sorted(GIVEN_PROMPTS))
def test_given_prompts_are_verbatim(fid):
    assert load_catalog().by_id(fid).prompt == GIVEN_PROMPTS[fid]


def test_rendered_prompts_match_snapshot():
    """Fails on any prompt drift; a text change must come with a version bump."""
    current = {p["id"]: p for p in render_all()}
    snap = {p["id"]: p for p in json.loads(SNAPSHOT.read_text(encoding="utf-8"))}
    assert set(current) == set(snap), "features added/removed: regenerate with python -m tests.snapshot_prompts --write"
    for fid, cur in current.items():
        old = snap[fid]
        changed = cur["user"] != old["user"] or cur["system"] != old["system"]
        bumped = (cur["version"], cur["template_version"]) != (old["version"], old["template_version"])
        assert not (changed and not bumped), (
            f"prompt text of {fid!r} changed without a version bump: bump `version` in "
            "tasks/prompts/features.yaml (or templates.yaml), then regenerate the snapshot"
        )
        assert cur == old, f"prompt {fid!r} drifted from tests/snapshots/prompts.json: review, then regenerate"


def test_rendered_prompt_contains_context_question_and_answer_format():
    cat = load_catalog()
    f = cat.by_id("clonic")
    text = render_prompt(f, duration_s=30.0, fps=2.0)
    assert "30-second" in text and "2 frames per second" in text
    assert f.prompt in text
    assert '"present"' in text and '"justification"' in text
    assert "{" not in f.prompt


def _raw():
    return (yaml.safe_load(FEATURES_YAML.read_text()), yaml.safe_load(TEMPLATES_YAML.read_text()))


def test_duplicate_id_is_rejected():
    feats, tpl = _raw()
    feats["features"][1]["id"] = feats["features"][0]["id"]
    with pytest.raises(CatalogError, match="duplicate id"):
        parse_catalog(feats, tpl)


def test_wrong_group_size_is_rejected():
    feats, tpl = _raw()
    feats["features"] = [f for f in feats["features"] if f["id"] != "tonic"]
    with pytest.raises(CatalogError, match="limb_body.*10 features, expected 11"):
        parse_catalog(feats, tpl)


def test_unknown_key_in_feature_is_rejected():
    feats, tpl = _raw()
    feats["features"][3]["promt"] = "typo"
    with pytest.raises(CatalogError, match="promt"):
        parse_catalog(feats, tpl)
