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
from tasks.answers import RANDOM_BANNER
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
            page.screenshot(path=str(shot), full_page=True)
            assert page.is_visible("#random-banner") and RANDOM_BANNER in page.inner_text("#random-banner")
            assert fx.MODEL in page.inner_text("#models")
            cells = page.evaluate("""() => [...document.querySelectorAll('table.timeline td.cell')].map(td => ({
                rid: td.closest('section').dataset.recording, arm: td.closest('table').dataset.arm,
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
    assert html.count('<circle class="dot"') == 2
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
