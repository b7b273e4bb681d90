"""report: one self-contained HTML file a clinician reads: the overview first, then each recording.

The **first screen** is the overview (``13_evaluate/metrics.parquet``): per
feature (rows), the MLLM arms (one column per model where an arm has several)
against the baselines (R(2+1)D, ViViT) and always-yes, as a heatmap of F1
with each cell's patient-level bootstrap CI drawn as a bar (inline SVG), and
the verdict lines, computed from the same F1 values by the same function as
evaluate's ``tables.md`` (``tasks.arms.verdict``).  Under it: a short "how to
read this report", the gait results (``15_gait/results.parquet``,
``gait.json``, with the random-weights caveat), the cohort's counts, the
faithfulness histogram of the expert review (``17_review/faithfulness.parquet``)
and the full metric tables (folded).

Per recording (pseudonymous id only):

* **one timeline grid** of all arms: features x windows, arm rows grouped,
  each cell the window's answer (yes; yes with P(yes) < 0.5, "low
  confidence"; no; not scored: unparsed, refused, truncated; not assessable:
  no media for that window and arm; skipped: no model), the reference label and
  the aggregated decision per feature; windows that overlap a labelled (planted)
  event (phantom cohorts: ``report.events`` + the private id map, used only to
  join and never shown) are outlined;
* the **positive decisions** (the aggregation rule said present) with every
  yes window's P(yes) and justification, folded (``<details>``); a yes whose
  P(yes) is under one half is flagged low-confidence, never shown as a
  confident positive;
* **keyframes** of the windows where any model said yes: the frame nearest
  the window's middle from the de-identified 2 fps video
  (``03_downsample/videos``), inlined as base64 JPEG;
* **transcript snippets** of those windows (``08_transcript``).

Arms carry their readable names (``tasks.arms.ARM_NAMES``).  The
random-weights banner is derived from the model ids of every table shown
(answers, predictions, the baselines' predictions, gait rationales) and the
stages' summaries, never from ``query.json`` alone (a failed run may rewrite
it).  A missing input gives a section that says which stage has not run yet.

Output: ``out_dir/report.html`` (``out_dir`` = ``data_dir/16_report``); no
external resource, script, source file name or path.
"""

from __future__ import annotations

import base64
import io
import json
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import jinja2

from tasks import arms as armlib
from tasks.answers import NO_MODEL, NOT_ASSESSABLE, RANDOM_BANNER, RANDOM_TAG, SCORED, UNSCORED, is_random
from tasks.contract import SKIPPED, STATE, Stage
from tasks.layout import ANSWERS, EVIDENCE, LABELS, PREDICTIONS, WINDOWS, rel
from tasks.atomic import atomic_write_text
from tasks import onset
from tasks.catalog import Catalog, load_catalog
from tasks.media import iter_frames
from tasks.params import Params, ReportParams
from tasks.schema import read_table

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates" / "report"
QUERY_JSON = rel("query", "query.json")
QUERY_STATE = rel("query", STATE)  # which recordings' answers were kept from an earlier run (its rerun failed)
VIDEOS = rel("downsample", "videos")
TRANSCRIPT = rel("transcript", "transcript_segments.parquet")
METRICS = rel("evaluate", "metrics.parquet")
BASELINE_PREDICTIONS = rel("train", "predictions.parquet")
FAITHFULNESS = rel("review", "faithfulness.parquet")
DEIDENTIFIED = rel("deidentify", "deidentified.parquet")
DIAGNOSIS = rel("evaluate", "diagnosis.parquet")
GAIT_RESULTS = rel("gait", "results.parquet")
GAIT_SUMMARY = rel("gait", "gait.json")
GAIT_RATIONALES = rel("gait", "rationales.parquet")
GAIT_SKIPPED = rel("gait", SKIPPED)
# the gait stage writes either its results or skipped.json: its folder is the one input that always exists
GAIT = rel("gait")
STALE_WARNING = ("The answers of {n} recording(s) are from an earlier run: their latest query run failed, so "
                 "their last good answers were kept (rerun the query stage to bring them up to date):")
ORIGINAL_VOICE_WARNING = ("{n} recording(s) keep the patient's own voice (deidentify.audio: keep): their sound "
                          "identifies the patient; share them only where that is allowed.")
ID_MAP = rel("ingest", "private", "id_map.parquet")
OUTPUT = "report.html"

STATUS_NAMES = {"yes": "yes", "no": "no", "skipped": "skipped (no model)", NOT_ASSESSABLE: "not assessable",
                "missing": "no answer"}
# A "yes" whose own P(yes) is below this is a coin-flip answer: shown as low-confidence, never as a confident
# positive (the point where yes stops being likelier than no, not a knob).
LOW_CONFIDENCE = 0.5
METRIC_COLUMNS = (("accuracy", "Acc"), ("precision", "Prec"), ("recall", "Rec"), ("f1", "F1"))
SCORES = (1, 2, 3, 4, 5)  # the faithfulness Likert scale
SECONDS_PER_MINUTE = 60

# Chart geometry (SVG user units = CSS pixels).
PAD = 8
AXIS_H = 26
HIST_W, HIST_H, HIST_BAR_GAP = 320, 150, 10
OV_LABEL_W = 180  # feature names
OV_ROW_H, OV_GROUP_H = 19, 15  # a feature row; a catalog group's heading row
OV_HEAD_LINE, OV_HEAD_LINES = 11, 4  # column heading: up to 3 lines of the arm's name, then the model's
OV_CELL_W_MAX, OV_CELL_W_MIN = 74, 46
OV_KIND_GAP = 8  # between baselines, MLLM arms and the reference
OV_DELTA_W = 70  # the two difference columns
OV_WIDTH = 1180  # the overview's target width (a 1280 px screen less the page margins)
OV_NAME_CHARS = 12  # wrap the arm names of the column headings at this many characters
OV_MODEL_CHARS = 14
OV_LOW_RGB, OV_HIGH_RGB = (243, 246, 250), (22, 68, 150)  # F1 0 and F1 1
OV_DARK_TEXT_ABOVE = 0.55  # F1 from which a cell's text is white


@dataclass(frozen=True)
class Inputs:
    """The tables (rows as dicts) and summaries the report reads; None where the stage has not run."""

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
    baseline_preds: list[dict] | None = None
    gait_results: list[dict] | None = None
    gait: dict | None = None  # gait.json, or {"skipped": reason}
    gait_rationales: list[dict] | None = None
    query_state: dict | None = None  # query's state.json: recordings, stale ids


def _table(data_dir: Path, rel: str, name: str) -> list[dict] | None:
    path = data_dir / rel
    return read_table(name, path).to_pylist() if path.is_file() else None


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_inputs(data_dir: Path) -> Inputs:
    return Inputs(
        answers=_table(data_dir, ANSWERS, "answers"),
        query=_json(data_dir / QUERY_JSON) or {},
        query_state=_json(data_dir / QUERY_STATE),
        preds=_table(data_dir, PREDICTIONS, "predictions"),
        evidence=_table(data_dir, EVIDENCE, "evidence") or [],
        windows=_table(data_dir, WINDOWS, "windows"),
        segments=_table(data_dir, TRANSCRIPT, "transcript_segments"),
        labels=_table(data_dir, LABELS, "recording_labels"),
        metrics=_table(data_dir, METRICS, "metrics"),
        faithfulness=_table(data_dir, FAITHFULNESS, "faithfulness_ratings"),
        deidentified=_table(data_dir, DEIDENTIFIED, "deidentified"),
        diagnosis=_table(data_dir, DIAGNOSIS, "diagnosis_predictions"),
        baseline_preds=_table(data_dir, BASELINE_PREDICTIONS, "predictions"),
        gait_results=_table(data_dir, GAIT_RESULTS, "gait_results"),
        gait=_json(data_dir / GAIT_SUMMARY) or _json(data_dir / GAIT_SKIPPED),
        gait_rationales=_table(data_dir, GAIT_RATIONALES, "gait_rationales"),
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


def _status_class(status: str, yes_prob: float | None = None) -> str:
    if status == "yes" and yes_prob is not None and yes_prob < LOW_CONFIDENCE:
        return "yes low"
    if status in ("yes", "no", "skipped", "missing"):
        return status
    return "na" if status == NOT_ASSESSABLE else "unscored"


def _mark(cls: str) -> str:
    """The character a timeline cell shows (colour carries the same, for screens and print alike)."""
    return {"yes": "●", "yes low": "○", "unscored": "?", "na": "n/a", "skipped": "–", "missing": "–"}.get(cls, "")


def _feature_key(order: dict[str, int]):
    return lambda f: (order.get(f, len(order)), f)


def recording_sections(data_dir: Path, inp: Inputs, params: Params) -> list[dict]:
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
    models_of: dict[str, set[str]] = defaultdict(set)
    for a in inp.answers or []:
        models_of[a["arm"]].add(a["model_id"])
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
        groups = []
        for (model, arm) in sorted(cells, key=lambda k: (armlib.order(k[1]), k[1], k[0])):
            grid = cells[(model, arm)]
            rows = []
            for fid in sorted({f for f, _ in grid}, key=_feature_key(order)):
                p = preds.get((rid, fid, arm, model))
                row_cells = []
                for w in wins:
                    wi = w["window_index"]
                    a = grid.get((fid, wi))
                    status = a["status"] if a else "missing"
                    prob = a["yes_prob"] if a else None
                    cls = _status_class(status, prob)
                    t0, t1 = span[wi]
                    planted = t0 is not None and any(f == fid and s < t1 and e > t0 for f, s, e in events.get(rid, []))
                    tip = (f"w{wi}" + (f" {clock(t0)}–{clock(t1)}" if t0 is not None else "")
                           + f": {STATUS_NAMES.get(status, status)}")
                    if prob is not None:
                        tip += f" (P(yes) {prob:.2f})"
                    if cls == "yes low":
                        tip += ": low confidence"
                    if planted:
                        tip += "; labelled event"
                    row_cells.append(dict(window=wi, status=status, cls=cls, mark=_mark(cls), planted=planted,
                                          title=tip))
                rows.append(dict(feature_id=fid, name=names.get(fid, fid), label=truth.get((rid, fid)),
                                 predicted=p["predicted"] if p else None, decided=p is not None,
                                 decision_title=_decision_title(p)))
                rows[-1]["cells"] = row_cells
            several = len(models_of.get(arm, ())) > 1
            groups.append(dict(model=model, arm=arm, name=armlib.display(f"{arm}@{model}" if several else arm),
                               random=is_random(model), rows=rows))
        positives = []
        for (r, fid, arm, model), p in sorted(preds.items(), key=lambda kv: (order.get(kv[0][1], 99),
                                                                            armlib.order(kv[0][2]), kv[0])):
            if r != rid or not p["predicted"]:
                continue
            ev = sorted(evidence.get((rid, fid, arm, model), []), key=lambda e: e["window_index"])
            shown = [dict(window=e["window_index"], span=_span(span.get(e["window_index"])), yes_prob=e["yes_prob"],
                          low=e["yes_prob"] is not None and e["yes_prob"] < LOW_CONFIDENCE,
                          text=(e["justification"] or "").strip()) for e in ev]
            several = len(models_of.get(arm, ())) > 1
            positives.append(dict(name=names.get(fid, fid), feature_id=fid, arm=arm, model=model,
                                  arm_name=armlib.display(f"{arm}@{model}" if several else arm),
                                  label=truth.get((rid, fid)), windows=shown,
                                  # every yes behind the decision is a coin flip: the decision is too
                                  low=bool(shown) and all(w["low"] for w in shown)))
        timed = {wi: t for wi, t in span.items() if t[0] is not None}
        first_seen: dict[str, tuple[float, str]] = {}
        for (r, fid, arm, model), p in preds.items():
            if r == rid and p["predicted"] and (t := onset.estimate(list(p["evidence_windows"]), timed)) is not None:
                first_seen[fid] = min(first_seen.get(fid, (t, arm)), (t, arm))
        onset_order = [dict(name=names.get(f, f), at=clock(t), arm=armlib.display(arm))
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
            windows=[dict(window=w["window_index"], span=_span(span[w["window_index"]]),
                          start=clock(w["t_start_s"]) if w["t_start_s"] is not None else "") for w in wins],
            groups=groups, positives=positives, low_positives=sum(p["low"] for p in positives),
            onset_order=onset_order,
            p_es=dict(value=p_es[rid][0], source=p_es[rid][1].replace("mllm_", "")) if rid in p_es else None,
            keyframes=[dict(window=wi, span=_span(span[wi]), jpeg=frames[wi]) for wi in yes_windows if wi in frames],
            snippets=snippets, transcript_run=inp.segments is not None,
            has_video=(Path(data_dir) / VIDEOS / f"{rid}.mp4").is_file(), planted=rid in events))
    return sections


def _decision_title(p: dict | None) -> str:
    if p is None:
        return "no decision (aggregate has not run for this arm)"
    if p["predicted"] is None:
        return "not assessable: no window of this arm had media"
    title = f"{p['rule']}: {p['n_yes']} of {p['n_windows']} answered windows said yes"
    if p.get("n_not_assessable"):
        title += f"; {p['n_not_assessable']} window(s) not assessable"
    return title


def _span(span: tuple | None) -> str:
    if not span or span[0] is None:
        return ""
    return f"{clock(span[0])}–{clock(span[1])}"


def metric_tables(rows: list[dict]) -> list[dict]:
    """Per arm (readable name): features x (Acc, Prec, Rec, F1 with CI, n), in catalog order."""
    order = {f: i for i, f in enumerate(load_catalog().ids)}
    names = {f.id: f.name for f in load_catalog().features}
    by: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        by[r["arm"]][r["feature_id"]][r["metric"]] = r
    tables = []
    for arm in armlib.sort_arms(by):
        feats = sorted(by[arm], key=_feature_key(order))
        tables.append(dict(arm=arm, name=armlib.display(arm), rows=[dict(
            feature_id=f, name=names.get(f, f), n=max(m["n"] for m in by[arm][f].values()),
            # recordings left out of the scores (no media), where evaluate counts them
            not_assessable=max(m.get("n_not_assessable") or 0 for m in by[arm][f].values()),
            cells=[_fmt_metric(by[arm][f].get(key)) for key, _ in METRIC_COLUMNS]) for f in feats]))
    return tables


def _fmt_metric(m: dict | None) -> str:
    if m is None:
        return "–"
    s = f"{m['value']:.2f}"
    if m["ci_low"] is not None and m["ci_high"] is not None:
        s += f" [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"
    return s


def fill_rgb(f1: float) -> tuple[int, int, int]:
    """The overview's colour of an F1 (linear from ``OV_LOW_RGB`` at 0 to ``OV_HIGH_RGB`` at 1)."""
    t = max(0.0, min(1.0, f1))
    return tuple(round(lo + (hi - lo) * t) for lo, hi in zip(OV_LOW_RGB, OV_HIGH_RGB))


def _heading(arm: str) -> tuple[list[str], str]:
    """(lines of the arm's readable name, the model's short name or "") of an overview column."""
    base, _, model = arm.partition(armlib.MODEL_SEP)
    lines = textwrap.wrap(armlib.display(base), OV_NAME_CHARS)[:OV_HEAD_LINES - 1]
    short = model.rsplit("/", 1)[-1].replace(RANDOM_TAG, "")  # the banner names the random-weight ones
    return lines, (short if len(short) <= OV_MODEL_CHARS else short[:OV_MODEL_CHARS - 1] + "…")


def overview(rows: list[dict], catalog: Catalog, *, ci: float) -> dict:
    """The first screen: the verdict (``tasks.arms.verdict``, as tables.md) and the geometry of the F1 heatmap.

    Columns: the arms of the metrics table in ``ARM_ORDER`` (baselines, MLLM arms with one column per model
    where an arm has several, always-yes), then the two differences the verdict counts (best MLLM - best
    baseline on video features, best enhanced - raw).  Rows: the features that have an F1, by catalog group.
    """
    f1 = {(r["arm"], r["feature_id"]): r for r in rows if r["metric"] == "f1"}
    v = armlib.verdict({k: m["value"] for k, m in f1.items()}, catalog)
    arms = armlib.sort_arms(a for a, _ in f1)
    kinds = [armlib.kind(a) for a in arms]
    gaps = sum(1 for i in range(1, len(kinds)) if kinds[i] != kinds[i - 1])
    free = OV_WIDTH - OV_LABEL_W - 2 * OV_DELTA_W - gaps * OV_KIND_GAP - 2 * PAD
    cell_w = max(OV_CELL_W_MIN, min(OV_CELL_W_MAX, free // max(len(arms), 1)))
    headings = [_heading(a) for a in arms]
    head_h = OV_HEAD_LINE * max([3] + [len(lines) + bool(model) for lines, model in headings]) + PAD
    columns, x = [], float(OV_LABEL_W + PAD)
    for i, arm in enumerate(arms):
        if i and kinds[i] != kinds[i - 1]:
            x += OV_KIND_GAP
        lines, model = headings[i]
        columns.append(dict(arm=arm, kind=kinds[i], x=x, cx=x + cell_w / 2, lines=lines, model=model,
                            title=armlib.display(arm)))
        x += cell_w
    delta_x = [x + OV_KIND_GAP, x + OV_KIND_GAP + OV_DELTA_W]
    deltas = [dict(key="mllm_vs_baseline", cx=delta_x[0] + OV_DELTA_W / 2, lines=["best MLLM", "− best", "baseline"]),
              dict(key="enhanced_vs_raw", cx=delta_x[1] + OV_DELTA_W / 2, lines=["best", "enhanced", "− raw"])]
    picked = {(a, fid) for fid, pair in v["mllm_vs_baseline"]["pairs"].items() for a in pair}
    out_rows, y = [], float(head_h)
    for group, title in catalog.group_names.items():
        feats = [f for f in catalog.in_group(group) if any((a, f.id) in f1 for a in arms)]
        if not feats:
            continue
        out_rows.append(dict(group=True, name=title, y=y + OV_GROUP_H - 4))
        y += OV_GROUP_H
        for f in feats:
            cells = []
            for c in columns:
                m = f1.get((c["arm"], f.id))
                if m is None:
                    cells.append(dict(x=c["x"], missing=True, title=f"{f.name} · {c['title']}: not evaluated"))
                    continue
                lo = m["ci_low"] if m["ci_low"] is not None else m["value"]
                hi = m["ci_high"] if m["ci_high"] is not None else m["value"]
                inner = (c["x"] + 5, cell_w - 10)
                cells.append(dict(
                    x=c["x"], missing=False, value=m["value"], text=f"{m['value']:.2f}", fill="rgb({},{},{})".format(*fill_rgb(m["value"])),
                    ink="#fff" if m["value"] >= OV_DARK_TEXT_ABOVE else "#1d2430",
                    ci_x0=inner[0] + inner[1] * max(0.0, min(1.0, lo)), ci_x1=inner[0] + inner[1] * max(0.0, min(1.0, hi)),
                    picked=(c["arm"], f.id) in picked,
                    title=(f"{f.name} · {c['title']}: F1 {m['value']:.2f}"
                           + (f" [{m['ci_low']:.2f}, {m['ci_high']:.2f}]" if m["ci_low"] is not None else "")
                           + f", n {m['n']}"
                           + (f", {m['n_not_assessable']} not assessable (no media)" if m.get("n_not_assessable")
                              else ""))))
            diffs = []
            for d in deltas:
                pair = v[d["key"]]["pairs"].get(f.id)
                if pair is None:
                    diffs.append(dict(cx=d["cx"], text="", cls="none", title=""))
                    continue
                a, b = pair
                diff = f1[(a, f.id)]["value"] - f1[(b, f.id)]["value"]
                diffs.append(dict(cx=d["cx"], text=f"{diff:+.2f}", cls="win" if diff > 0 else "loss" if diff < 0
                                  else "tie", title=f"{f.name}: {armlib.display(a)} {f1[(a, f.id)]['value']:.2f} − "
                                                    f"{armlib.display(b)} {f1[(b, f.id)]['value']:.2f}"))
            out_rows.append(dict(group=False, feature_id=f.id, name=f.name, y=y, cy=y + OV_ROW_H / 2 + 3,
                                 ci_y=y + OV_ROW_H - 3, cells=cells, diffs=diffs))
            y += OV_ROW_H
    mb, er = v["mllm_vs_baseline"], v["enhanced_vs_raw"]
    return dict(line=v["line"], mllm_vs_baseline=mb, enhanced_vs_raw=er, ci=ci,
                width=delta_x[1] + OV_DELTA_W + PAD, height=y + PAD, head_h=head_h, head_line=OV_HEAD_LINE, cell_w=cell_w, row_h=OV_ROW_H,
                columns=columns, deltas=deltas, rows=out_rows, has_baseline=any(k == "baseline" for k in kinds),
                has_reference=armlib.REFERENCE_ARM in arms, arms=[armlib.display(a) for a in arms])


def gait_section(inp: Inputs) -> dict | None:
    """The gait results (accuracy and macro F1 per model) with the random-weights caveat; None if never run."""
    summary = inp.gait or {}
    if inp.gait_results is None and not summary:
        return None
    if "skipped" in summary and inp.gait_results is None:
        return dict(skipped=summary["skipped"], rows=[], caveats=[])
    got: dict[str, dict] = defaultdict(dict)
    for r in inp.gait_results or []:
        if r["gait_class"] is None:
            got[r["model"]][r["metric"]] = r["value"]
            got[r["model"]]["n"] = r["n"]
    if not got:  # only the summary: its accuracy / macro_f1 maps
        for metric in ("accuracy", "macro_f1"):
            for m, val in (summary.get(metric) or {}).items():
                got[m][metric] = val
    rows = [dict(model=m, name=armlib.gait_model_name(m), accuracy=g.get("accuracy"), macro_f1=g.get("macro_f1"),
                 n=g.get("n", summary.get("test"))) for m, g in got.items()]
    rows.sort(key=lambda r: -(r["macro_f1"] if r["macro_f1"] is not None else -1))
    random_vlm = bool(summary.get("random_weight_vlm")) or any(is_random(r["model_id"])
                                                               for r in inp.gait_rationales or [])
    caveats = []
    if random_vlm:
        caveats.append("The gait VLM is a random-weight smoke model: BioGait, its ablations, zero-shot and the "
                       "rationales are plumbing checks, not results.")
    if summary.get("random_init_baselines"):
        caveats.append("The video baseline starts from random initialisation (no pretrained weights).")
    return dict(skipped=None, rows=rows, caveats=caveats, random=random_vlm,
                clips=summary.get("clips"), train=summary.get("train"), test=summary.get("test"),
                test_subjects=summary.get("test_subjects"), rationales=summary.get("rationales"),
                verified=summary.get("rationales_verified"), empty=summary.get("rationales_empty"))


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


def banner(inp: Inputs) -> dict:
    """The models shown and whether one is a random-weight smoke model.

    Derived from the model ids of every table the report shows (answers, MLLM and baseline predictions,
    evidence, metric arms, gait rationales) and the stages' summaries; ``query.json`` alone could be stale
    (a failed run may rewrite it), so it only adds to what the tables say.
    """
    mllm = {a["model_id"] for a in inp.answers or []} | {p["model_id"] for p in inp.preds or []}
    mllm |= {m for m in inp.query.get("models") or []}
    mllm.discard(NO_MODEL)
    baselines = sorted({p["model_id"] for p in inp.baseline_preds or []} - {NO_MODEL})
    shown = mllm | set(baselines) | {e["model_id"] for e in inp.evidence}
    shown |= {r["arm"].partition(armlib.MODEL_SEP)[2] for r in inp.metrics or []} - {""}
    shown |= {r["model_id"] for r in inp.gait_rationales or []}
    random_models = sorted(m for m in shown if is_random(m))
    random = (bool(random_models) or bool(inp.query.get("random_weights"))
              or bool((inp.gait or {}).get("random_weight_vlm")))
    voices = sum(r["audio"] == "original" for r in inp.deidentified or [] if r["status"] == "ok")
    stale = sorted((inp.query_state or {}).get("stale") or [])
    return dict(models=sorted(mllm), baselines=baselines, random=random, random_models=random_models,
                warning=RANDOM_BANNER if random else "", stale=stale,
                stale_warning=STALE_WARNING.format(n=len(stale)) if stale else "", original_voice=voices,
                voice_warning=ORIGINAL_VOICE_WARNING.format(n=voices) if voices else "")


def context(data_dir: Path, params: Params, inputs: Inputs | None = None) -> dict:
    """The whole template context (also handy for tests); ``inputs``: the tables, when not read from ``data_dir``."""
    data_dir = Path(data_dir)
    inp = inputs or load_inputs(data_dir)
    statuses = Counter(a["status"] for a in inp.answers or [])
    return dict(
        banner=banner(inp),
        answers_run=inp.answers is not None, preds_run=inp.preds is not None,
        labels_run=inp.labels is not None, windows_run=inp.windows is not None,
        counts=dict(recordings=len({a["recording_id"] for a in inp.answers or []}),
                    answers=len(inp.answers or []),
                    statuses={STATUS_NAMES.get(k, k): n for k, n in sorted(statuses.items()) if k not in SCORED},
                    scored=sum(statuses[s] for s in SCORED),
                    positives=sum(p["predicted"] is True for p in inp.preds or []),
                    not_assessable=sum(p["predicted"] is None for p in inp.preds or []),
                    predictions=len(inp.preds or [])),
        overview=overview(inp.metrics, load_catalog(), ci=params.evaluate.ci) if inp.metrics else None,
        gait=gait_section(inp),
        recordings=recording_sections(data_dir, inp, params),
        metrics=metric_tables(inp.metrics) if inp.metrics else None,
        faithfulness=faithfulness_chart(inp.faithfulness, params.review.pass_score) if inp.faithfulness else None,
        unscored=UNSCORED, low_confidence=LOW_CONFIDENCE,
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
            "gait": ctx["gait"] is not None,
            "bytes": path.stat().st_size}


STAGE = Stage(
    "report", "cohort", run, "one self-contained HTML report: overview of arms vs baselines, per-recording timelines, gait",
    inputs=(ANSWERS, QUERY_JSON, PREDICTIONS, EVIDENCE, WINDOWS, VIDEOS),
    # sections say "not run yet" without these; the planted-events table only exists for phantom cohorts
    optional=(QUERY_STATE, TRANSCRIPT, LABELS, METRICS, FAITHFULNESS, DIAGNOSIS, BASELINE_PREDICTIONS, GAIT,
              "report.events"), external=("report.events",),
    params=("report", "review", "evaluate.ci"), assets=("tasks/templates/report",))
