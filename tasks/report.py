"""report: one self-contained HTML file with per-recording timelines and cohort metrics.

Per recording (pseudonymous id only):

* a **timeline** per model x arm: features x windows, each cell the window's
  answer (yes / no / not scored: unparsed, refused, truncated / skipped), the
  reference label and the aggregated decision per feature; windows that
  overlap a planted event (phantom cohorts: ``report.events`` + the private
  id map, used only to join and never shown) are outlined;
* the **justifications** of every positive decision, window by window;
* **keyframes** of the windows where any model said yes: the frame nearest
  the window's middle from the de-identified 2 fps video
  (``03_downsample/videos``), inlined as base64 JPEG;
* **transcript snippets** of those windows (``08_transcript``).

Per cohort: a banner naming the models (and warning when one is a
random-weight smoke model), answer counts, the metric tables of
``13_evaluate/metrics.parquet`` with per-feature F1 and CI plots (inline
SVG), and the faithfulness histogram of the expert review
(``17_review/faithfulness.parquet``).  A missing input gives a section that
says which stage has not run yet.

Output: ``out_dir/report.html`` (``out_dir`` = ``data_dir/16_report``); no
external resource, script, source file name or path.
"""

from __future__ import annotations

import base64
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import jinja2

from tasks.answers import RANDOM_BANNER, RANDOM_TAG, SCORED, UNSCORED
from tasks.contract import Stage
from tasks.layout import ANSWERS, EVIDENCE, LABELS, PREDICTIONS, WINDOWS, rel
from tasks.atomic import atomic_write_text
from tasks import onset
from tasks.catalog import load_catalog
from tasks.media import iter_frames
from tasks.params import Params, ReportParams
from tasks.schema import read_table

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates" / "report"
QUERY_JSON = rel("query", "query.json")
VIDEOS = rel("downsample", "videos")
TRANSCRIPT = rel("transcript", "transcript_segments.parquet")
METRICS = rel("evaluate", "metrics.parquet")
FAITHFULNESS = rel("review", "faithfulness.parquet")
DEIDENTIFIED = rel("deidentify", "deidentified.parquet")
DIAGNOSIS = rel("evaluate", "diagnosis.parquet")
ORIGINAL_VOICE_WARNING = ("{n} recording(s) keep the patient's own voice (deidentify.audio: keep): their sound "
                          "identifies the patient; share them only where that is allowed.")
ID_MAP = rel("ingest", "private", "id_map.parquet")
OUTPUT = "report.html"

ARM_ORDER = ("raw", "face_crop", "pose_overlay", "audio_raw", "audio_denoised", "audio_transcript")
METRIC_COLUMNS = (("accuracy", "Acc"), ("precision", "Prec"), ("recall", "Rec"), ("f1", "F1"))
SCORES = (1, 2, 3, 4, 5)  # the faithfulness Likert scale
SECONDS_PER_MINUTE = 60

# Chart geometry (SVG user units = CSS pixels).
ROW_H = 16
LABEL_W = 190
PLOT_W = 320
AXIS_H = 26
PAD = 8
HIST_W, HIST_H, HIST_BAR_GAP = 320, 150, 10


@dataclass(frozen=True)
class _Inputs:
    answers: list[dict] | None
    query: dict
    preds: list[dict] | None
    evidence: list[dict]
    windows: list[dict] | None
    segments: list[dict] | None
    labels: list[dict] | None
    metrics: list[dict] | None
    faithfulness: list[dict] | None
    deidentified: list[dict] | None
    diagnosis: list[dict] | None = None


def _table(data_dir: Path, rel: str, name: str) -> list[dict] | None:
    path = data_dir / rel
    return read_table(name, path).to_pylist() if path.is_file() else None


def _load(data_dir: Path) -> _Inputs:
    q = data_dir / QUERY_JSON
    return _Inputs(
        answers=_table(data_dir, ANSWERS, "answers"),
        query=json.loads(q.read_text(encoding="utf-8")) if q.is_file() else {},
        preds=_table(data_dir, PREDICTIONS, "predictions"),
        evidence=_table(data_dir, EVIDENCE, "evidence") or [],
        windows=_table(data_dir, WINDOWS, "windows"),
        segments=_table(data_dir, TRANSCRIPT, "transcript_segments"),
        labels=_table(data_dir, LABELS, "recording_labels"),
        metrics=_table(data_dir, METRICS, "metrics"),
        faithfulness=_table(data_dir, FAITHFULNESS, "faithfulness_ratings"),
        deidentified=_table(data_dir, DEIDENTIFIED, "deidentified"),
        diagnosis=_table(data_dir, DIAGNOSIS, "diagnosis_predictions"),
    )


def clock(t_s: float) -> str:
    """m:ss of a time in seconds."""
    t = int(round(t_s))
    return f"{t // SECONDS_PER_MINUTE}:{t % SECONDS_PER_MINUTE:02d}"


def planted_events(data_dir: Path, params: ReportParams) -> dict[str, list[tuple[str, float, float]]]:
    """Planted events per recording id: (feature_id, t_start_s, t_end_s); {} without a truth table.

    The private id map is read only to join truth (keyed by source file
    name) to pseudonymous ids; no name or path leaves this function.
    """
    events_path, id_map = Path(params.events) if params.events else None, Path(data_dir) / ID_MAP
    if events_path is None or not events_path.is_file() or not id_map.is_file():
        return {}
    rid_of = {Path(r["source_path"]).name: r["recording_id"] for r in read_table("id_map", id_map).to_pylist()}
    out: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for e in read_table("events", events_path).to_pylist():
        rid = rid_of.get(e["source_name"])
        if rid:
            out[rid].append((e["feature_id"], e["t_start_s"], e["t_end_s"]))
    return dict(out)


def keyframes(video: Path, times_s: dict[int, float], params: ReportParams) -> dict[int, str]:
    """Base64 JPEG of the frame nearest each time (window index -> time) in a de-identified video."""
    from PIL import Image

    if not video.is_file() or not times_s:
        return {}
    best: dict[int, tuple[float, object]] = {}
    for f in iter_frames(video):
        for wi, t in times_s.items():
            d = abs(f.pts_s - t)
            if wi not in best or d < best[wi][0]:
                best[wi] = (d, f.rgb)
    out = {}
    for wi, (_, rgb) in best.items():
        img = Image.fromarray(rgb)
        if img.width > params.keyframe_width:  # never upscale
            h = max(2, round(img.height * params.keyframe_width / img.width))
            img = img.resize((params.keyframe_width, h), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=params.jpeg_quality)
        out[wi] = base64.b64encode(buf.getvalue()).decode("ascii")
    return out


def _arm_key(arm: str) -> tuple[int, str]:
    return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm)


def _status_class(status: str) -> str:
    return status if status in ("yes", "no", "skipped") else "unscored"


def recording_sections(data_dir: Path, inp: _Inputs, params: Params) -> list[dict]:
    """Everything the template shows per recording (see module doc)."""
    catalog = load_catalog()
    order = {f: i for i, f in enumerate(catalog.ids)}
    names = {f.id: f.name for f in catalog.features}
    windows: dict[str, list[dict]] = defaultdict(list)
    for w in inp.windows or []:
        windows[w["recording_id"]].append(w)
    answers: dict[str, list[dict]] = defaultdict(list)
    for a in inp.answers or []:
        answers[a["recording_id"]].append(a)
    preds = {(p["recording_id"], p["feature_id"], p["arm"], p["model_id"]): p for p in inp.preds or []}
    evidence: dict[tuple, list[dict]] = defaultdict(list)
    for e in inp.evidence:
        evidence[(e["recording_id"], e["feature_id"], e["arm"], e["model_id"])].append(e)
    truth = {(r["recording_id"], r["feature_id"]): r["label"] for r in inp.labels or []}
    segments: dict[str, list[dict]] = defaultdict(list)
    for s in inp.segments or []:
        segments[s["recording_id"]].append(s)
    events = planted_events(data_dir, params.report)
    # the ES / NES probability the report shows: from the model's answers (enhanced arms first), never the labels
    p_es: dict[str, tuple[float, str]] = {}
    for source in ("mllm_raw", "mllm_enhanced"):
        p_es.update({d["recording_id"]: (d["p_es"], source) for d in inp.diagnosis or [] if d["source"] == source})

    sections = []
    for rid in sorted(set(windows) | set(answers)):
        wins = sorted(windows.get(rid, []), key=lambda w: w["window_index"])
        if not wins:
            wins = [dict(window_index=wi, t_start_s=None, t_end_s=None)
                    for wi in sorted({a["window_index"] for a in answers[rid]})]
        span = {w["window_index"]: (w["t_start_s"], w["t_end_s"]) for w in wins}
        cells: dict[tuple[str, str], dict[tuple[str, int], dict]] = defaultdict(dict)
        for a in answers.get(rid, []):
            cells[(a["model_id"], a["arm"])][(a["feature_id"], a["window_index"])] = a
        yes_windows = sorted({a["window_index"] for a in answers.get(rid, []) if a["status"] == "yes"})
        grids = []
        for (model, arm) in sorted(cells, key=lambda k: (k[0], _arm_key(k[1]))):
            grid = cells[(model, arm)]
            rows = []
            for fid in sorted({f for f, _ in grid}, key=lambda f: (order.get(f, len(order)), f)):
                p = preds.get((rid, fid, arm, model))
                row_cells = []
                for w in wins:
                    wi = w["window_index"]
                    a = grid.get((fid, wi))
                    status = a["status"] if a else "missing"
                    t0, t1 = span[wi]
                    planted = t0 is not None and any(f == fid and s < t1 and e > t0 for f, s, e in events.get(rid, []))
                    tip = f"w{wi}" + (f" {clock(t0)}–{clock(t1)}" if t0 is not None else "") + f": {status}"
                    if a and a["yes_prob"] is not None:
                        tip += f" (P(yes) {a['yes_prob']:.2f})"
                    if planted:
                        tip += "; planted event"
                    row_cells.append(dict(window=wi, status=status, cls=_status_class(status), planted=planted,
                                          title=tip))
                rows.append(dict(feature_id=fid, name=names.get(fid, fid), label=truth.get((rid, fid)),
                                 predicted=p["predicted"] if p else None, cells=row_cells))
            grids.append(dict(model=model, arm=arm, random=model.endswith(RANDOM_TAG), rows=rows))
        positives = []
        for (r, fid, arm, model), p in sorted(preds.items(), key=lambda kv: (order.get(kv[0][1], 99), kv[0])):
            if r != rid or not p["predicted"]:
                continue
            ev = sorted(evidence.get((rid, fid, arm, model), []), key=lambda e: e["window_index"])
            positives.append(dict(name=names.get(fid, fid), feature_id=fid, arm=arm, model=model,
                                  label=truth.get((rid, fid)),
                                  windows=[dict(window=e["window_index"], span=_span(span.get(e["window_index"])),
                                                yes_prob=e["yes_prob"], text=e["justification"] or "")
                                           for e in ev]))
        timed = {wi: t for wi, t in span.items() if t[0] is not None}
        first_seen: dict[str, tuple[float, str]] = {}
        for (r, fid, arm, model), p in preds.items():
            if r == rid and p["predicted"] and (t := onset.estimate(list(p["evidence_windows"]), timed)) is not None:
                first_seen[fid] = min(first_seen.get(fid, (t, arm)), (t, arm))
        onset_order = [dict(name=names.get(f, f), at=clock(t), arm=arm)
                       for f, (t, arm) in sorted(first_seen.items(), key=lambda kv: (kv[1][0], order.get(kv[0], 99)))]
        mids = {wi: (span[wi][0] + span[wi][1]) / 2 for wi in yes_windows if span.get(wi, (None,))[0] is not None}
        frames = keyframes(Path(data_dir) / VIDEOS / f"{rid}.mp4", mids, params.report)
        snippets = []
        for wi in yes_windows:
            t0, t1 = span.get(wi, (None, None))
            if t0 is None:
                continue
            text = " ".join(s["text"].strip() for s in sorted(segments.get(rid, []), key=lambda s: s["t_start_s"])
                            if s["t_start_s"] < t1 and s["t_end_s"] > t0 and s["text"].strip())
            if text:
                cut = params.report.snippet_chars
                snippets.append(dict(window=wi, span=_span((t0, t1)),
                                     text=text if len(text) <= cut else text[:cut].rstrip() + "…"))
        sections.append(dict(
            recording_id=rid,
            windows=[dict(window=w["window_index"], span=_span(span[w["window_index"]])) for w in wins],
            grids=grids, positives=positives, onset_order=onset_order,
            p_es=dict(value=p_es[rid][0], source=p_es[rid][1].replace("mllm_", "")) if rid in p_es else None,
            keyframes=[dict(window=wi, span=_span(span[wi]), jpeg=frames[wi]) for wi in yes_windows if wi in frames],
            snippets=snippets, transcript_run=inp.segments is not None,
            has_video=(Path(data_dir) / VIDEOS / f"{rid}.mp4").is_file(), planted=rid in events))
    return sections


def _span(span: tuple | None) -> str:
    if not span or span[0] is None:
        return ""
    return f"{clock(span[0])}–{clock(span[1])}"


def metric_tables(rows: list[dict]) -> list[dict]:
    """Per arm: features x (Acc, Prec, Rec, F1 with CI, n), in catalog order."""
    order = {f: i for i, f in enumerate(load_catalog().ids)}
    names = {f.id: f.name for f in load_catalog().features}
    by: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        by[r["arm"]][r["feature_id"]][r["metric"]] = r
    tables = []
    for arm in sorted(by, key=lambda a: _arm_key(a.split("@")[0]) + (a,)):
        feats = sorted(by[arm], key=lambda f: (order.get(f, len(order)), f))
        tables.append(dict(arm=arm, rows=[dict(
            feature_id=f, name=names.get(f, f), n=max(m["n"] for m in by[arm][f].values()),
            cells=[_fmt_metric(by[arm][f].get(key)) for key, _ in METRIC_COLUMNS]) for f in feats],
            chart=f1_chart(arm, [(names.get(f, f), by[arm][f].get("f1")) for f in feats])))
    return tables


def _fmt_metric(m: dict | None) -> str:
    if m is None:
        return "–"
    s = f"{m['value']:.2f}"
    if m["ci_low"] is not None and m["ci_high"] is not None:
        s += f" [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"
    return s


def f1_chart(arm: str, rows: list[tuple[str, dict | None]]) -> dict:
    """Geometry of a per-feature F1 dot-and-whisker chart (x: 0..1)."""
    def x(v: float) -> float:
        return LABEL_W + PAD + max(0.0, min(1.0, v)) * PLOT_W

    points = []
    for i, (name, m) in enumerate(rows):
        y = PAD + i * ROW_H + ROW_H / 2
        if m is None:
            continue
        lo = m["ci_low"] if m["ci_low"] is not None else m["value"]
        hi = m["ci_high"] if m["ci_high"] is not None else m["value"]
        points.append(dict(name=name, y=y, x=x(m["value"]), x_lo=x(lo), x_hi=x(hi), value=m["value"]))
    height = PAD + len(rows) * ROW_H + AXIS_H
    labels = [dict(name=name, y=PAD + i * ROW_H + ROW_H / 2) for i, (name, _) in enumerate(rows)]
    ticks = [dict(x=x(t / 4), label=f"{t / 4:.2f}") for t in range(5)]
    return dict(title=f"F1 per feature — {arm}", width=LABEL_W + PLOT_W + 2 * PAD + 10, height=height,
                axis_y=PAD + len(rows) * ROW_H, points=points, labels=labels, ticks=ticks, x0=x(0), x1=x(1))


def faithfulness_chart(rows: list[dict], pass_score: int) -> dict:
    """Geometry of the faithfulness score histogram (scores 1-5)."""
    counts = Counter(int(r["score"]) for r in rows)
    n = sum(counts.values())
    top = max(counts.values(), default=1)
    bar_w = (HIST_W - 2 * PAD - HIST_BAR_GAP * (len(SCORES) - 1)) / len(SCORES)
    bars = []
    for i, s in enumerate(SCORES):
        h = (HIST_H - AXIS_H - PAD) * counts.get(s, 0) / top
        x = PAD + i * (bar_w + HIST_BAR_GAP)
        bars.append(dict(score=s, count=counts.get(s, 0), x=x, w=bar_w, y=HIST_H - AXIS_H - h, h=h,
                         cx=x + bar_w / 2, passing=s >= pass_score))
    share = sum(c for s, c in counts.items() if s >= pass_score) / n if n else 0.0
    return dict(width=HIST_W, height=HIST_H, base=HIST_H - AXIS_H, bars=bars, n=n, share=share,
                pass_score=pass_score, reviewers=len({r["reviewer"] for r in rows}))


def banner(inp: _Inputs) -> dict:
    """Models that answered and whether one is a random-weight smoke model."""
    models = list(inp.query.get("models") or sorted({a["model_id"] for a in inp.answers or []}))
    models = [m for m in models if m != "none"]
    random = bool(inp.query.get("random_weights")) or any(m.endswith(RANDOM_TAG) for m in models)
    voices = sum(r["audio"] == "original" for r in inp.deidentified or [] if r["status"] == "ok")
    return dict(models=models, random=random, warning=RANDOM_BANNER if random else "", original_voice=voices,
                voice_warning=ORIGINAL_VOICE_WARNING.format(n=voices) if voices else "")


def context(data_dir: Path, params: Params) -> dict:
    """The whole template context (also handy for tests)."""
    data_dir = Path(data_dir)
    inp = _load(data_dir)
    statuses = Counter(a["status"] for a in inp.answers or [])
    return dict(
        banner=banner(inp),
        answers_run=inp.answers is not None, preds_run=inp.preds is not None,
        labels_run=inp.labels is not None, windows_run=inp.windows is not None,
        counts=dict(recordings=len({a["recording_id"] for a in inp.answers or []}),
                    answers=len(inp.answers or []), statuses=dict(sorted(statuses.items())),
                    scored=sum(statuses[s] for s in SCORED),
                    positives=sum(bool(p["predicted"]) for p in inp.preds or []),
                    predictions=len(inp.preds or [])),
        recordings=recording_sections(data_dir, inp, params),
        metrics=metric_tables(inp.metrics) if inp.metrics else None,
        faithfulness=faithfulness_chart(inp.faithfulness, params.review.pass_score) if inp.faithfulness else None,
        unscored=UNSCORED,
    )


def render(ctx: dict) -> str:
    """The report HTML from a context built by ``context``."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html").render(**ctx, metric_columns=[c for _, c in METRIC_COLUMNS])


def build_report(data_dir: Path, out_path: Path, params: Params) -> Path:
    """Write the self-contained HTML report of the cohort in ``data_dir`` to ``out_path`` (atomically)."""
    html = render(context(data_dir, params))
    return atomic_write_text(out_path, html)


def run(data_dir: Path, out_dir: Path, params: Params) -> dict:
    """The report stage: writes ``out_dir/report.html``; returns counts only."""
    ctx = context(data_dir, params)
    path = atomic_write_text(Path(out_dir) / OUTPUT, render(ctx))
    return {"recordings": len(ctx["recordings"]), "random_weights": ctx["banner"]["random"],
            "metrics": ctx["metrics"] is not None, "faithfulness": ctx["faithfulness"] is not None,
            "bytes": path.stat().st_size}


STAGE = Stage(
    "report", "cohort", run, "one self-contained HTML report: answers, predictions, metrics, evidence frames",
    inputs=(ANSWERS, QUERY_JSON, PREDICTIONS, EVIDENCE, WINDOWS, VIDEOS),
    # sections say "not run yet" without these; the planted-events table only exists for phantom cohorts
    optional=(TRANSCRIPT, LABELS, METRICS, FAITHFULNESS, DIAGNOSIS, "report.events"), external=("report.events",),
    params=("report", "review"), assets=("tasks/templates/report",))
