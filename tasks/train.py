"""train: per-fold video baselines (R(2+1)D, ViViT) on the 2 fps windows, thresholds from the training folds.

For every arm (``train.arms``), every fold k and every video feature (the
study's protocol; ``train.mode: multilabel`` trains one model for all
features instead), a model is fine-tuned on the windows of the recordings
outside fold k.  Labels are per recording, and a planted or real event
fills only some of its windows, so by default (``train.objective:
bag_max``) a recording's windows form one bag whose score is the max of
their logits (multiple-instance learning: the rule that later decides);
``window`` makes every window inherit its recording's label instead.  The
model then scores every window; a recording's score is the max over its
windows (the any-yes rule of the MLLM arms); the threshold that maximises F1 over
the *training* recordings' scores is applied to fold k's recordings.  The
held-out fold never reaches ``fit`` or ``f1_threshold``: their inputs are
built from the training recordings only.

Inputs (``data_dir``): ``11_folds/labels.parquet`` (``recording_labels``),
``11_folds/folds.parquet`` (``folds``), ``04_window/windows.parquet``,
``03_downsample/frames.parquet`` and ``03_downsample/videos/<id>.mp4``.

Outputs (``out_dir`` = ``data_dir/12_train``):

* ``predictions.parquet`` (table ``predictions``): one row per held-out
  recording x feature x arm: rule ``f1max_threshold``, predicted, score (max
  window score), n_windows, n_yes / evidence_windows (windows at or above the
  threshold);
* ``thresholds.parquet`` (table ``thresholds``: arm, feature_id, fold,
  threshold, train_f1);
* ``window_scores.parquet`` (table ``window_scores``);
* ``runs/<arm>/fold<k>/<feature|multilabel>.json`` (loss per epoch, counts,
  threshold: the per-fold training metrics) and ``.parquet`` (its window
  scores); ``models/<arm>/fold<k>/<feature|multilabel>.pt`` (state dict) when
  ``train.save_checkpoints``;
* ``train.json``: counts.

Clips: each window gives ``frames`` frames spread evenly over it, resized to
``image_size`` squared (the whole frame, aspect not kept: the patient may be
anywhere in it), decoded once per recording into ``clips/<T>x<S>/<id>.npy``
(uint8, memory-mapped while training) and removed at the end unless
``train.keep_clips``.  A run killed part-way resumes: finished jobs are
reused when their key (inputs, labels, params, code) still matches.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from tasks import layout
from tasks.contract import Stage
from tasks.layout import rel
from tasks.atomic import atomic_path, atomic_write_text
from tasks.catalog import load_catalog
from tasks.errors import ConfigError, SemioflowError
from tasks.identity import sha256_file
from tasks.media import iter_frames
from tasks.params import BaselineParams, Params, TrainParams, to_dict
from tasks.schema import read_table, write_table
from tasks.codehash import code_hash
from tasks.devices import resolve_device
from tasks.video_models import RandomInitWarning, VideoClassifier, build_model

RULE = "f1max_threshold"
MULTILABEL = "multilabel"  # job name of the one-model-for-all-features mode
POS_WEIGHT_RANGE = (0.1, 10.0)  # clamp of the n_negative / n_positive loss weight per output
SCORE_BATCH_FACTOR = 2  # scoring needs no gradients: batches this many times larger than training


# ---- thresholds ------------------------------------------------------------------


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """F1 of ``scores >= threshold`` against boolean ``labels`` (0 when it has no true positive)."""
    pred = scores >= threshold
    tp = int((pred & labels).sum())
    denom = int(pred.sum()) + int(labels.sum())
    return 2 * tp / denom if tp else 0.0


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``scores >= threshold`` over ``labels``.

    Candidates are midpoints between consecutive distinct scores, plus one
    below the lowest (always yes) and one above the highest (always no); the
    midpoint leaves the held-out fold the widest margin.  Ties go to the
    lowest threshold (recall first, as any-yes).  Without a positive label
    every threshold scores 0 and the answer is "always no".
    """
    scores = np.asarray(scores, float)
    labels = np.asarray(labels, bool)
    if scores.size == 0:
        raise ValueError("no training scores to choose a threshold from")
    u = np.unique(scores)
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    if not labels.any():
        return float(cands[-1]), 0.0
    f1s = [f1_at(scores, labels, t) for t in cands]
    i = int(np.argmax(f1s))  # first maximum = lowest threshold
    return float(cands[i]), float(f1s[i])


# ---- models ------------------------------------------------------------------------


def device_of(params: TrainParams) -> torch.device:
    """``train.device`` resolved: ``auto`` is CUDA when present, else CPU."""
    return resolve_device(params.device, "train.device")


def _gather(clips: list[np.ndarray], index: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([clips[r][w] for r, w in index[rows]]))


def fit(model: VideoClassifier, clips: list[np.ndarray], index: np.ndarray, bags: list[np.ndarray],
        targets: np.ndarray, *, bp: BaselineParams, params: TrainParams, device: torch.device,
        seed: int) -> list[float]:
    """Fine-tune ``model`` on labelled bags of windows.

    ``index`` holds (recording, window) rows into ``clips``; ``bags[i]`` lists
    the rows of bag i, scored by the max of its windows' logits (one window
    per bag: plain window training).  ``targets`` is ``(n_bags, n_outputs)``
    float with 1/0 labels and NaN where a label is missing (masked out of the
    loss).  Binary cross-entropy with a per-output positive weight (negative /
    positive bags, clamped to ``POS_WEIGHT_RANGE``), AdamW, ``bp.epochs``
    shuffled epochs; a step takes whole bags until it holds ``bp.batch_size``
    windows.  Returns the mean loss of every epoch.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    known = ~np.isnan(targets)
    pos = np.where(known, targets, 0).sum(0)
    neg = known.sum(0) - pos
    pos_weight = torch.tensor(np.clip(neg / np.maximum(pos, 1), *POS_WEIGHT_RANGE), dtype=torch.float32,
                              device=device)
    y_all = torch.from_numpy(np.nan_to_num(targets)).float()
    m_all = torch.from_numpy(known).float()
    loss_fn = nn.BCEWithLogitsLoss(reduction="none", pos_weight=pos_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=bp.lr, weight_decay=params.weight_decay)
    model.to(device).train()
    losses = []
    for _ in range(bp.epochs):
        total, seen = 0.0, 0
        for step in _steps(bags, rng.permutation(len(bags)), bp.batch_size):
            rows = np.concatenate([bags[b] for b in step])
            x = _gather(clips, index, rows)
            if params.flip:
                flip = torch.from_numpy(rng.random(len(rows)) < 0.5)
                x[flip] = x[flip].flip(-2)  # (B, T, H, W, C): W is dim -2
            logits = model(x.to(device))
            ends = np.cumsum([len(bags[b]) for b in step])[:-1].tolist()
            bag_logits = torch.stack([part.max(dim=0).values for part in torch.tensor_split(logits, ends)])
            y, m = y_all[step].to(device), m_all[step].to(device)
            loss = (loss_fn(bag_logits, y) * m).sum() / m.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(step)
            seen += len(step)
        losses.append(total / max(seen, 1))
    return losses


def _steps(bags: list[np.ndarray], order: np.ndarray, batch_size: int) -> list[list[int]]:
    """Group bags (in ``order``) into steps of about ``batch_size`` windows; a bag is never split."""
    steps: list[list[int]] = [[]]
    n = 0
    for b in order:
        if steps[-1] and n + len(bags[b]) > batch_size:
            steps.append([])
            n = 0
        steps[-1].append(int(b))
        n += len(bags[b])
    return [s for s in steps if s]


@torch.no_grad()
def score_windows(model: VideoClassifier, clips: list[np.ndarray], index: np.ndarray, *, batch_size: int,
                  device: torch.device) -> np.ndarray:
    """Sigmoid scores ``(n_windows, n_outputs)`` of the windows ``index`` (eval mode)."""
    model.to(device).eval()
    out = []
    for start in range(0, len(index), batch_size):
        rows = np.arange(start, min(start + batch_size, len(index)))
        out.append(torch.sigmoid(model(_gather(clips, index, rows).to(device))).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_outputs))


# ---- clips ---------------------------------------------------------------------------


def spread(n_available: int, n: int) -> list[int]:
    """``n`` positions spread evenly over ``range(n_available)`` (repeats when there are fewer)."""
    if n_available < 1:
        raise ValueError("a window without frames has no clip")
    return [min(n_available - 1, int((i + 0.5) * n_available / n)) for i in range(n)]


def build_clips(video: Path, frame_index: list[int], windows: list[dict], *, frames: int, size: int,
                out_path: Path) -> np.ndarray:
    """Decode one recording's windows into ``(n_windows, frames, size, size, 3)`` uint8 at ``out_path`` (.npy).

    ``frame_index`` lists the frames table's ``frame_index`` in decode order;
    a window takes frames ``frame_start <= frame_index < frame_end``.  One
    streaming decode pass; written atomically; returned memory-mapped.
    """
    pos = {f: k for k, f in enumerate(frame_index)}
    wanted: dict[int, list[tuple[int, int]]] = defaultdict(list)  # decode position -> (window, slot)
    for w, row in enumerate(windows):
        ks = [pos[f] for f in range(row["frame_start"], row["frame_end"]) if f in pos]
        if not ks:
            raise SemioflowError(f"window {row['window_index']} of a recording has no frames in the frames table")
        for slot, j in enumerate(spread(len(ks), frames)):
            wanted[ks[j]].append((w, slot))
    last = max(wanted)
    with atomic_path(out_path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(windows), frames, size, size, 3))
        for f in iter_frames(video, width=size, height=size):
            for w, slot in wanted.get(f.index, ()):
                arr[w, slot] = f.rgb
            if f.index >= last:
                break
        else:
            raise SemioflowError(f"the 2 fps video ended before frame {last} that its windows need")
        arr.flush()
        del arr
    return np.load(out_path, mmap_mode="r")


def recording_clips(data_dir: Path, out_dir: Path, rid: str, frame_index: list[int], windows: list[dict], *,
                    frames: int, size: int) -> tuple[np.ndarray, str]:
    """(clips, digest) of one recording, reusing the cache when its source digest still matches."""
    video = layout.path(data_dir, "downsample", "videos", f"{rid}.mp4")
    digest = hashlib.sha256(json.dumps([sha256_file(video), frame_index, windows, frames, size],
                                       sort_keys=True, default=str).encode()).hexdigest()
    folder = out_dir / "clips" / f"{frames}x{size}"
    npy, meta = folder / f"{rid}.npy", folder / f"{rid}.json"
    if npy.is_file() and meta.is_file() and json.loads(meta.read_text())["digest"] == digest:
        return np.load(npy, mmap_mode="r"), digest
    clips = build_clips(video, frame_index, windows, frames=frames, size=size, out_path=npy)
    atomic_write_text(meta, json.dumps({"digest": digest}))
    return clips, digest


# ---- jobs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldData:
    """Everything a job needs: the labelled recordings with windows, their folds and clips (per arm)."""

    rids: tuple[str, ...]  # recordings in folds that have windows, sorted
    fold: dict[str, int]
    labels: dict[str, dict[str, bool]]  # recording -> feature -> label
    windows: dict[str, list[int]]  # recording -> window indices, in clip order


def _job_seed(base_seed: int, *keys: object) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps([base_seed, *keys]).encode()).digest()[:4], "little")


def run_job(arm: str, fold: int, features: tuple[str, ...], cohort: FoldData, clips: dict[str, np.ndarray],
            digests: dict[str, str], *, params: Params, out_dir: Path, device: torch.device) -> dict:
    """Train one model (arm x held-out fold x feature set), score every window, pick thresholds.

    Returns ``{"windows": rows, "thresholds": rows, "predictions": rows,
    "trained": bool, "reused": bool}``; reuses a finished job whose key matches.
    """
    tp = params.train
    bp: BaselineParams = getattr(tp, arm)
    name = features[0] if len(features) == 1 and tp.mode == "per_feature" else MULTILABEL
    train_rids = [r for r in cohort.rids if cohort.fold[r] != fold and any(f in cohort.labels[r] for f in features)]
    test_rids = [r for r in cohort.rids if cohort.fold[r] == fold]
    key = hashlib.sha256(json.dumps({
        "arm": arm, "fold": fold, "features": features, "mode": tp.mode, "baseline": to_dict(bp),
        "weight_decay": tp.weight_decay, "flip": tp.flip, "objective": tp.objective, "seed": params.base.seed,
        "code": code_hash("tasks.train"),
        "train": [[r, [cohort.labels[r].get(f) for f in features]] for r in train_rids], "test": test_rids,
        "digests": [digests[r] for r in train_rids + test_rids],
    }, sort_keys=True).encode()).hexdigest()
    job_dir = out_dir / "runs" / arm / f"fold{fold}"
    meta_path, scores_path = job_dir / f"{name}.json", job_dir / f"{name}.parquet"
    reused = meta_path.is_file() and scores_path.is_file() and json.loads(meta_path.read_text())["key"] == key
    if reused:
        rows = read_table("window_scores", scores_path).to_pylist()
        meta = json.loads(meta_path.read_text())
    else:
        rows, meta = _train_and_score(arm, fold, features, name, train_rids, test_rids, cohort, clips,
                                      params=params, out_dir=out_dir, device=device)
        meta["key"] = key
        write_table("window_scores", rows, scores_path)
        atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
    return {**_decide(arm, fold, features, rows, cohort, meta["model_id"]), "trained": meta["trained"],
            "reused": reused}


def _train_and_score(arm: str, fold: int, features: tuple[str, ...], name: str, train_rids: list[str],
                     test_rids: list[str], cohort: FoldData, clips: dict[str, np.ndarray], *, params: Params,
                     out_dir: Path, device: torch.device) -> tuple[list[dict], dict]:
    t0 = time.perf_counter()
    tp = params.train
    bp: BaselineParams = getattr(tp, arm)
    clip_list = [clips[r] for r in cohort.rids]
    at = {r: i for i, r in enumerate(cohort.rids)}

    def index_of(rids: list[str]) -> np.ndarray:
        return np.array([(at[r], w) for r in rids for w in range(len(cohort.windows[r]))], dtype=np.int64
                        ).reshape(-1, 2)

    train_index = index_of(train_rids)
    if tp.objective == "bag_max":  # one bag per recording: its windows' rows in train_index
        bags = list(np.split(np.arange(len(train_index)), np.flatnonzero(np.diff(train_index[:, 0])) + 1)
                    ) if len(train_index) else []
    else:
        bags = [np.array([i]) for i in range(len(train_index))]
    targets = np.array([[np.nan if (v := cohort.labels[cohort.rids[train_index[b[0], 0]]].get(f)) is None
                         else float(v) for f in features] for b in bags], dtype=np.float64).reshape(-1, len(features))
    known = ~np.isnan(targets)
    # A feature whose training labels are all one class cannot be learnt; it is predicted as that class.
    constant = {f: bool(np.nanmax(targets[:, j])) for j, f in enumerate(features)
                if known[:, j].any() and np.nanmin(targets[:, j]) == np.nanmax(targets[:, j])}
    seed = _job_seed(params.base.seed, arm, fold, name)
    trained = len(constant) < len(features) and len(train_index) > 0
    torch.manual_seed(seed)  # the initial weights are part of the job: same key, same model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)  # warned once per arm by run()
        model = build_model(arm, bp, len(features))
    losses: list[float] = []
    all_rids = train_rids + test_rids
    all_index = index_of(all_rids)
    if trained:
        losses = fit(model, clip_list, train_index, bags, targets, bp=bp, params=tp, device=device, seed=seed)
        scores = score_windows(model, clip_list, all_index, batch_size=bp.batch_size * SCORE_BATCH_FACTOR,
                               device=device)
        if tp.save_checkpoints:
            with atomic_path(out_dir / "models" / arm / f"fold{fold}" / f"{name}.pt") as tmp:
                torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    else:
        scores = np.zeros((len(all_index), len(features)))
    for j, f in enumerate(features):
        if f in constant:
            scores[:, j] = float(constant[f])
    split = {r: "train" for r in train_rids} | {r: "test" for r in test_rids}
    rows = []
    for i, (r, w) in enumerate(all_index):
        rid = cohort.rids[r]
        rows += [dict(arm=arm, feature_id=f, fold=fold, recording_id=rid, window_index=cohort.windows[rid][w],
                      split=split[rid], score=float(scores[i, j])) for j, f in enumerate(features)]
    meta = {"arm": arm, "fold": fold, "features": list(features), "model_id": f"{model.model_id}-{tp.mode}",
            "trained": trained, "constant_features": sorted(constant), "epochs": bp.epochs, "loss": losses,
            "train_recordings": len(train_rids), "test_recordings": len(test_rids),
            "train_windows": int(len(train_index)), "objective": tp.objective, "train_bags": len(bags),
            "seconds": round(time.perf_counter() - t0, 1),
            "positive_bags": {f: int(np.nansum(targets[:, j])) for j, f in enumerate(features)}}
    return rows, meta


def _decide(arm: str, fold: int, features: tuple[str, ...], rows: list[dict], cohort: FoldData,
            model_id: str) -> dict:
    """Thresholds from the training recordings' max scores; predictions for the held-out ones."""
    per: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    split: dict[str, str] = {}
    for r in rows:
        per[(r["feature_id"], r["recording_id"])].append((r["window_index"], r["score"]))
        split[r["recording_id"]] = r["split"]
    thresholds, predictions = [], []
    for f in features:
        train = [rid for rid in sorted(split) if split[rid] == "train" and f in cohort.labels[rid]]
        if not train:
            continue
        rec_score = {rid: max(s for _, s in per[(f, rid)]) for rid in split}
        t, f1 = f1_threshold(np.array([rec_score[r] for r in train]),
                             np.array([cohort.labels[r][f] for r in train]))
        thresholds.append(dict(arm=arm, feature_id=f, fold=fold, threshold=t, train_f1=f1))
        for rid in sorted(r for r in split if split[r] == "test"):
            ws = sorted(per[(f, rid)])
            yes = [w for w, s in ws if s >= t]
            predictions.append(dict(recording_id=rid, feature_id=f, arm=arm, model_id=model_id, rule=RULE,
                                    predicted=rec_score[rid] >= t, score=rec_score[rid], n_windows=len(ws),
                                    n_yes=len(yes), evidence_windows=yes, n_not_assessable=0))
    return {"windows": rows, "thresholds": thresholds, "predictions": predictions}


# ---- the stage -------------------------------------------------------------------------


def video_features(params: TrainParams) -> tuple[str, ...]:
    """``train.features`` checked against the catalog's video features (empty = all of them)."""
    catalog = load_catalog()
    video = tuple(f.id for f in catalog.features if f.modality == "video")
    if not params.features:
        return video
    bad = [f for f in params.features if f not in video]
    if bad:
        raise ConfigError(f"train.features: {', '.join(bad)} not video features of the catalog")
    return tuple(f for f in video if f in params.features)


def load_cohort(data_dir: Path, features: tuple[str, ...]) -> tuple[FoldData, dict[str, list[dict]],
                                                                   dict[str, list[int]], int]:
    """(cohort, windows rows per recording, frame_index per recording, recordings without windows)."""
    labels_t = read_table("recording_labels", layout.path(data_dir, "folds", "labels.parquet")).to_pylist()
    folds_t = read_table("folds", layout.path(data_dir, "folds", "folds.parquet")).to_pylist()
    windows_t = read_table("windows", layout.path(data_dir, "window", "windows.parquet"))
    frames_t = read_table("frames", layout.path(data_dir, "downsample", "frames.parquet"))
    fold = {r["recording_id"]: int(r["fold"]) for r in folds_t}
    labels: dict[str, dict[str, bool]] = defaultdict(dict)
    for r in labels_t:
        if r["feature_id"] in features and r["recording_id"] in fold:
            labels[r["recording_id"]][r["feature_id"]] = bool(r["label"])
    win_rows: dict[str, list[dict]] = defaultdict(list)
    for r in windows_t.filter(pc.is_in(windows_t.column("recording_id"),
                                       value_set=pa.array(sorted(fold), pa.string()))).to_pylist():
        win_rows[r["recording_id"]].append(r)
    frame_index: dict[str, list[int]] = defaultdict(list)
    for r in frames_t.sort_by([("recording_id", "ascending"), ("frame_index", "ascending")]).to_pylist():
        if r["recording_id"] in win_rows:
            frame_index[r["recording_id"]].append(r["frame_index"])
    rids = tuple(sorted(r for r in fold if win_rows.get(r) and labels.get(r)))
    for r in rids:
        win_rows[r].sort(key=lambda w: w["window_index"])
    cohort = FoldData(rids=rids, fold={r: fold[r] for r in rids}, labels={r: labels[r] for r in rids},
                    windows={r: [w["window_index"] for w in win_rows[r]] for r in rids})
    return cohort, {r: win_rows[r] for r in rids}, {r: frame_index[r] for r in rids}, \
        sum(1 for r in fold if not win_rows.get(r))


def run(data_dir: Path, out_dir: Path, params: Params) -> dict:
    """The train stage (see module doc).  Returns counts only."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    tp = params.train
    features = video_features(tp)
    device = device_of(tp)
    cohort, win_rows, frame_index, no_windows = load_cohort(data_dir, features)
    folds = sorted(set(cohort.fold.values()))
    if len(folds) < 2:
        raise SemioflowError(f"train needs recordings with windows in >= 2 folds, found {len(folds)}")
    results: list[dict] = []
    random_init = 0
    for arm in tp.arms:
        bp: BaselineParams = getattr(tp, arm)
        if not bp.pretrained:
            random_init += 1
            warnings.warn(f"train: {arm} starts from random initialisation (no train.{arm}.pretrained weights)",
                          RandomInitWarning, stacklevel=2)
        clips, digests = {}, {}
        for rid in cohort.rids:
            clips[rid], digests[rid] = recording_clips(data_dir, out_dir, rid, frame_index[rid], win_rows[rid],
                                                       frames=bp.frames, size=bp.image_size)
        groups = [features] if tp.mode == MULTILABEL else [(f,) for f in features]
        for fold in folds:
            for group in groups:
                results.append(run_job(arm, fold, group, cohort, clips, digests, params=params, out_dir=out_dir,
                                       device=device))
    preds = [p for r in results for p in r["predictions"]]
    write_table("predictions", preds, out_dir / "predictions.parquet")
    write_table("thresholds", [t for r in results for t in r["thresholds"]], out_dir / "thresholds.parquet")
    write_table("window_scores", [w for r in results for w in r["windows"]], out_dir / "window_scores.parquet")
    if not tp.keep_clips:
        shutil.rmtree(out_dir / "clips", ignore_errors=True)
    summary = {"arms": len(tp.arms), "folds": len(folds), "features": len(features), "jobs": len(results),
               "trained": sum(r["trained"] for r in results), "reused": sum(r["reused"] for r in results),
               "recordings": len(cohort.rids), "windows": sum(len(w) for w in cohort.windows.values()),
               "no_windows": no_windows, "predictions": len(preds), "positive": sum(p["predicted"] for p in preds),
               "random_init_arms": random_init, "cuda": device.type == "cuda"}
    atomic_write_text(out_dir / "train.json", json.dumps(summary, indent=2, sort_keys=True))
    return summary


STAGE = Stage("train", "cohort", run, "per-fold video baselines (R(2+1)D, ViViT) with F1-max thresholds",
              inputs=(rel("folds", "labels.parquet"), rel("folds", "folds.parquet"), rel("window", "windows.parquet"),
                      rel("downsample", "frames.parquet"), rel("downsample", "videos")),
              params=("train", "base.seed"), device=lambda p: p.train.device)
