"""gait: subject-disjoint split, biomechanical tokens, BioGait-VLM + ablations + baselines, rationales, results.

The fast tests run the whole stage (split -> features -> train -> evaluate ->
table) on the small gait phantom of tests/gait_fixture.py with a tiny
random-weight InternVL built into a folder like a real checkpoint.  The slow
test renders a larger phantom and checks that biomechanics carry the planted
classes: the full model or its biomechanics branch beats chance and the
vision-only ablation.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from unittest import mock

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tasks import biogait, gait
from tasks.answers import RANDOM_TAG
from tasks.errors import ModelNotFoundError, SemioflowError
from tasks.local_models import TINY_MARKER
from tasks.tiny_models import build_tiny
from tasks.params import BaselineParams, GaitParams, GaitSynthParams
from tasks.schema import read_table
from tasks.synth.gait import GAIT_CLASSES, generate_cohort
from tests.gait_fixture import ID_KEY_ENV, KEY, gait_data, params_for, run_gait_stages

CHANCE = 1 / len(GAIT_CLASSES)
TINY = dict(device="cpu", frames=8, queries=4, decoder_layers=1, heads=4, epochs=10, batch_size=2,
            rationale_tokens=32, baseline=BaselineParams(size="tiny", frames=8, image_size=32, epochs=2, batch_size=4,
                                                         lr=1e-3))
MODELS = ("biogait", "biogait_no_ted", "biogait_no_bio", "biogait_no_ted_no_bio", "kinematics_logreg",
          "video_r2plus1d", "zero_shot")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny models' ops are far too small to share out: on 2 busy cores torch's second thread made
    BioGait training 200x slower (43 s vs 0.2 s for the fast test's 4 models)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return gait_data(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return build_tiny("internvl", tmp_path_factory.mktemp("models") / "internvl", seed=0)


@pytest.fixture(scope="module")
def run(data, tiny_vlm) -> dict:
    """The stage once, with the training calls recorded (what each model was fitted on)."""
    seen: dict[str, list[int]] = {"biogait": [], "logreg": [], "video": []}
    real_train, real_logreg, real_video = biogait.train, gait.fit_kinematics_logreg, gait.train_video_baseline

    def train(cfg, v, f, y, **kw):
        seen["biogait"].append(len(y))
        return real_train(cfg, v, f, y, **kw)

    def logreg(x, y):
        seen["logreg"].append(len(y))
        return real_logreg(x, y)

    def video(arm, gp, clips, y, *a, **kw):
        seen["video"].append(len(y))
        return real_video(arm, gp, clips, y, *a, **kw)

    params = params_for(data.cohort, gait=GaitParams(vlm=str(tiny_vlm), **TINY))
    out = data.data_dir / "15_gait"
    with mock.patch.object(gait.biogait, "train", train), mock.patch.object(gait, "fit_kinematics_logreg", logreg), \
            mock.patch.object(gait, "train_video_baseline", video), pytest.warns(UserWarning, match="random"), \
            data.id_key_env():
        summary = gait.run(data.data_dir, out, params)
    print(json.dumps(summary, indent=1))
    print((out / "results.md").read_text())
    return {"summary": summary, "out": out, "seen": seen, "params": params}


def _labels(data) -> list[dict]:
    return read_table("gait_labels", data.data_dir / "15_gait" / "labels.parquet").to_pylist()


def test_labels_meet_the_clips_as_pseudonyms(data, run):
    """gait.labels (keyed by file name, real subject ids) -> one row per processed clip: recording id, subject
    pseudonym, the planted class; the same subjects group the same clips."""
    labels = _labels(data)
    planted = read_table("gait_clips", data.cohort / "gait_clips.parquet").to_pylist()
    assert len(labels) == len(planted) == run["summary"]["clips"] and run["summary"]["unlabelled"] == 0
    assert all(r["recording_id"].startswith("R") and r["subject_id"].startswith("P") for r in labels)
    assert {r["gait_class"] for r in labels} == set(GAIT_CLASSES)
    assert len({r["subject_id"] for r in labels}) == len({r["subject_id"] for r in planted})
    assert not {r["subject_id"] for r in labels} & {str(r["subject_id"]) for r in planted}
    with data.id_key_env():
        rows = gait.pseudonymous_labels(data.data_dir, data.cohort / "gait_clips.parquet",
                                        [r["recording_id"] for r in labels][:3])
    assert rows == labels[:3]  # only the clips asked for


def test_missing_or_bad_label_table_is_a_clear_error(data, tmp_path):
    bad = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"source_name": ["x.mp4"], "gait_class": ["normal"]}), bad)
    rid = [r["recording_id"] for r in data.results["kinematics"]][:1]
    with data.id_key_env():
        with pytest.raises(SemioflowError, match="gait.labels"):
            gait.pseudonymous_labels(data.data_dir, tmp_path / "nope.parquet", rid)
        with pytest.raises(SemioflowError, match="subject_id"):
            gait.pseudonymous_labels(data.data_dir, bad, rid)


def test_no_gait_clips_is_a_recorded_skip(tmp_path):
    """A site without a gait study: kinematics processed nothing, so the stage says so (skipped.json)."""
    from tasks.schema import write_table

    write_table("gait_kinematics", [], tmp_path / "14_kinematics" / "kinematics.parquet")
    out = tmp_path / "15_gait"
    summary = gait.run(tmp_path, out, params_for(tmp_path / "cohort"))
    assert "no gait clips" in summary["skipped"] and (out / "skipped.json").is_file()


# ---- split / leakage ---------------------------------------------------------------------------


def _cohort_labels(n_classes: int, subjects: int, clips: int) -> list[dict]:
    return [dict(recording_id=f"R{c}{s}{k}", subject_id=f"P{c}-{s}", gait_class=f"class{c}")
            for c in range(n_classes) for s in range(subjects) for k in range(clips)]


@pytest.mark.parametrize("subjects, clips", [(2, 1), (5, 2), (3, 3)])
def test_split_is_subject_disjoint_8_2_stratified_and_seeded(subjects, clips):
    labels = _cohort_labels(8, subjects, clips)
    n_subjects = 8 * subjects
    seen = set()
    for seed in range(20):
        split = gait.subject_split(labels, 0.8, seed=seed)
        sides: dict[str, set[str]] = {}
        for r in labels:
            sides.setdefault(r["subject_id"], set()).add(split[r["recording_id"]])
        assert all(len(s) == 1 for s in sides.values()), "a subject on both sides of the split"
        test_subjects = {s for s, v in sides.items() if v == {"test"}}
        assert len(test_subjects) == round(0.2 * n_subjects)
        per_class = {c: sum(1 for s in test_subjects if s.startswith(f"P{c}-")) for c in range(8)}
        assert max(per_class.values()) - min(per_class.values()) <= 1  # stratified by class
        assert all(sum(1 for s in sides if s.startswith(f"P{c}-") and s not in test_subjects) for c in range(8))
        assert split == gait.subject_split(labels, 0.8, seed=seed)  # seeded
        seen.add(frozenset(test_subjects))
    assert len(seen) > 1  # the seed matters


def test_no_test_clip_reaches_any_training(data, run):
    split = read_table("gait_split", run["out"] / "split.parquet").to_pylist()
    train_ids = sorted(r["recording_id"] for r in split if r["split"] == "train")
    test_ids = {r["recording_id"] for r in split if r["split"] == "test"}
    subj = {s: {r["split"] for r in split if r["subject_id"] == s} for s in {r["subject_id"] for r in split}}
    assert all(len(v) == 1 for v in subj.values())
    assert {r["recording_id"] for r in _labels(data)} == set(train_ids) | test_ids and test_ids
    # every fitted model saw exactly the training clips
    seen = run["seen"]
    assert seen["biogait"] == [len(train_ids)] * 4 and seen["logreg"] == [len(train_ids)]
    assert seen["video"] == [len(train_ids)]
    # the standardisation of the saved model comes from the training clips' features only
    feats = {rid: torch.load(run["out"] / "features" / f"{rid}.pt", weights_only=False) for rid in train_ids}
    state = torch.load(run["out"] / "models" / "biogait.pt", weights_only=False)["state_dict"]
    f_train = torch.stack([feats[r]["f_bio"] for r in train_ids])
    assert torch.allclose(state["f_mean"], f_train.mean(0), atol=1e-5)
    v_train = torch.cat([feats[r]["v"] for r in train_ids])
    assert torch.allclose(state["v_mean"], v_train.mean(0), atol=1e-5)
    preds = read_table("gait_predictions", run["out"] / "predictions.parquet").to_pylist()
    assert {p["recording_id"] for p in preds} == test_ids  # evaluated on held-out clips only


# ---- the pipeline -----------------------------------------------------------------------------------


def test_pipeline_writes_the_results_table_of_every_model(data, run):
    s = run["summary"]
    assert s["clips"] == 16 and s["train"] + s["test"] == 16 and s["test_subjects"] == round(0.2 * 16)
    assert s["random_weight_vlm"] is True and s["models"] == len(MODELS)
    preds = pl.from_arrow(read_table("gait_predictions", run["out"] / "predictions.parquet"))
    truth = {r["recording_id"]: r["gait_class"] for r in _labels(data)}
    for m in MODELS:
        rows = preds.filter(pl.col("model") == m)
        assert rows.height == s["test"], m
        assert all(truth[r] == c for r, c in zip(rows["recording_id"], rows["gait_class"]))
        assert set(rows["predicted"]) <= set(GAIT_CLASSES) and rows["score"].is_between(0, 1).all()
    res = pl.from_arrow(read_table("gait_results", run["out"] / "results.parquet"))
    for m in MODELS:
        r = res.filter(pl.col("model") == m)
        acc = r.filter(pl.col("metric") == "accuracy")["value"][0]
        got = preds.filter(pl.col("model") == m)
        assert acc == pytest.approx(float((got["gait_class"] == got["predicted"]).mean()))
        per = r.filter(pl.col("metric") == "f1")
        assert set(per["gait_class"]) == set(got["gait_class"])  # per-class F1 of the classes in the test split
        assert r.filter(pl.col("metric") == "macro_f1")["value"][0] == pytest.approx(per["value"].mean())
    table = (run["out"] / "results.md").read_text()
    assert table.startswith("| model | accuracy | macro F1 |") and all(f"| {m} |" in table for m in MODELS)


def test_every_rationale_number_is_checked_against_the_metrics(data, run):
    rats = read_table("gait_rationales", run["out"] / "rationales.parquet").to_pylist()
    assert len(rats) == 3 * run["summary"]["test"]
    assert {r["model"] for r in rats} == set(gait.RATIONALE_MODELS)
    preds = read_table("gait_predictions", run["out"] / "predictions.parquet").to_pylist()
    predicted = {(p["model"], p["recording_id"]): p["predicted"] for p in preds}
    assert all(r["predicted"] == predicted[(r["model"], r["recording_id"])] for r in rats)
    clips = {c.recording_id: c for c in gait.load_clips(data.data_dir / "14_kinematics", _labels(data), run["params"].gait)}
    for c in clips.values():  # the values the prompt lists, as written there, all pass the check
        metrics = gait.rationale_metrics(c)
        prompt = gait.rationale_prompt(c, c.gait_class, gait.load_prompts())
        assert all(f": {v} {u}" in prompt for v, u in metrics.values())
        assert gait.verify_numbers(" ".join(v for v, _ in metrics.values()), metrics)[1] == []
    for r in rats:
        numbers, unmatched = gait.verify_numbers(r["text"], gait.rationale_metrics(clips[r["recording_id"]]))
        assert r["numbers"] == numbers and r["unmatched"] == unmatched
        assert r["verified"] == (bool(r["text"].strip()) and not unmatched)  # an empty rationale is never verified
        assert r["model_id"].startswith("internvl:") and r["model_id"].endswith(RANDOM_TAG)  # the tiny VLM
    assert run["summary"]["rationales_verified"] == sum(r["verified"] for r in rats)
    assert run["summary"]["rationales_empty"] == sum(not r["text"].strip() for r in rats)
    # the same texts as blinded Study 2 cases of the review app, media = the de-identified clip; the variant
    # names carry the smoke model's tag (the app's banner follows from them)
    cases = read_table("rationales", run["out"] / "review_rationales.parquet").to_pylist()
    assert sorted((c["case_id"], c["variant"], c["rationale"]) for c in cases) == \
        sorted((r["recording_id"], r["model"] + RANDOM_TAG, r["text"]) for r in rats)
    assert all((data.data_dir / c["media"]).is_file() and c["media"].startswith("14_kinematics/videos/")
               for c in cases)


def test_frame_lines_carry_the_measured_angles(data, run):
    clip = gait.load_clips(data.data_dir / "14_kinematics", _labels(data), run["params"].gait)[0]
    prompts = gait.load_prompts()
    summary, lines = gait._clip_texts(clip, prompts)
    assert len(lines) == run["params"].gait.frames
    pattern = re.compile(r"^Frame (\d+) \(([\d.]+) s\): \[Pelvis\] tilt=(\S+)° list=(\S+)° "
                         r".* \[R\.Knee\] flex=(\S+)° .*\[R\.Elbow\] flex=(\S+)°$")
    for n, (line, k) in enumerate(zip(lines, clip.positions), 1):
        m = pattern.match(line)
        assert m, line
        assert int(m.group(1)) == n
        a = clip.angles.get(k)
        want = "n/a" if a is None or a["right_knee_flex_deg"] is None else str(int(round(a["right_knee_flex_deg"])))
        assert m.group(5) == want
    assert f"cadence={clip.kin['cadence_spm']:.1f} steps/min" in summary
    feats = torch.load(run["out"] / "features" / f"{clip.recording_id}.pt", weights_only=False)
    assert feats["bio"]["n_tokens"] <= run["params"].gait.token_budget
    assert summary in feats["bio"]["text"] and prompts.instruction_text() in feats["bio"]["text"]


def test_biomechanics_text_fits_the_budget_by_thinning_frames_evenly():
    prompts = gait.load_prompts()
    lines = [f"Frame {n} line" for n in range(1, 33)]
    words = lambda t: len(t.split())  # noqa: E731 - a stand-in tokenizer: one token per word
    base = words(gait.biomechanics_text("ins", "sum", [], prompts, count_tokens=words, budget=10**6).text)
    out = gait.biomechanics_text("ins", "sum", lines, prompts, count_tokens=words, budget=base + 3 * 8)
    assert out.n_tokens <= base + 24 and out.frames_kept == 8
    kept = [int(x) for x in re.findall(r"Frame (\d+) line", out.text)]
    assert kept == [1, 5, 9, 13, 17, 21, 25, 29]  # evenly over the clip, not the first 8
    full = gait.biomechanics_text("ins", "sum", lines, prompts, count_tokens=words, budget=10**6)
    assert full.frames_kept == 32
    tight = gait.biomechanics_text("ins", "sum", lines, prompts, count_tokens=words, budget=1)
    assert tight.frames_kept == 0 and "ins" in tight.text and "sum" in tight.text


def test_whitespace_rationales_are_never_verified():
    """All nine rationales of a smoke run were 32 newlines each and counted verified: a blank one states no
    wrong number, but it is no rationale."""
    metrics = {"cadence": ("112.3", "steps/min")}
    for blank in ("\n" * 32, "", " \t \n"):
        assert gait.verify_numbers(blank, metrics) == ([], [])
        assert not gait.rationale_verified(blank, [])
    assert gait.rationale_verified("Cadence 112.3 steps/min.", [])
    assert not gait.rationale_verified("Cadence 140 steps/min.", ["140"])


def test_number_check():
    metrics = {"cadence_spm": ("112.3", "steps/min"), "double_support_pct": ("21.0", "%"),
               "median trunk_flex_deg": ("-6.4", "°")}
    ok = "Cadence was 112.3 steps/min (about 112), double support 21 % and the trunk at -6.4°, i.e. \u22126.4°."
    numbers, unmatched = gait.verify_numbers(ok, metrics)
    assert numbers == ["112.3", "112", "21", "-6.4", "\u22126.4"] and unmatched == []
    numbers, unmatched = gait.verify_numbers("Cadence 112.4 steps/min, 110 in the first half, 6.4° trunk, "
                                             "knee 38°.", metrics)
    assert unmatched == ["112.4", "110", "6.4", "38"]
    assert gait.verify_numbers("L5 and R2 are labels, not numbers.", metrics) == ([], [])


# ---- the model --------------------------------------------------------------------------------------


def test_class_weights_and_what_trains():
    y = np.array([0, 0, 0, 1, 2, 2])
    w = biogait.class_weights(y, 4)
    assert torch.allclose(w, torch.tensor([6 / (4 * 3), 6 / 4, 6 / (4 * 2), 0.0]))
    for use_ted in (True, False):
        cfg = biogait.BioGaitConfig(d_model=16, n_classes=8, n_frames=6, n_queries=3, n_layers=2, n_heads=4,
                                    use_ted=use_ted)
        model = biogait.BioGait(cfg)
        assert model(torch.randn(5, 6, 16), torch.randn(5, 16)).shape == (5, 8)
        trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == ({"ted", "head"} if use_ted else {"head"})
        assert model.head.in_features == (32 if use_ted else 16)


def test_the_frozen_vlm_reads_the_biomechanics(tiny_vlm):
    """Text first, then V: the pooled visual states depend on the biomechanical text."""
    assert (tiny_vlm / TINY_MARKER).is_file() and (tiny_vlm / "config.json").is_file()
    enc = gait.load_vlm(tiny_vlm, device="cpu")
    assert enc.local.random_weights and all(not p.requires_grad for p in enc.model.parameters())
    frames = np.random.default_rng(0).integers(0, 255, (6, 60, 80, 3), dtype=np.uint8)
    v = enc.frame_features(frames)
    assert v.shape == (6, enc.d_model)
    a, b = enc.fuse(v, "[R.Knee] flex=5°"), enc.fuse(v, "[R.Knee] flex=45°")
    assert a.shape == (enc.d_model,) and not torch.allclose(a, b)
    assert torch.allclose(a, enc.fuse(v, "[R.Knee] flex=5°"))  # deterministic


def test_zero_shot_scores_equal_one_full_pass_per_answer(tiny_vlm):
    """The cached-prompt scoring gives each answer the log-likelihood a full forward pass gives it."""
    from tasks.local_models import load_local

    local = load_local(tiny_vlm, device="cpu")
    frames = np.random.default_rng(1).integers(0, 255, (4, 60, 80, 3), dtype=np.uint8)
    prompts = gait.load_prompts()
    answers = [" " + prompts.classes[c]["name"] for c in ("normal", "parkinsons", "cerebral_palsy")]
    got = gait.zero_shot_scores(local, frames, 2.0, "Which class?", answers, answer_prefix=prompts.answer_prefix)
    for answer, score in zip(answers, got):
        batch = local.inputs("", gait._media(frames, 2.0), "Which class?", answer_prefix=prompts.answer_prefix + answer)
        n = len(local.processor.tokenizer.encode(answer, add_special_tokens=False))
        ids = batch["input_ids"][0]
        with torch.no_grad():
            logp = torch.log_softmax(local.model(**batch).logits[0, -n - 1:-1].float(), dim=-1)
        assert score == pytest.approx(float(sum(logp[i, ids[len(ids) - n + i]] for i in range(n))), abs=1e-4)
    assert len(set(np.round(got, 6))) == len(answers)


def test_missing_vlm_folder_is_a_clear_error(data, tmp_path):
    params = params_for(data.cohort, gait=GaitParams(vlm=str(tmp_path / "nope"), **TINY))
    with pytest.raises(ModelNotFoundError, match="build_tiny"), data.id_key_env():
        gait.run(data.data_dir, tmp_path / "15_gait", params)


# ---- slow: the planted classes on a larger phantom -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_biomechanics_beat_chance_and_vision_only_on_a_larger_phantom(tmp_path, tiny_vlm):
    """80 clips (8 classes x 5 subjects x 2), 8:2 by subject: the biomechanics carry the planted classes.

    With the random-weight smoke InternVL the frozen LLM cannot read numbers, so the LLM-fused variants
    sit near chance; the biomechanics branch on its own (``kinematics_logreg``: the values the tokens
    carry) must beat chance clearly and the vision-only ablation.  With a real checkpoint in
    ``gait.vlm`` the same assertion covers the full model.
    """
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, GaitSynthParams(subjects_per_class=5, clips_per_subject=2, width=320, height=240,
                                            fps=25.0, duration_s=4.0), seed=5, workers=2)
    key = tmp_path / "id_key"
    key.write_bytes(KEY)
    params = params_for(cohort, gait=GaitParams(vlm=str(tiny_vlm), **{**TINY, "epochs": 40, "zero_shot": False,
                                                                       "rationales": False, "baseline_arm": "none"}))
    data = tmp_path / "data"
    run_gait_stages(data, params, key)
    with mock.patch.dict(os.environ, {ID_KEY_ENV: str(key)}):
        s = gait.run(data, data / "15_gait", params)
    acc = s["accuracy"]
    print(json.dumps(s, indent=1))
    print((data / "15_gait" / "results.md").read_text())
    best_bio = max(acc["biogait"], acc["biogait_no_ted"], acc["kinematics_logreg"])
    assert best_bio > 2 * CHANCE
    assert best_bio > acc["biogait_no_bio"] + CHANCE


def test_new_seizure_recordings_do_not_retrain_gait_but_new_labels_do(data, tmp_path):
    """The gait stage's key covers its clips and gait.labels, not the id map that grows with every recording."""
    import dataclasses
    import shutil

    from tasks import registry
    from tasks.cache import cohort_job
    from tasks.identity import ID_MAP, write_private

    copy = tmp_path / "data"
    shutil.copytree(data.data_dir / "01_ingest", copy / "01_ingest")
    shutil.copytree(data.data_dir / "14_kinematics", copy / "14_kinematics")
    stage, params = registry.stage("gait"), data.params
    before = cohort_job(stage, copy, params).cache_key
    id_map = copy / "01_ingest" / ID_MAP
    rows = read_table("id_map", id_map).to_pylist()
    write_private("id_map", rows + [{**rows[0], "recording_id": "R0000000000", "source_path": "/inbox/new.mp4",
                                     "content_sha256": "0" * 64}], id_map)
    assert cohort_job(stage, copy, params).cache_key == before
    table = pq.read_table(data.cohort / "gait_clips.parquet")
    classes = table.column("gait_class").to_pylist()
    classes[0] = "dcm" if classes[0] != "dcm" else "normal"  # one clip relabelled
    relabelled = tmp_path / "labels.parquet"
    pq.write_table(table.set_column(table.column_names.index("gait_class"), "gait_class", pa.array(classes)),
                   relabelled)
    changed = dataclasses.replace(params, gait=dataclasses.replace(params.gait, labels=str(relabelled)))
    assert cohort_job(stage, copy, changed).cache_key != before
