"""train: tiny baselines recover features planted as visible shapes; held-out folds never reach training.

The fixture is a 2 fps cohort of 12 patients x 2 recordings (40 s, two
windows each) in three patient folds, with three planted features:

* clonic: a white square moving through the first 9 s only (window 0), so
  window 1 of a positive recording is labelled positive but shows nothing:
  only the max over windows recovers the recording;
* tonic: a red bar along the bottom for the whole recording;
* head_turning: a green square moving for the whole recording.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torchvision
from sklearn.metrics import f1_score

from tasks import train
from tasks.errors import ConfigError, ModelNotFoundError
from tasks.media import VideoWriter
from tasks.params import BaselineParams, Params, TrainParams, WindowParams
from tasks.schema import read_table, write_table
from tasks.video_models import R2Plus1DConfig, RandomInitWarning, VivitCfg, r2plus1d, vivit
from tasks.window import window_recording

FPS = 2.0  # the downsample stage's rate
W, H = 64, 48  # pixels of the fixture's 2 fps videos
DURATION_S = 40.0  # two 30 s windows: [0, 30) and [10, 40)
CLONIC_UNTIL_S = 9.0  # s; window 1 starts at 10 s, so only window 0 shows it
N_PATIENTS, PER_PATIENT = 12, 2
TINY = BaselineParams(size="tiny", frames=8, image_size=32, epochs=6, batch_size=8, lr=3e-3)
TINY_VIVIT = BaselineParams(size="tiny", frames=8, image_size=32, epochs=40, batch_size=8, lr=1e-3)


def _labels(p: int, r: int) -> dict[str, bool]:
    return {"clonic": bool((p + r) % 2), "tonic": bool((p // 2) % 2), "head_turning": bool((p // 2 + r) % 2)}


def _frame(k: int, lab: dict[str, bool], rng: np.random.Generator) -> np.ndarray:
    t = k / FPS
    img = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
    if lab["clonic"] and t < CLONIC_UNTIL_S:
        x = int(4 + 20 * (0.5 + 0.5 * math.sin(2 * math.pi * 0.3 * t)))
        img[8:22, x:x + 14] = 255
    if lab["tonic"]:
        img[40:46, 4:60] = (255, 0, 0)
    if lab["head_turning"]:
        x = int(30 + 16 * (0.5 + 0.5 * math.cos(2 * math.pi * 0.2 * t)))
        img[24:36, x:x + 12] = (0, 255, 0)
    return img


def build_cohort(data: Path) -> dict[str, dict[str, bool]]:
    """Write 03_downsample (videos, frames), 04_window and 11_folds for the planted cohort; returns the truth."""
    rng = np.random.default_rng(0)
    n = int(DURATION_S * FPS)
    truth, frames, windows, labels, fold_rows = {}, [], [], [], []
    for p in range(N_PATIENTS):
        for r in range(PER_PATIENT):
            rid = f"R{p:02d}{r:08x}"
            lab = truth[rid] = _labels(p, r)
            with VideoWriter(data / "03_downsample" / "videos" / f"{rid}.mp4", width=W, height=H, fps=FPS,
                             crf=18) as w:
                for k in range(n):
                    w.write(_frame(k, lab, rng))
            fr = pa.table({"recording_id": [rid] * n, "frame_index": list(range(n)),
                           "pts_s": [k / FPS for k in range(n)]})
            frames += fr.to_pylist()
            windows += window_recording(rid, fr, DURATION_S, WindowParams())
            pid = f"P{p:010x}"
            labels += [dict(recording_id=rid, patient_id=pid, feature_id=f, label=v) for f, v in lab.items()]
            fold_rows.append(dict(recording_id=rid, patient_id=pid, fold=p % 3))
    write_table("frames", frames, data / "03_downsample" / "frames.parquet")
    write_table("windows", windows, data / "04_window" / "windows.parquet")
    write_table("recording_labels", labels, data / "11_folds" / "labels.parquet")
    write_table("folds", fold_rows, data / "11_folds" / "folds.parquet")
    return truth


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    data = tmp_path_factory.mktemp("train") / "data"
    return data, build_cohort(data)


def _params(arm: str, features: tuple[str, ...], bp: BaselineParams, **kw) -> Params:
    return Params(train=TrainParams(arms=(arm,), features=features, r2plus1d=bp, vivit=bp, device="cpu", **kw))


def _run(data: Path, out: Path, params: Params) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        return train.run(data, out, params)


def _accuracy(preds: list[dict], truth: dict, feature: str) -> float:
    rows = [p for p in preds if p["feature_id"] == feature]
    return sum(p["predicted"] == truth[p["recording_id"]][feature] for p in rows) / len(rows)


@pytest.fixture(scope="module")
def r2plus1d_run(cohort):
    data, truth = cohort
    out = data.parent / "r2plus1d"
    summary = _run(data, out, _params("r2plus1d", ("clonic",), TINY))
    return out, summary


def test_r2plus1d_recovers_a_feature_seen_in_one_window_by_max(cohort, r2plus1d_run):
    data, truth = cohort
    out, summary = r2plus1d_run
    preds = read_table("predictions", out / "predictions.parquet").to_pylist()
    scores = read_table("window_scores", out / "window_scores.parquet").to_pylist()
    thresholds = {t["fold"]: t for t in read_table("thresholds", out / "thresholds.parquet").to_pylist()}
    folds = {r["recording_id"]: r["fold"] for r in read_table("folds", data / "11_folds" / "folds.parquet").to_pylist()}

    # every recording predicted once, by the model of its own held-out fold
    assert sorted(p["recording_id"] for p in preds) == sorted(truth)
    assert summary["jobs"] == 3 and summary["trained"] == 3 and summary["predictions"] == 24
    test_rows = [s for s in scores if s["split"] == "test"]
    assert all(s["fold"] == folds[s["recording_id"]] for s in test_rows)
    assert all(s["fold"] != folds[s["recording_id"]] for s in scores if s["split"] == "train")

    acc = _accuracy(preds, truth, "clonic")
    print(f"\n[train] tiny R(2+1)D clonic held-out accuracy {acc:.2f}; thresholds "
          f"{[round(thresholds[k]['threshold'], 3) for k in range(3)]}")
    assert acc >= 0.9
    by_rec = {}
    for s in test_rows:
        by_rec.setdefault(s["recording_id"], {})[s["window_index"]] = s["score"]
    for p in preds:
        ws = by_rec[p["recording_id"]]
        t = thresholds[folds[p["recording_id"]]]["threshold"]
        assert p["score"] == max(ws.values())  # recording score = max over windows
        assert p["predicted"] == (p["score"] >= t) and p["rule"] == "f1max_threshold"
        assert p["n_windows"] == 2 and p["evidence_windows"] == [w for w in sorted(ws) if ws[w] >= t]
    # the planted window carries the evidence: window 0 outscores window 1 in positive recordings
    pos = [r for r in by_rec if truth[r]["clonic"]]
    assert sum(by_rec[r][0] > by_rec[r][1] for r in pos) >= 0.8 * len(pos)
    meta = json.loads((out / "runs" / "r2plus1d" / "fold0" / "clonic.json").read_text())
    assert meta["loss"][-1] < meta["loss"][0] and meta["train_recordings"] == 16
    assert (out / "models" / "r2plus1d" / "fold0" / "clonic.pt").is_file()
    assert not (out / "clips").exists()  # the decoded clip cache is removed unless keep_clips


def test_a_rerun_reuses_finished_jobs(cohort, r2plus1d_run):
    data, _ = cohort
    out, first = r2plus1d_run
    before = read_table("predictions", out / "predictions.parquet")
    again = _run(data, out, _params("r2plus1d", ("clonic",), TINY))
    assert again["reused"] == 3 and again["jobs"] == 3
    assert read_table("predictions", out / "predictions.parquet").equals(before)


def _window1_of_positives(out: Path, truth: dict) -> float:
    """Mean held-out score of window 1 (which shows nothing) in clonic-positive recordings."""
    rows = read_table("window_scores", out / "window_scores.parquet").to_pylist()
    return float(np.mean([r["score"] for r in rows if r["split"] == "test" and r["window_index"] == 1
                          and truth[r["recording_id"]]["clonic"]]))


def test_bag_max_learns_which_window_shows_the_feature_where_window_labels_cannot(cohort, r2plus1d_run, tmp_path):
    """bag_max (default): window 1 of a positive recording is free to score low; ``window`` labels it positive."""
    data, truth = cohort
    out, _ = r2plus1d_run
    summary = _run(data, tmp_path / "w", _params("r2plus1d", ("clonic",), TINY, objective="window",
                                                save_checkpoints=False))
    assert summary["trained"] == 3
    bag = json.loads((out / "runs" / "r2plus1d" / "fold0" / "clonic.json").read_text())
    win = json.loads((tmp_path / "w" / "runs" / "r2plus1d" / "fold0" / "clonic.json").read_text())
    assert (bag["objective"], bag["train_bags"], bag["train_windows"]) == ("bag_max", 16, 32)
    assert (win["objective"], win["train_bags"], win["train_windows"]) == ("window", 32, 32)
    assert bag["positive_bags"]["clonic"] == sum(truth[r]["clonic"] for r in truth if r[1:3] not in
                                                 {f"{p:02d}" for p in range(0, N_PATIENTS, 3)})
    s_bag, s_win = _window1_of_positives(out, truth), _window1_of_positives(tmp_path / "w", truth)
    print(f"\n[train] window 1 of clonic-positive recordings (shows nothing): mean score bag_max {s_bag:.2f}, "
          f"window labels {s_win:.2f}")
    assert s_bag + 0.05 < s_win  # measured 0.23 vs 0.37


def test_a_step_takes_whole_bags_of_about_batch_size_windows():
    bags = [np.arange(k) for k in (3, 1, 4, 2, 5, 1)]
    steps = train._steps(bags, np.arange(6), batch_size=4)
    assert steps == [[0, 1], [2], [3], [4], [5]]  # a 5-window bag is never split; no step is empty
    assert sorted(b for s in steps for b in s) == list(range(6))


def test_held_out_labels_and_clips_never_reach_training(cohort, tmp_path):
    """By construction: flip every label of fold 0 and blank its videos; fold 0's model, scores and threshold stay."""
    data, _ = cohort
    params = _params("r2plus1d", ("clonic",), TINY)
    features = ("clonic",)
    results = []
    for variant in ("as is", "fold 0 tampered"):
        cohort_, win_rows, frame_index, _ = train.load_cohort(data, features)
        clips, digests = {}, {}
        for rid in cohort_.rids:
            clips[rid], digests[rid] = train.recording_clips(data, tmp_path / variant, rid, frame_index[rid],
                                                             win_rows[rid], frames=8, size=32)
        if variant != "as is":
            for rid in cohort_.rids:
                if cohort_.fold[rid] == 0:
                    cohort_.labels[rid]["clonic"] = not cohort_.labels[rid]["clonic"]
                    clips[rid] = np.zeros_like(clips[rid])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomInitWarning)
            res = train.run_job("r2plus1d", 0, features, cohort_, clips, digests, params=params,
                                out_dir=tmp_path / variant, device=torch.device("cpu"))
        results.append(res)
    a, b = results
    assert a["thresholds"] == b["thresholds"]
    train_scores = lambda r: {(w["recording_id"], w["window_index"]): w["score"]  # noqa: E731
                              for w in r["windows"] if w["split"] == "train"}
    assert train_scores(a) == train_scores(b)
    # the tampered clips only change fold 0's own (test) scores, never what was learnt
    assert any(x["score"] != y["score"] for x, y in zip(a["predictions"], b["predictions"]))


def test_vivit_learns_a_planted_moving_square(cohort, tmp_path):
    data, truth = cohort
    summary = _run(data, tmp_path / "out", _params("vivit", ("head_turning",), TINY_VIVIT, save_checkpoints=False))
    preds = read_table("predictions", tmp_path / "out" / "predictions.parquet").to_pylist()
    acc = _accuracy(preds, truth, "head_turning")
    print(f"\n[train] tiny ViViT head_turning held-out accuracy {acc:.2f}")
    assert summary["predictions"] == 24 and {p["arm"] for p in preds} == {"vivit"}
    assert all(p["model_id"].startswith("vivit_b16x2-tiny-scratch") for p in preds)
    assert acc >= 0.8


def test_multilabel_mode_trains_one_model_for_all_features(cohort, tmp_path):
    data, truth = cohort
    summary = _run(data, tmp_path / "out", _params("r2plus1d", ("tonic", "clonic"), TINY, mode="multilabel",
                                                   save_checkpoints=False))
    assert summary["jobs"] == 3  # one model per fold, not per feature
    preds = read_table("predictions", tmp_path / "out" / "predictions.parquet").to_pylist()
    accs = {f: _accuracy(preds, truth, f) for f in ("tonic", "clonic")}
    print(f"\n[train] tiny R(2+1)D multilabel held-out accuracy {accs}")
    assert all(p["model_id"].endswith("-multilabel") for p in preds)
    assert sorted((p["recording_id"], p["feature_id"]) for p in preds) == \
        sorted((r, f) for r in truth for f in ("tonic", "clonic"))
    assert min(accs.values()) >= 0.8
    assert len(list((tmp_path / "out" / "runs" / "r2plus1d").glob("fold*/multilabel.json"))) == 3


# ---- thresholds ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_f1_threshold_is_the_best_cut_by_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 30))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    scores = np.round(rng.random(n), 1)  # ties on purpose
    t, f1 = train.f1_threshold(scores, labels)
    best = max(f1_score(labels, scores >= c, zero_division=0) for c in np.r_[np.unique(scores), np.inf])
    assert f1 == pytest.approx(best)
    assert f1 == pytest.approx(f1_score(labels, scores >= t, zero_division=0))
    assert not np.any(np.isclose(scores, t))  # a midpoint, never on a training score


def test_f1_threshold_without_positives_says_no():
    t, f1 = train.f1_threshold(np.array([0.2, 0.9]), np.array([False, False]))
    assert t > 0.9 and f1 == 0.0


# ---- models ---------------------------------------------------------------------------------


def test_full_r2plus1d_is_torchvisions_and_loads_its_state_dict(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.video.r2plus1d_18(weights=None)  # architecture only: nothing downloads
    path = tmp_path / "r2plus1d_18.pt"
    torch.save(tv.state_dict(), path)
    model = r2plus1d(R2Plus1DConfig.preset("full", n_outputs=3, pretrained=str(path)))
    assert model.model_id == "r2plus1d_18-full-pretrained"
    tv.fc = torch.nn.Linear(512, 3)
    tv.fc.load_state_dict(model.net.fc.state_dict())
    tv.eval(), model.eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.net(x), tv(x), atol=1e-5)


def test_missing_weights_say_how_to_supply_them_and_random_init_warns(tmp_path):
    with pytest.raises(ModelNotFoundError, match="torch.save"):
        r2plus1d(R2Plus1DConfig.preset("tiny", pretrained=str(tmp_path / "nope.pt")))
    with pytest.raises(ModelNotFoundError, match="save_pretrained"):
        vivit(VivitCfg.preset("tiny", pretrained=str(tmp_path / "nope")))
    with pytest.warns(RandomInitWarning, match="random initialisation"):
        r2plus1d(R2Plus1DConfig.preset("tiny"))
    with pytest.warns(RandomInitWarning, match="random initialisation"):
        vivit(VivitCfg.preset("tiny"))


def test_vivit_loads_a_local_hf_folder_and_its_clip_shape_is_enforced(tmp_path):
    with pytest.warns(RandomInitWarning):
        donor = vivit(VivitCfg.preset("tiny", n_outputs=400))  # a "Kinetics" head to be replaced
    donor.net.save_pretrained(tmp_path / "vivit")
    model = vivit(VivitCfg.preset("tiny", n_outputs=2, pretrained=str(tmp_path / "vivit")))
    body = {k: v for k, v in donor.net.state_dict().items() if not k.startswith("classifier")}
    for k, v in body.items():
        assert torch.equal(model.net.state_dict()[k], v), k
    assert model(torch.zeros(1, 8, 32, 32, 3, dtype=torch.uint8)).shape == (1, 2)
    with pytest.raises(ConfigError, match="expects 8 frames"):
        vivit(VivitCfg.preset("tiny", frames=16, pretrained=str(tmp_path / "vivit")))


# ---- default (full-size) configs --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_default_configs_train_end_to_end(tmp_path):
    """R(2+1)D-18 and ViViT-B at their default sizes and clip shapes, one epoch, 4 one-window recordings.

    ViViT-B on 32 x 224 x 224 clips costs ~15 s per clip on 2 CPU cores, hence two folds of two.
    """
    data = tmp_path / "data"
    truth = build_cohort(data)
    fold_of = {f"R{p:02d}{0:08x}": k for p, k in ((0, 0), (2, 0), (4, 1), (6, 1))}  # tonic: -, +, -, + per fold
    labels = [r for r in read_table("recording_labels", data / "11_folds/labels.parquet").to_pylist()
              if r["recording_id"] in fold_of]
    write_table("recording_labels", labels, data / "11_folds/labels.parquet")
    write_table("folds", [dict(recording_id=r, patient_id=f"P{r[1:3]}", fold=k) for r, k in fold_of.items()],
                data / "11_folds/folds.parquet")
    windows = [w for w in read_table("windows", data / "04_window/windows.parquet").to_pylist()
               if w["recording_id"] in fold_of and w["window_index"] == 0]
    write_table("windows", windows, data / "04_window/windows.parquet")
    defaults = TrainParams()
    params = Params(train=dataclasses.replace(
        defaults, features=("tonic",), save_checkpoints=False,
        r2plus1d=dataclasses.replace(defaults.r2plus1d, epochs=1),
        vivit=dataclasses.replace(defaults.vivit, epochs=1)))
    assert (params.train.r2plus1d.size, params.train.vivit.size) == ("full", "full")
    with pytest.warns(RandomInitWarning):
        summary = train.run(data, tmp_path / "out", params)
    preds = read_table("predictions", tmp_path / "out" / "predictions.parquet").to_pylist()
    assert summary["trained"] == summary["jobs"] == 4
    assert sorted((p["arm"], p["recording_id"]) for p in preds) == sorted((a, r) for a in ("r2plus1d", "vivit")
                                                                          for r in fold_of)
    assert {p["model_id"] for p in preds} == {"r2plus1d_18-full-scratch-per_feature",
                                              "vivit_b16x2-full-scratch-per_feature"}
    assert all(p["n_windows"] == 1 for p in preds) and all(truth[r]["tonic"] == (r[1:3] in ("02", "06"))
                                                           for r in fold_of)
