"""report: the self-contained HTML report against a cohort with planted events, rendered in headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from tasks import report
from tasks.params import Params, ReportParams
from tasks.answers import RANDOM_BANNER, RANDOM_TAG
from tasks.schema import write_table
from tests import review_fixture as fx

CHROMIUM = Path(os.environ.get("SEMIOFLOW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
YES_RGB = "rgb(192, 57, 43)"  # --yes in report.css
RED_TOLERANCE = 12  # grey levels lost to H.264 + JPEG


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    c = fx.build(tmp_path_factory.mktemp("report"))
    fx.write_metrics(c.data_dir)
    return c


def _params(c: fx.Cohort) -> Params:
    return dataclasses.replace(Params(), report=ReportParams(events=str(c.events_path)))


@pytest.fixture(scope="module")
def html_path(cohort) -> Path:
    return report.build_report(cohort.data_dir, cohort.data_dir / "16_report" / "report.html", _params(cohort))


def _browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs it with apt-get when root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    return sync_api.sync_playwright()


SCREENSHOT_TRIES = 3  # headless Chromium under load sometimes answers "Unable to capture screenshot" once


def _screenshot(page, path: Path, **kw) -> None:
    from playwright.sync_api import Error

    for attempt in range(SCREENSHOT_TRIES):
        try:
            page.screenshot(path=str(path), **kw)
            return
        except Error:
            if attempt == SCREENSHOT_TRIES - 1:
                raise
            page.wait_for_timeout(500)


def test_report_renders_in_chromium_with_planted_events_as_yes_windows(cohort, html_path, tmp_path):
    from PIL import Image

    with _browser() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html_path.as_uri())
            shot = tmp_path / "report.png"
            _screenshot(page, shot, full_page=True)
            assert page.is_visible("#random-banner") and RANDOM_BANNER in page.inner_text("#random-banner")
            assert fx.MODEL in page.inner_text("#models")
            cells = page.evaluate("""() => [...document.querySelectorAll('table.timeline td.cell')].map(td => ({
                rid: td.closest('section').dataset.recording, arm: td.closest('tbody').dataset.arm,
                fid: td.closest('tr').dataset.feature, w: +td.dataset.window, status: td.dataset.status,
                planted: td.dataset.planted === 'true', bg: getComputedStyle(td).backgroundColor,
                visible: td.getBoundingClientRect().width > 0}))""")
            images = page.evaluate("""() => [...document.querySelectorAll('.frames figure')].map(f => ({
                rid: f.closest('section').dataset.recording, w: +f.dataset.window,
                width: f.querySelector('img').naturalWidth}))""")
        finally:
            browser.close()
    assert all(r.startswith(("file:", "data:")) for r in requests), "the report loads nothing from elsewhere"

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[1] == 1280 and img.shape[0] > 900
    yes_pixels = np.all(np.abs(img.astype(int) - (192, 57, 43)) <= 3, axis=-1).sum()
    assert yes_pixels > 100, "yes cells are painted in the screenshot"

    expected_cells = {(rid, arm, fid, wi) for rid, ws in cohort.windows.items()
                      for arm, feats in fx.ARM_FEATURES.items() for fid in feats for wi in range(len(ws))}
    got = {(c["rid"], c["arm"], c["fid"], c["w"]): c for c in cells}
    assert set(got) == expected_cells and all(c["visible"] for c in cells)
    for rid, fid, _, _ in fx.EVENTS:
        for wi in cohort.planted_windows(rid, fid):
            arm = next(a for a, feats in fx.ARM_FEATURES.items() if fid in feats)
            cell = got[(rid, arm, fid, wi)]
            assert cell["planted"], (rid, fid, wi)
            if (rid, fid) in fx.MISSED:
                assert cell["status"] == "no" and cell["bg"] != YES_RGB, "a planted event the model missed is not yes"
            else:
                assert cell["status"] == "yes" and cell["bg"] == YES_RGB, (rid, fid, wi)
    yes_cells = {k for k, c in got.items() if c["status"] == "yes"}
    planted_seen = {(rid, arm, fid, wi) for (rid, arm, fid, wi) in expected_cells
                    if wi in cohort.planted_windows(rid, fid) and (rid, fid) not in fx.MISSED}
    fp_rid, fp_fid, fp_w = fx.FALSE_POSITIVE
    assert yes_cells == planted_seen | {(fp_rid, "raw", fp_fid, fp_w)}
    assert not got[(fp_rid, "raw", fp_fid, fp_w)]["planted"]
    assert got[(fx.UNPARSED[0], "raw", fx.UNPARSED[1], fx.UNPARSED[2])]["status"] == "unparsed"

    yes_windows = {(a["recording_id"], a["window_index"]) for a in cohort.answers if a["status"] == "yes"}
    assert {(i["rid"], i["w"]) for i in images} == yes_windows
    assert all(i["width"] == fx.LOW_SIZE[0] for i in images), "keyframes decode (never upscaled past the video)"


def _keyframes(html: str) -> dict[tuple[str, int], np.ndarray]:
    from PIL import Image

    out = {}
    for sec in re.findall(r'<section class="card recording".*?</section>', html, flags=re.S):
        rid = re.search(r'data-recording="([^"]+)"', sec).group(1)
        for wi, b64 in re.findall(r'<figure data-window="(\d+)"><img[^>]*src="data:image/jpeg;base64,([^"]+)"', sec):
            out[(rid, int(wi))] = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
    return out


def test_keyframes_show_the_middle_of_each_yes_window(cohort, html_path):
    frames = _keyframes(html_path.read_text(encoding="utf-8"))
    assert frames
    for (rid, wi), rgb in frames.items():
        t0, t1 = cohort.windows[rid][wi]
        expect = fx.red_at((t0 + t1) / 2, fx.DURATIONS[rid])
        red = float(np.median(rgb[..., 0]))
        assert abs(red - expect) <= RED_TOLERANCE, (rid, wi, red, expect)


def test_report_holds_justifications_snippets_and_metrics(cohort, html_path):
    html = html_path.read_text(encoding="utf-8")
    for e in (e for e in cohort.answers if e["status"] == "yes"):
        assert fx.justification(e["recording_id"], e["feature_id"], e["window_index"], "yes") in html
    assert "not seen" not in html, "only the positive decisions' justifications are listed"
    assert "help me please" in html and "good morning" in html, "snippets of the yes windows"
    assert "all fine" not in html, "a segment outside every yes window is not shown"
    assert "1.00 [0.80, 1.00]" in html and "0.00 [0.00, 0.40]" in html
    overview = html.split('id="overview"', 1)[1].split("</section>", 1)[0]
    assert dict(re.findall(r'data-feature="(\w+)">.*?data-f1="([\d.]+)"', overview, flags=re.S)) == \
        {"head_turning": "0.0000", "clonic": "1.0000"}, "one overview cell per evaluated arm x feature, its F1"
    assert "<details open" not in html and "<details class=\"just\" open" not in html
    assert "Evaluation has not run yet" not in html
    assert "The expert review has not run yet" in html


def test_report_is_self_contained_and_names_no_source(cohort, html_path):
    html = html_path.read_text(encoding="utf-8")
    assert "<script" not in html and "<link" not in html and "@import" not in html
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(u.startswith(("data:image/jpeg;base64,", "#")) for u in urls)
    for name in fx.SOURCE.values():
        assert name not in html and Path(name).stem not in html
    assert fx.INBOX not in html and str(cohort.data_dir) not in html and "private" not in html


def test_faithfulness_histogram_from_the_review_export(cohort, tmp_path):
    scores = [5, 5, 4, 3, 1, 2, 4, 4]
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    out = cohort.data_dir / "17_review" / "faithfulness.parquet"
    write_table("faithfulness_ratings", [dict(reviewer=f"r{i % 2}", case_id=f"F{i}", recording_id=fx.RA,
                                              feature_id="clonic", arm="raw", model_id=fx.MODEL, outcome="tp",
                                              score=s, rated_at=now) for i, s in enumerate(scores)], out)
    try:
        html = report.build_report(cohort.data_dir, tmp_path / "r.html", _params(cohort)).read_text(encoding="utf-8")
    finally:
        out.unlink()
    bars = dict(re.findall(r'data-score="(\d)" data-count="(\d+)"', html))
    assert {int(k): int(v) for k, v in bars.items()} == {1: 1, 2: 1, 3: 1, 4: 3, 5: 2}
    assert "8 scores from 2 reviewers; 75% score 3 or more" in html


def test_missing_stages_say_not_run_yet(tmp_path):
    empty = report.build_report(tmp_path / "nothing", tmp_path / "empty.html", Params()).read_text(encoding="utf-8")
    assert "Query has not run yet" in empty and "Evaluation has not run yet" in empty
    assert "No recordings yet" in empty and "random-banner" not in empty

    c = fx.build(tmp_path / "c", videos=False)
    (c.data_dir / "09_query" / "query.json").write_text(json.dumps({"models": ["Qwen/Qwen2.5-VL-7B-Instruct"],
                                                                     "random_weights": False, "banner": ""}))
    real = dataclasses.replace(Params(), report=ReportParams(events=""))
    answers = [dict(a, model_id="Qwen/Qwen2.5-VL-7B-Instruct") for a in c.answers]
    write_table("answers", answers, c.data_dir / "09_query" / "answers.parquet")
    html = report.build_report(c.data_dir, tmp_path / "r.html", real).read_text(encoding="utf-8")
    assert 'id="random-banner"' in html, "the predictions shown still come from the random-weight model"
    for table, rel in (("predictions", "10_aggregate/predictions.parquet"), ("evidence", "10_aggregate/evidence.parquet")):
        rows = report.load_inputs(c.data_dir).__getattribute__("preds" if table == "predictions" else "evidence")
        write_table(table, [dict(r, model_id="Qwen/Qwen2.5-VL-7B-Instruct") for r in rows], c.data_dir / rel)
    html = report.build_report(c.data_dir, tmp_path / "r.html", real).read_text(encoding="utf-8")
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in html and 'id="random-banner"' not in html
    assert "Evaluation has not run yet" in html and "downsample has not run" in html
    assert 'data-planted="true"' not in html, "no truth table, no planted marks"


def test_run_stage_and_cli(cohort, tmp_path):
    summary = report.run(cohort.data_dir, tmp_path / "16_report", _params(cohort))
    assert summary["recordings"] == len(fx.DURATIONS) and summary["random_weights"] and summary["metrics"]
    assert (tmp_path / "16_report" / report.OUTPUT).is_file()
    assert set(report.STAGE.inputs).isdisjoint(report.STAGE.optional) and "report" in report.STAGE.sections
    out = tmp_path / "cli.html"
    repo_params = Path(__file__).resolve().parents[1] / "params.yaml"
    assert main(["--data-dir", str(cohort.data_dir), "--params", str(repo_params), "report", "--out", str(out)]) == 0
    assert 'class="timeline"' in out.read_text(encoding="utf-8")


def test_a_kept_original_voice_is_flagged_in_the_report(tmp_path):
    base = dict(status="ok", reason=None, detail=None, width=64, height=48, fps=10.0, duration_s=2.0, n_frames=20,
                decoded_coverage=1.0, face_frames=0, audit_frames=4, audit_residual_frames=0, detector="mediapipe",
                audit_detector="centerface", text_frames=0, text_audit_frames=0,
                text_audit_residual_frames=0, ocr_audit_frames=0, ocr_audit_residual_frames=0)
    data = tmp_path / "data"
    rows = [dict(base, recording_id="R1", audio="anonymized"), dict(base, recording_id="R2", audio="original"),
            dict(base, recording_id="R3", audio="none")]
    write_table("deidentified", rows, data / "02_deidentify" / "deidentified.parquet")
    html = report.build_report(data, tmp_path / "r.html", Params()).read_text(encoding="utf-8")
    assert 'id="voice-banner"' in html and "1 recording(s) keep the patient" in html
    write_table("deidentified", rows[:1] + rows[2:], data / "02_deidentify" / "deidentified.parquet")
    assert 'id="voice-banner"' not in report.build_report(data, tmp_path / "r2.html", Params()).read_text("utf-8")


def test_each_recording_lists_its_detections_in_onset_order_and_its_es_probability(cohort, tmp_path):
    """RB: clonic (5-12 s) is seen in window 0 ([0, 30]: onset estimate 15 s), ictal vocalization (40-50 s)
    first in window 1 ([25, 55], after window 0 said no: [30, 55], estimate 42.5 s).  P(ES) comes from
    evaluate's out-of-fold forest on the model's answers (enhanced arms preferred)."""
    from tasks.schema import write_table

    write_table("diagnosis_predictions", [
        dict(recording_id=fx.RA, source="mllm_raw", p_es=0.4, predicted="NES"),
        dict(recording_id=fx.RA, source="mllm_enhanced", p_es=0.83, predicted="ES"),
        dict(recording_id=fx.RB, source="mllm_raw", p_es=0.2, predicted="NES"),
        dict(recording_id=fx.RB, source="labels", p_es=0.9, predicted="ES")], cohort.data_dir / "13_evaluate" / "diagnosis.parquet")
    try:
        html = report.build_report(cohort.data_dir, tmp_path / "r.html", _params(cohort)).read_text(encoding="utf-8")
    finally:
        (cohort.data_dir / "13_evaluate" / "diagnosis.parquet").unlink()
    rb = html.split(f'id="rec-{fx.RB}"', 1)[1].split("</section>", 1)[0]
    onsets = re.search(r'<p class="onsets">(.*?)</p>', rb).group(1)
    assert onsets.index(f"Clonic ({report.clock(15.0)}") < onsets.index(f"Ictal vocalization ({report.clock(42.5)}")
    assert "P(epileptic seizure) 0.20 (random forest on the raw arms" in rb and "rather non-epileptic" in rb
    ra = html.split(f'id="rec-{fx.RA}"', 1)[1].split("</section>", 1)[0]
    assert "P(epileptic seizure) 0.83 (random forest on the enhanced arms" in ra  # enhanced over raw
    rc = html.split(f'id="rec-{fx.RC}"', 1)[1].split("</section>", 1)[0]
    assert "P(epileptic seizure)" not in rc  # no prediction for it: nothing shown (labels never are)


# ---- the first screen: overview, verdict, readable names, folded justifications ----------------------------

FIRST_SCREEN = {"width": 1280, "height": 800}  # a laptop's viewport
SHOT_ENV = "SEMIOFLOW_REPORT_SHOT"  # where to keep the first screen's screenshot (default: the test's own tmp folder)
TWO_MODELS = ("qwen2_5_vl-tiny" + RANDOM_TAG, "other-vlm" + RANDOM_TAG)  # raw answered by two models
MLLM_WINS, MLLM_TIES = 7, 2  # of the 18 video features: the best MLLM arm beats / ties the best baseline


def _counted(name: str, rows: list[dict]) -> list[dict]:
    """Rows planted here, with the not-assessable count (0)."""
    return [{"n_not_assessable": 0, **r} for r in rows]


def _planted_metrics() -> tuple[list[dict], str]:
    """A full metrics table (20 features, every arm, raw by two models) with a planted verdict, and that verdict.

    Video feature i: the best MLLM arm (its enhanced arm) has F1 0.7 for i < 7, 0.5 (= the best baseline) for the
    next 2, 0.3 after; raw is 0.1 and 0.2 below it, so enhancement improves every video feature; on the two audio
    features raw audio beats both enhanced arms."""
    from tasks.catalog import load_catalog

    rows = []

    def put(arm, fid, f1):
        for metric in ("accuracy", "precision", "recall", "f1"):
            v = f1 if metric == "f1" else 0.5
            rows.append(dict(arm=arm, feature_id=fid, metric=metric, value=v, ci_low=max(0.0, v - 0.15),
                             ci_high=min(1.0, v + 0.1), n=12))

    video = [f for f in load_catalog().features if f.modality == "video"]
    for i, f in enumerate(video):
        top = 0.7 if i < MLLM_WINS else 0.5 if i < MLLM_WINS + MLLM_TIES else 0.3
        put("r2plus1d", f.id, 0.5)
        put("vivit", f.id, 0.4)
        put(f"raw@{TWO_MODELS[0]}", f.id, round(top - 0.1, 2))
        put(f"raw@{TWO_MODELS[1]}", f.id, round(top - 0.2, 2))
        put(f.enhancement, f.id, top)
        put("always_yes", f.id, 0.45)
    for f in load_catalog().features:
        if f.modality == "audio":
            put("audio_raw", f.id, 0.6)
            put("audio_denoised", f.id, 0.5)
            put("audio_transcript", f.id, 0.4)
            put("always_yes", f.id, 0.45)
    return rows, f"best MLLM arm beats best baseline on {MLLM_WINS}/{len(video)} features; enhancement improves {len(video)}/20"


def _gait(data: Path, *, random_vlm: bool) -> None:
    results = [dict(model=m, metric=k, gait_class=None, value=v, n=9)
               for m, acc, f1 in (("biogait", 0.667, 0.55), ("biogait_no_ted", 0.444, 0.31), ("zero_shot", 0.222, 0.1))
               for k, v in (("accuracy", acc), ("macro_f1", f1))]
    write_table("gait_results", results, data / "15_gait" / "results.parquet")
    (data / "15_gait" / "gait.json").write_text(json.dumps({
        "clips": 40, "train": 31, "test": 9, "test_subjects": 2, "random_weight_vlm": random_vlm,
        "random_init_baselines": 1, "rationales": 9, "rationales_verified": 3,
        "accuracy": {"biogait": 0.667}, "macro_f1": {"biogait": 0.55}}))


@pytest.fixture(scope="module")
def full_report(cohort, tmp_path_factory) -> tuple[Path, str]:
    """The cohort with a full metrics table (planted verdict) and gait results: the report and its verdict."""
    data = tmp_path_factory.mktemp("full") / "data"
    shutil.copytree(cohort.data_dir, data)
    rows, line = _planted_metrics()
    write_table("metrics", _counted("metrics", rows), data / "13_evaluate" / "metrics.parquet")
    _gait(data, random_vlm=True)
    return report.build_report(data, data / "16_report" / "report.html", _params(cohort)), line


ARM_IDS = ("r2plus1d", "face_crop", "pose_overlay", "audio_raw", "audio_denoised", "audio_transcript", "always_yes")


def test_the_first_screen_is_the_overview_with_the_verdict_and_justifications_fold(full_report, tmp_path):
    """Headless Chromium at 1280 x 800: the whole overview (heatmap of every arm, the verdict) lies within the
    first viewport, columns carry readable names, no heading shows an arm id, justifications are closed."""
    from PIL import Image
    shot = Path(os.environ.get(SHOT_ENV) or tmp_path / "first-screen.png")

    html_file, line = full_report
    with _browser() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=FIRST_SCREEN)
            page.goto(html_file.as_uri())
            _screenshot(page, shot)  # the viewport only: what a reader sees first
            box = page.locator("#overview").bounding_box()
            verdict_box = page.locator("#verdict").bounding_box()
            verdict = page.inner_text("#verdict")
            banner_box = page.locator("#random-banner").bounding_box()
            heads = page.evaluate("""() => [...document.querySelectorAll('#overview svg text.head')]
                .map(t => [...t.querySelectorAll('tspan')].map(s => s.textContent).join(' '))""")
            cells = page.evaluate("() => document.querySelectorAll('#overview svg g.cell').length")
            headings = page.evaluate("""() => [...document.querySelectorAll(
                'h1, h2, h3, h4, summary, caption, tr.arm-head th, svg text.head')].map(e => e.textContent)""")
            details = page.evaluate("""() => [...document.querySelectorAll('details.just')].map(d => ({
                open: d.open, shown: [...d.querySelectorAll('li')].some(li => li.checkVisibility())}))""")
            gait = page.inner_text("#gait-results")
            height = page.evaluate("document.documentElement.scrollHeight")
        finally:
            browser.close()
    print(f"report page height at 1280 px: {height} px")  # the note's figure (pytest -s)
    assert box["y"] >= 0 and box["y"] + box["height"] <= FIRST_SCREEN["height"], box
    assert verdict_box["y"] + verdict_box["height"] <= FIRST_SCREEN["height"] and line in verdict
    assert banner_box["y"] + banner_box["height"] <= FIRST_SCREEN["height"], "the random-weights banner is on screen"
    video_cells = 18 * 6  # r2plus1d, vivit, raw x 2 models, the enhanced arm, always_yes
    assert cells == video_cells + 2 * 4, "every planted arm x feature has its cell"
    for name in ("R(2+1)D", "ViViT", "MLLM raw", "MLLM + face crop", "MLLM + pose overlay", "MLLM raw audio",
                 "MLLM + transcript", "Always yes"):
        assert name in " | ".join(heads), name
    assert any("other-vlm" in h for h in heads), "raw's two models each have a column"
    assert not [h for h in headings if any(a in h for a in ARM_IDS)], "readable names, never arm ids, head things"
    assert details and not any(d["open"] or d["shown"] for d in details), "justifications are folded"
    assert "BioGait without TED" in gait and "0.67" in gait and "0.55" in gait and "random-weight" in gait
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (FIRST_SCREEN["height"], FIRST_SCREEN["width"])
    best = np.all(np.abs(img.astype(int) - report.fill_rgb(0.7)) <= 2, axis=-1).sum()
    assert best > 7 * 50 * 12, "the 7 winning cells (F1 0.7) are painted on the first screen"


def test_the_overview_verdict_is_the_one_evaluate_writes(cohort, tmp_path):
    """evaluate on the cohort with two baselines; the report's verdict line is tables.md's, word for word."""
    from tasks import evaluate

    data = tmp_path / "data"
    shutil.copytree(cohort.data_dir, data, ignore=shutil.ignore_patterns("*.mp4"))
    labels = {(r["recording_id"], r["feature_id"]) for r in report.load_inputs(data).labels}
    # r2plus1d always says no, vivit always yes.  Raw (the MLLM) is right on clonic (F1 1 vs vivit's 0.8), misses
    # the head turning vivit's yes catches (0 vs 0.5), and on oral automatisms (never present) all score 0.
    base = [dict(recording_id=rid, feature_id=fid, arm=arm, model_id=f"{arm}-tiny", rule="threshold",
                 predicted=arm == "vivit", score=0.5, n_windows=1, n_yes=0, evidence_windows=[])
            for (rid, fid) in labels for arm in ("r2plus1d", "vivit")]
    write_table("predictions", _counted("predictions", base), data / "12_train" / "predictions.parquet")
    params = dataclasses.replace(_params(cohort), evaluate=dataclasses.replace(Params().evaluate, bootstrap=50))
    evaluate.run(data, data / "13_evaluate", params)
    tables = (data / "13_evaluate" / "tables.md").read_text(encoding="utf-8")
    written = re.search(r"\*\*(best MLLM arm beats.*?)\*\*", tables).group(1)
    ctx = report.context(data, params)
    assert ctx["overview"]["line"] == written
    summary = json.loads((data / "13_evaluate" / "metrics.json").read_text())["summary"]["mllm_vs_baseline"]
    assert {k: ctx["overview"]["mllm_vs_baseline"][k] for k in ("wins", "losses", "ties")} == \
        {k: summary[k] for k in ("wins", "losses", "ties")} == {"wins": 1, "losses": 1, "ties": 1}
    assert written.startswith("best MLLM arm beats best baseline on 1/3 features")


def test_the_random_banner_comes_from_the_tables_even_when_query_json_says_otherwise(tmp_path):
    """A failed query run rewrote query.json (no models, random false): the answers' and the baselines' ids still
    carry the random-weights mark, so the banner stays."""
    c = fx.build(tmp_path / "c", videos=False)
    (c.data_dir / "09_query" / "query.json").write_text(json.dumps({"models": [], "random_weights": False}))
    params = dataclasses.replace(Params(), report=ReportParams(events=""))
    html = report.build_report(c.data_dir, tmp_path / "r.html", params).read_text(encoding="utf-8")
    assert 'id="random-banner"' in html and fx.MODEL in html.split('id="random-banner"', 1)[1].split("</p>", 1)[0]

    real = [dict(a, model_id="Qwen/Qwen2.5-VL-7B-Instruct") for a in c.answers]
    write_table("answers", real, c.data_dir / "09_query" / "answers.parquet")
    write_table("predictions", [dict(p, model_id="Qwen/Qwen2.5-VL-7B-Instruct") for p in c.predictions],
                c.data_dir / "10_aggregate" / "predictions.parquet")
    write_table("evidence", [], c.data_dir / "10_aggregate" / "evidence.parquet")
    assert 'id="random-banner"' not in report.build_report(c.data_dir, tmp_path / "r.html", params).read_text("utf-8")
    write_table("predictions", _counted("predictions", [dict(
        recording_id=fx.RA, feature_id="clonic", arm="vivit", model_id="vivit-tiny" + RANDOM_TAG + "-frozen",
        rule="threshold", predicted=True, score=0.9, n_windows=1, n_yes=1, evidence_windows=[])]),
        c.data_dir / "12_train" / "predictions.parquet")
    html = report.build_report(c.data_dir, tmp_path / "r.html", params).read_text(encoding="utf-8")
    assert 'id="random-banner"' in html, "a random-weight baseline is a random-weight model shown"


def test_answers_kept_from_an_earlier_run_are_named_as_stale(tmp_path):
    """query's state.json lists the recordings whose latest run failed (their last good answers kept): the
    report names them in a notice; with none stale there is no notice."""
    c = fx.build(tmp_path / "c", videos=False)
    params = dataclasses.replace(Params(), report=ReportParams(events=""))
    state = c.data_dir / "09_query" / "state.json"
    state.write_text(json.dumps({"recordings": 2, "stale": [], "missing": []}))
    assert 'id="stale-banner"' not in report.build_report(c.data_dir, tmp_path / "r.html", params).read_text("utf-8")
    state.write_text(json.dumps({"recordings": 2, "stale": [fx.RA], "missing": []}))
    html = report.build_report(c.data_dir, tmp_path / "r.html", params).read_text(encoding="utf-8")
    notice = html.split('id="stale-banner"', 1)[1].split("</p>", 1)[0]
    assert fx.RA in notice and "1 recording(s)" in notice


def test_not_assessable_windows_and_low_confidence_yes_answers(cohort):
    """A pose-overlay arm without pose (every window not_assessable, the decision null) shows as not assessable,
    never as no; a yes whose P(yes) is 0.46 is listed under the positive decisions as low-confidence."""
    inp = report.load_inputs(cohort.data_dir)
    rb_clonic = sorted(w for w in cohort.planted_windows(fx.RB, "clonic"))
    low = dict(recording_id=fx.RB, feature_id="clonic", arm="raw", model_id=fx.MODEL)
    answers = [dict(a, yes_prob=0.46) if {k: a[k] for k in low} == low and a["status"] == "yes" else a
               for a in inp.answers]
    answers += [dict(a, arm="pose_overlay", status=report.NOT_ASSESSABLE, present=None, yes_prob=None,
                     justification=None) for a in inp.answers
                if a["recording_id"] == fx.RA and a["feature_id"] == "clonic" and a["arm"] == "raw"]
    evidence = [dict(e, yes_prob=0.46) if {k: e[k] for k in low} == low else e for e in inp.evidence]
    preds = inp.preds + [dict(recording_id=fx.RA, feature_id="clonic", arm="pose_overlay", model_id=fx.MODEL,
                              rule="any_yes", predicted=None, score=0.0, n_windows=0, n_yes=0, evidence_windows=[],
                              n_not_assessable=len(cohort.windows[fx.RA]))]
    inp = dataclasses.replace(inp, answers=answers, evidence=evidence, preds=preds)
    html = report.render(report.context(cohort.data_dir, _params(cohort), inp))
    ra = html.split(f'id="rec-{fx.RA}"', 1)[1].split("</section>", 1)[0]
    pose = ra.split('data-arm="pose_overlay"', 1)[1].split("</tbody>", 1)[0]
    assert "MLLM + pose overlay" in pose and 'badge na">n/a' in pose
    na = re.findall(r'<td class="cell ([^"]*)" data-window="\d+" data-status="([^"]+)"', pose)
    assert len(na) == len(cohort.windows[fx.RA]) and set(na) == {("na planted", report.NOT_ASSESSABLE),
                                                                  ("na", report.NOT_ASSESSABLE)}
    assert "not assessable" in html.split('<p class="legend">', 1)[1].split('</p>', 1)[0] and "1 not assessable" in html
    rb = html.split(f'id="rec-{fx.RB}"', 1)[1].split("</section>", 1)[0]
    cells = re.findall(r'data-arm="raw".*?</tbody>', rb, flags=re.S)[0]
    clonic = cells.split('data-feature="clonic"', 1)[1].split("</tr>", 1)[0]
    assert clonic.count('class="cell yes low') == len(rb_clonic) and "○" in clonic and "●" not in clonic
    just = rb.split('<details class="just"', 1)[1].split("</details>", 1)[0]
    item = just.split('data-feature="clonic"', 1)[1].split("</ul>", 1)[0]
    assert "P(yes) 0.46" in item and item.count("low confidence") == 1 + len(rb_clonic)
    assert "1 low-confidence" in just and "P(yes) 0.90" in just  # the confident one stays a plain positive


def test_gait_section_names_the_variants_and_says_when_it_has_not_run(tmp_path):
    data = tmp_path / "data"
    html = report.build_report(data, tmp_path / "r.html", Params()).read_text(encoding="utf-8")
    assert "The gait stage has not run yet" in html and "random-banner" not in html
    _gait(data, random_vlm=False)
    html = report.build_report(data, tmp_path / "r.html", Params()).read_text(encoding="utf-8")
    gait = html.split('id="gait-results"', 1)[1].split("</div>", 1)[0]
    rows = re.findall(r'<tr data-model="(\w+)"><td>([^<]+)</td><td class="num">([\d.]+)</td><td class="num">([\d.]+)', gait)
    assert rows == [("biogait", "BioGait", "0.67", "0.55"), ("biogait_no_ted", "BioGait without TED", "0.44", "0.31"),
                    ("zero_shot", "Zero-shot VLM", "0.22", "0.10")]
    assert "random initialisation" in gait and "random-weight smoke model" not in gait
    assert "9 rationales, 3 with every stated number" in gait and 'id="random-banner"' not in html
    _gait(data, random_vlm=True)
    html = report.build_report(data, tmp_path / "r.html", Params()).read_text(encoding="utf-8")
    assert 'id="random-banner"' in html and "The gait VLM is a random-weight smoke model" in html
