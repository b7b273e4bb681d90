"""review: case sampling, storage on SQLite and a real PostgreSQL, statistics, the web app's security, and an
end-to-end session in headless Chromium."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from flows.cli import main
from tasks import review
from tasks.params import Params, ReviewParams
from tasks.schema import read_table, write_table
from tests import review_fixture as fx
from tests.pg_server import pg_database as _pg_database

CHROMIUM = Path(os.environ.get("SEMIOFLOW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PASSWORD = {"alice": "alice-secret-1", "bob": "bob-secret-22"}
PARAMS = Params()
SEED = PARAMS.base.seed
START_TIMEOUT_S = 60


# ---- fixtures -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    c = fx.build(tmp_path_factory.mktemp("review"))
    fx.write_rationales(c.data_dir)
    return c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.sqlite'}"
    return _pg_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def engine(db_url, cohort):
    eng = review.open_db(db_url)
    review.prepare(eng, cohort.data_dir, PARAMS)
    yield eng
    eng.dispose()


def _reviewers(engine) -> dict[str, int]:
    return {n: review.add_reviewer(engine, n, p) for n, p in PASSWORD.items()}


# ---- case sampling --------------------------------------------------------------------
def _truth(c: fx.Cohort) -> dict[tuple[str, str], bool]:
    return {(rid, fid): any(r == rid and f == fid for r, f, _, _ in fx.EVENTS)
            for rid in fx.DURATIONS for feats in fx.ARM_FEATURES.values() for fid in feats}


def test_study1_takes_every_true_positive_and_as_many_true_negatives(cohort):
    cases = review.faithfulness_cases(cohort.data_dir, PARAMS)
    truth = _truth(cohort)
    preds = {(p["recording_id"], p["feature_id"]): p["predicted"] for p in cohort.predictions}
    tps = {k for k, v in preds.items() if v and truth[k]}
    tns = {k for k, v in preds.items() if not v and not truth[k]}
    assert tps == {(fx.RA, "clonic"), (fx.RB, "clonic"), (fx.RB, "ictal_vocalization")}
    got = {(c["recording_id"], c["feature_id"]): c for c in cases}
    assert {k for k, c in got.items() if c["outcome"] == "tp"} == tps
    for fid in ("clonic", "ictal_vocalization", "head_turning", "oral_automatisms"):
        n_tp = sum(k[1] == fid for k in tps)
        picked_tn = {k for k, c in got.items() if k[1] == fid and c["outcome"] == "tn"}
        assert picked_tn <= tns and len(picked_tn) == min(n_tp, sum(k[1] == fid for k in tns)), fid
    ra = got[(fx.RA, "clonic")]
    assert [j["window_index"] for j in ra["justifications"]] == sorted(cohort.planted_windows(fx.RA, "clonic"))
    assert ra["justifications"][0]["text"] == fx.justification(fx.RA, "clonic", 0, "yes")
    tn = next(c for c in cases if c["outcome"] == "tn")
    assert [j["window_index"] for j in tn["justifications"]] == list(range(len(cohort.windows[tn["recording_id"]])))
    assert all(j["text"].endswith(f"window {j['window_index']}") and "not seen" in j["text"]
               for j in tn["justifications"])
    assert all(c["media"] == f"02_deidentify/videos/{c['recording_id']}.mp4" for c in cases)
    assert review.faithfulness_cases(cohort.data_dir, PARAMS) == cases, "seeded"
    only_audio = dataclasses.replace(PARAMS, review=ReviewParams(faithfulness_arms=("audio_transcript",)))
    assert {c["arm"] for c in review.faithfulness_cases(cohort.data_dir, only_audio)} == {"audio_transcript"}


def _sampling_dir(tmp: Path, n_tp: int, n_tn: int) -> Path:
    """One feature on n_tp + n_tn recordings, every one predicted correctly; videos exist."""
    rids = [f"R{i:010x}" for i in range(n_tp + n_tn)]
    write_table("recording_labels", [dict(recording_id=r, patient_id="P0", feature_id="tonic", label=i < n_tp)
                                     for i, r in enumerate(rids)], tmp / review.LABELS)
    write_table("predictions", [dict(recording_id=r, feature_id="tonic", arm="raw", model_id="m", rule="any_yes",
                                     predicted=i < n_tp, score=float(i < n_tp), n_windows=1, n_yes=int(i < n_tp),
                                     evidence_windows=[0] if i < n_tp else [], n_not_assessable=0)
                                for i, r in enumerate(rids)],
                tmp / review.PREDICTIONS)
    for r in rids:
        (tmp / review.VIDEO_DIR).mkdir(parents=True, exist_ok=True)
        (tmp / review.VIDEO_DIR / f"{r}.mp4").write_bytes(b"")
    return tmp


def test_study1_true_negatives_are_a_seeded_random_draw(tmp_path):
    data = _sampling_dir(tmp_path, n_tp=4, n_tn=20)
    draws, orders = [], []
    for seed in range(6):
        p = dataclasses.replace(PARAMS, base=dataclasses.replace(PARAMS.base, seed=seed))
        cases = review.faithfulness_cases(data, p)
        assert sum(c["outcome"] == "tp" for c in cases) == 4 and sum(c["outcome"] == "tn" for c in cases) == 4
        draws.append(frozenset(c["recording_id"] for c in cases if c["outcome"] == "tn"))
        orders.append(tuple(c["outcome"] for c in cases))
    assert len(set(draws)) > 3, "different seeds draw different true negatives"
    assert len(set(orders)) > 1, "cases are shown in a shuffled order, not all true positives first"
    assert review.faithfulness_cases(data, dataclasses.replace(PARAMS, base=dataclasses.replace(PARAMS.base, seed=0))) \
        == review.faithfulness_cases(data, dataclasses.replace(PARAMS, base=dataclasses.replace(PARAMS.base, seed=0)))


def test_study1_never_samples_a_not_assessable_decision_and_shows_windows_without_media(tmp_path):
    """Pose failed on eight recordings without the feature (every window not assessable): none of them is a
    true negative to sample, nor are four whose every reply was no answer; the one real true negative is.  A
    true positive's window without media is listed as not assessable, and its page carries the smoke model's
    banner (from the model id)."""
    from tasks.aggregate import aggregate
    from tasks.answers import RANDOM_TAG
    from tasks.params import AggregateParams

    model = "openai:tiny" + RANDOM_TAG
    tp, blind, tn, mute = ([f"R{k}{i:09x}" for i in range(n)] for k, n in (("a", 3), ("b", 8), ("c", 1), ("d", 4)))
    statuses = {**{r: ["not_assessable", "yes"] for r in tp}, **{r: ["not_assessable"] * 2 for r in blind},
                **{r: ["no", "no"] for r in tn}, **{r: ["unparsed"] * 2 for r in mute}}  # mute: blank replies
    answers = [dict(recording_id=r, window_index=wi, feature_id="tonic", arm="pose_overlay", model_id=model,
                    backend="openai", prompt_version="v", status=st, present={"yes": True, "no": False}.get(st),
                    yes_prob=None, justification="no media: pose_overlay: no_pose" if st == "not_assessable"
                    else f"{st} in {r}", raw_text=None, finish_reason=None, cache_key="")
               for r, ss in statuses.items() for wi, st in enumerate(ss)]
    preds, evidence, _ = aggregate(answers, AggregateParams())
    data = tmp_path / "data"
    write_table("answers", answers, data / review.ANSWERS)
    write_table("predictions", preds, data / review.PREDICTIONS)
    write_table("evidence", evidence, data / review.EVIDENCE)
    write_table("recording_labels", [dict(recording_id=r, patient_id="P0", feature_id="tonic", label=r in tp)
                                     for r in statuses], data / review.LABELS)
    (data / review.VIDEO_DIR).mkdir(parents=True)
    for r in statuses:
        (data / review.VIDEO_DIR / f"{r}.mp4").write_bytes(b"")
    cases = review.faithfulness_cases(data, PARAMS)
    assert sorted((c["outcome"], c["recording_id"]) for c in cases) == [("tn", tn[0])] + [("tp", r) for r in tp]
    case = next(c for c in cases if c["recording_id"] == tp[0])
    assert [(j["window_index"], j["not_assessable"], j["text"]) for j in case["justifications"]] == [
        (0, True, ""), (1, False, f"yes in {tp[0]}")]
    eng = review.open_db(f"sqlite:///{tmp_path / 'app.sqlite'}")
    try:
        review.prepare(eng, data, PARAMS)
        _reviewers(eng)
        client = _client(eng, data)
        _login(client, "alice")
        html = client.get(f"/faithfulness/{case['case_id']}").text
        assert "not assessable (no media in this window" in html and "random-weight smoke model" in html
    finally:
        eng.dispose()


def test_study2_leaves_out_blank_rationales_and_its_pages_carry_the_banner(cohort, tmp_path):
    """Gait rationales of 32 newlines each were three empty boxes with no banner: a blank rationale is no
    rationale (left out; a case of only blank ones is no case), and the smoke model's tag in the variant names
    puts the banner on the page."""
    from tasks.answers import RANDOM_TAG

    media = f"02_deidentify/videos/{fx.RA}.mp4"
    rows = [dict(case_id="G1", variant="biogait" + RANDOM_TAG, rationale="Short steps, wide base.", media=media,
                 context=None),
            dict(case_id="G1", variant="zero_shot" + RANDOM_TAG, rationale="\n" * 32, media=media, context=None),
            dict(case_id="G1", variant="biogait_no_bio" + RANDOM_TAG, rationale=" \t ", media=media, context=None),
            dict(case_id="G2", variant="biogait" + RANDOM_TAG, rationale="\n" * 32, media=media, context=None)]
    write_table("rationales", rows, tmp_path / "t" / "rationales.parquet")
    rel = os.path.relpath(tmp_path / "t" / "rationales.parquet", cohort.data_dir)
    params = dataclasses.replace(PARAMS, review=ReviewParams(rationales=(rel,)))
    cases = review.comparison_cases(cohort.data_dir, params)
    assert [(c["case_id"], list(c["variants"]), c["random_weights"]) for c in cases] == [
        ("G1", ["biogait" + RANDOM_TAG], True)]
    eng = review.open_db(f"sqlite:///{tmp_path / 'app.sqlite'}")
    try:
        review.prepare(eng, cohort.data_dir, params)
        _reviewers(eng)
        client = _client(eng, cohort.data_dir, params)
        _login(client, "alice")
        html = client.get("/comparison/G1").text
        assert "random-weight smoke model" in html and html.count("<blockquote>") == 1
        assert "Short steps, wide base." in html
        assert client.get("/comparison/G2").status_code == 404
        assert "random-weight smoke model" in client.get("/").text
    finally:
        eng.dispose()


def test_a_hard_link_to_a_raw_file_in_a_media_folder_is_not_served(cohort):
    """A hard link passes every path check (it is a regular file inside the layer): only bytes whose hash the
    stage's marker recorded are served."""
    videos = cohort.data_dir / "02_deidentify" / "videos"
    raw = cohort.data_dir.parent / "raw_inbox"
    raw.mkdir(exist_ok=True)
    fx._video(raw / "patient.mp4", 2.0, fx.FULL_FPS, fx.FULL_SIZE, audio=True)  # not what deidentify wrote
    planted = videos / "R9999999999.mp4"
    os.link(raw / "patient.mp4", planted)
    real = videos / f"{fx.RC}.mp4"
    kept = real.read_bytes()
    try:
        with pytest.raises(review.ReviewError, match="not one the pipeline wrote"):
            review.deidentified_media(cohort.data_dir, "02_deidentify/videos/R9999999999.mp4")
        real.unlink()
        os.link(raw / "patient.mp4", real)  # in place of a real output, under its name
        with pytest.raises(review.ReviewError, match="not one the pipeline wrote"):
            review.deidentified_media(cohort.data_dir, f"02_deidentify/videos/{fx.RC}.mp4")
    finally:
        planted.unlink()
        real.unlink()
        real.write_bytes(kept)
    assert review.deidentified_media(cohort.data_dir, f"02_deidentify/videos/{fx.RC}.mp4") == real.resolve()


def test_study2_cases_refuse_more_than_three_variants_and_undeidentified_media(cohort, tmp_path):
    cases = review.comparison_cases(cohort.data_dir, PARAMS)
    assert [c["case_id"] for c in cases] == ["G1", "G2"]
    assert sorted(cases[0]["variants"]) == sorted(fx.VARIANTS) and len(cases[1]["variants"]) == 2
    raw = cohort.data_dir / "00_synth" / "seizure" / "videos"
    raw.mkdir(parents=True, exist_ok=True)
    shutil.copy(cohort.data_dir / "02_deidentify" / "videos" / f"{fx.RA}.mp4", raw / "patient.mp4")
    link = cohort.data_dir / "02_deidentify" / "videos" / "escape.mp4"
    link.symlink_to(raw / "patient.mp4")
    try:
        for bad in ("00_synth/seizure/videos/patient.mp4",
                    "02_deidentify/videos/../../00_synth/seizure/videos/patient.mp4", str(raw / "patient.mp4"),
                    "02_deidentify/videos/escape.mp4", "02_deidentify/boxes/x.parquet",
                    "02_deidentify/videos/missing.mp4", ""):
            with pytest.raises(review.ReviewError):
                review.deidentified_media(cohort.data_dir, bad)
        assert review.deidentified_media(cohort.data_dir, f"03_downsample/videos/{fx.RB}.mp4").is_file()
        tables = tmp_path / "t"
        (tmp_path / "d").mkdir()
        ok = dict(case_id="X1", variant="a", rationale="r", media=f"02_deidentify/videos/{fx.RA}.mp4", context=None)
        for rows, msg in (([dict(ok, variant=v) for v in "abcd"], "at most 3"),
                          ([ok, dict(ok, variant="b", media=f"02_deidentify/videos/{fx.RB}.mp4")], "different media"),
                          ([dict(ok, media="00_synth/seizure/videos/patient.mp4")], "de-identified"),
                          ([dict(ok, case_id="../x")], "case id")):
            write_table("rationales", rows, tables / "rationales.parquet")
            p = dataclasses.replace(PARAMS, review=ReviewParams(rationales=("../t/rationales.parquet",)))
            with pytest.raises(review.ReviewError, match=msg):
                review.comparison_cases(tmp_path / "d", p)
    finally:
        link.unlink()
        shutil.rmtree(cohort.data_dir / "00_synth")


def test_slots_are_shuffled_per_reviewer_and_stable():
    case = {"case_id": "G1", "variants": {v: "" for v in fx.VARIANTS}}
    seen = {v: set() for v in fx.VARIANTS}
    for rid in range(1, 40):
        order = review.slots(case, rid, SEED)
        assert order == review.slots(case, rid, SEED) and [s for s, _ in order] == ["A", "B", "C"]
        for s, v in order:
            seen[v].add(s)
    assert all(s == {"A", "B", "C"} for s in seen.values()), "every variant lands in every slot for some reviewer"


# ---- storage: SQLite and PostgreSQL -----------------------------------------------------
def test_ratings_are_upserted_and_private_to_each_reviewer(engine):
    ids = _reviewers(engine)
    a, b = ids["alice"], ids["bob"]
    f_cases = [c["case_id"] for c in review.case_list(engine, review.STUDY_FAITHFULNESS)]
    assert len(f_cases) == 5 and review.prepare(engine, Path("/nonexistent"), PARAMS)[review.STUDY_FAITHFULNESS] == 5
    review.save_faithfulness(engine, a, f_cases[0], 2)
    review.save_faithfulness(engine, a, f_cases[0], "4")  # changed her mind: replaced, not added
    review.save_faithfulness(engine, b, f_cases[1], 1)
    assert review.faithfulness_scores(engine, a) == {f_cases[0]: 4}
    assert review.faithfulness_scores(engine, b) == {f_cases[1]: 1}
    for bad in (0, 6, "4.5", "x", None):
        with pytest.raises(review.ReviewError):
            review.save_faithfulness(engine, a, f_cases[0], bad)
    with pytest.raises(review.ReviewError):
        review.save_faithfulness(engine, a, "nope", 3)

    x, y, z = fx.VARIANTS
    review.save_likert(engine, a, "G1", x, "explainability", 5)
    review.save_likert(engine, a, "G1", x, "explainability", 3)
    assert review.save_choice(engine, a, "G1", "best", y) == dict(best=y, second=None, comment="")
    assert review.save_choice(engine, a, "G1", "second", y) == dict(best=None, second=y, comment=""), \
        "best and second best are different variants"
    review.save_choice(engine, a, "G1", "comment", "  short steps ")
    state = review.comparison_state(engine, a, "G1")
    assert state == {"scores": {(x, "explainability"): 3}, "choices": dict(best=None, second=y, comment="short steps")}
    assert review.comparison_state(engine, b, "G1") == {"scores": {}, "choices": dict(best=None, second=None,
                                                                                      comment="")}
    with pytest.raises(review.ReviewError):
        review.save_likert(engine, a, "G2", z, "explainability", 3)  # z is not in G2
    with pytest.raises(review.ReviewError):
        review.save_likert(engine, a, "G1", x, "beauty", 3)
    with pytest.raises(review.ReviewError):
        review.save_choice(engine, a, "G1", "best", "someone-else")

    for v in (x, y):  # finish G2 for bob: every scale of both variants and a best choice
        for s in review.SCALES:
            review.save_likert(engine, b, "G2", v, s, 4)
    assert review.comparison_done(engine, b) == set()
    review.save_choice(engine, b, "G2", "best", x)
    assert review.comparison_done(engine, b) == {"G2"} and review.comparison_done(engine, a) == set()

    with pytest.raises(review.ReviewError, match="exists"):
        review.add_reviewer(engine, "alice", "another-password")
    assert review.authenticate(engine, "alice", PASSWORD["alice"]) == a
    assert review.authenticate(engine, "alice", PASSWORD["bob"]) is None
    assert review.authenticate(engine, "mallory", PASSWORD["alice"]) is None
    review.add_reviewer(engine, "alice", "new-password-3", replace=True)
    assert review.authenticate(engine, "alice", "new-password-3") == a
    with engine.begin() as conn:
        stored = conn.execute(sa.select(review.REVIEWERS.c.password_hash)).scalars().all()
    assert all(h.startswith("$argon2") for h in stored) and not any(p in "".join(stored) for p in PASSWORD.values())


def test_stats_and_parquet_export(engine, tmp_path):
    ids = _reviewers(engine)
    cases = review.case_list(engine, review.STUDY_FAITHFULNESS)
    planted = {"alice": [5, 4, 2, 3, 1], "bob": [3, 3, 5, 1, 2]}
    for name, scores in planted.items():
        for c, s in zip(cases, scores):
            review.save_faithfulness(engine, ids[name], c["case_id"], s)
    x, y, z = fx.VARIANTS
    for scale, (sx, sy, sz) in zip(review.SCALES, [(5, 2, 1), (4, 2, 2), (5, 3, 1), (4, 1, 3)]):
        for v, s in ((x, sx), (y, sy), (z, sz)):
            review.save_likert(engine, ids["alice"], "G1", v, scale, s)
    review.save_choice(engine, ids["alice"], "G1", "best", x)
    review.save_choice(engine, ids["alice"], "G1", "second", y)
    review.save_choice(engine, ids["bob"], "G1", "best", z)
    out = review.export(engine, tmp_path / "17_review", PARAMS)
    assert (out["reviewers"], out["faithfulness_ratings"], out["comparison_ratings"], out["choices"]) == (2, 10, 12, 2)

    faith = read_table("faithfulness_ratings", tmp_path / "17_review" / "faithfulness.parquet").to_pylist()
    assert sorted((r["reviewer"], r["case_id"], r["score"]) for r in faith) == sorted(
        (n, c["case_id"], s) for n, ss in planted.items() for c, s in zip(cases, ss))
    assert all(r["rated_at"].tzinfo is not None for r in faith)
    stats = {(r["metric"], r["key"], r["scale"]): r for r in
             read_table("review_stats", tmp_path / "17_review" / "review_stats.parquet").to_pylist()}
    all_scores = planted["alice"] + planted["bob"]
    assert stats[("share_pass", "all", None)]["value"] == pytest.approx(sum(s >= 3 for s in all_scores) / 10)
    assert stats[("median", "all", None)]["value"] == 3.0
    for fid in {c["feature_id"] for c in cases}:
        s = [sc for ss in planted.values() for c, sc in zip(cases, ss) if c["feature_id"] == fid]
        assert stats[("median", fid, None)]["value"] == pytest.approx(float(np.median(s)))
        assert stats[("share_pass", fid, None)]["n"] == len(s)
    assert stats[("mean_likert", x, "evidence_grounding")]["value"] == 5.0
    assert stats[("mean_likert", x, "overall")]["value"] == pytest.approx(4.5)
    assert stats[("mean_likert", z, "overall")]["value"] == pytest.approx(1.75)
    assert stats[("best_rate", x, None)]["value"] == 0.5 and stats[("best_rate", y, None)]["value"] == 0.0
    comp = pq.read_table(tmp_path / "17_review" / "comparison.parquet").to_pylist()
    letters = dict((v, s) for s, v in review.slots({"case_id": "G1", "variants": dict.fromkeys(fx.VARIANTS)},
                                                    ids["alice"], SEED))
    assert {(r["variant"], r["slot"]) for r in comp} == set(letters.items())
    doc = json.loads((tmp_path / "17_review" / "review_stats.json").read_text())
    assert doc["summary"]["cases"] == {"faithfulness": 5, "comparison": 2}


# ---- statistics (pure) --------------------------------------------------------------------
def test_exact_tests_match_scipy_and_brute_force():
    scipy_stats = pytest.importorskip("scipy.stats")
    for n, p in ((10, 0.5), (30, 1 / 3), (7, 0.2), (50, 0.5)):
        for k in range(n + 1):
            expect = scipy_stats.binomtest(k, n, p).pvalue
            assert review.binomial_test(k, n, p) == pytest.approx(expect, rel=1e-9), (k, n, p)
    probs = [1 / 2, 1 / 3, 1 / 3, 1 / 2, 1 / 3, 1 / 2]
    pmf = [0.0] * (len(probs) + 1)
    for outcome in itertools.product((0, 1), repeat=len(probs)):
        pr = 1.0
        for o, q in zip(outcome, probs):
            pr *= q if o else 1 - q
        pmf[sum(outcome)] += pr
    for k in range(len(probs) + 1):
        assert review.exact_test(k, probs) == pytest.approx(min(1.0, sum(v for v in pmf if v <= pmf[k] * (1 + 1e-7))))


def test_preference_rates_on_planted_choices():
    x, y, z = "vx", "vy", "vz"
    variants_of = {f"c{i}": [x, y, z] for i in range(30)}
    choices = [dict(case_id=f"c{i}", best=x, second=y) for i in range(20)]
    choices += [dict(case_id=f"c{i}", best=z, second=x) for i in range(20, 30)]
    rows = {(r["metric"], r["key"]): r for r in review.comparison_stats([], choices, variants_of)}
    binom = review.binomial_test
    assert rows[("preference", f"{x}>{y}")]["value"] == 1.0 and rows[("preference", f"{x}>{y}")]["n"] == 30
    assert rows[("preference", f"{x}>{z}")]["value"] == pytest.approx(20 / 30)
    assert rows[("preference", f"{x}>{z}")]["p_value"] == pytest.approx(binom(20, 30, 0.5))
    assert rows[("preference", f"{y}>{z}")]["value"] == pytest.approx(20 / 30)
    assert rows[("best_rate", x)]["value"] == pytest.approx(20 / 30)
    assert rows[("best_rate", x)]["p_value"] == pytest.approx(binom(20, 30, 1 / 3))
    assert rows[("best_rate", y)]["value"] == 0.0 and rows[("best_rate", y)]["p_value"] < 1e-4
    assert rows[("preference", f"{x}>{y}")]["p_value"] == pytest.approx(2 * 0.5 ** 30)


# ---- the web app (TestClient) ---------------------------------------------------------------
def _client(engine, data_dir, params=PARAMS):
    from starlette.testclient import TestClient

    from tasks.review_app import create_app

    return TestClient(create_app(engine, data_dir, params), base_url="http://127.0.0.1", follow_redirects=False)


def _login(client, name: str) -> str:
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    r = client.post("/login", data={"name": name, "password": PASSWORD[name], "csrf": token})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)


@pytest.fixture
def sqlite_engine(tmp_path, cohort):
    eng = review.open_db(f"sqlite:///{tmp_path / 'app.sqlite'}")
    review.prepare(eng, cohort.data_dir, PARAMS)
    _reviewers(eng)
    yield eng
    eng.dispose()


def test_no_page_without_login(sqlite_engine, cohort):
    client = _client(sqlite_engine, cohort.data_dir)
    f_case = review.case_list(sqlite_engine, review.STUDY_FAITHFULNESS)[0]["case_id"]
    for path in ("/", f"/faithfulness/{f_case}", "/comparison/G1", "/media/comparison/G1",
                 f"/media/faithfulness/{f_case}", "/nonexistent", "/comparison/nope"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
        assert "Rationale" not in r.text
    for path, body in (("/api/save", {"study": "comparison", "case_id": "G1", "field": "best", "value": "A"}),
                       ("/faithfulness/" + f_case, None), ("/comparison/G1", None), ("/logout", None)):
        r = client.post(path, json=body) if body else client.post(path, data={"score": "5"})
        assert r.status_code == 401, path
    r = client.get("/login")
    assert r.status_code == 200 and 'name="password"' in r.text
    assert client.get("/static/review.css").status_code == 200
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "script-src 'self'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"
    token = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
    assert client.post("/login", data={"name": "alice", "password": "wrong-password", "csrf": token}).status_code == 401
    assert client.post("/login", data={"name": "alice", "password": PASSWORD["alice"]}).status_code == 403
    assert client.get("/", headers={"host": "evil.example"}).status_code == 400, "DNS rebinding: unknown Host"


def test_forms_refuse_cross_site_requests(sqlite_engine, cohort):
    client = _client(sqlite_engine, cohort.data_dir)
    csrf = _login(client, "alice")
    body = {"study": "comparison", "case_id": "G1", "field": "A.consistency", "value": "5"}
    assert client.post("/api/save", json=body).status_code == 403, "no token"
    assert client.post("/api/save", json=body, headers={"x-csrf-token": "forged"}).status_code == 403
    assert client.post("/api/save", json=body, headers={"x-csrf-token": csrf, "origin": "http://evil.example"}
                       ).status_code == 403
    assert client.post("/api/save", json=body, headers={"x-csrf-token": csrf, "sec-fetch-site": "cross-site"}
                       ).status_code == 403
    assert client.post("/comparison/G1", data={"A.consistency": "5"}).status_code == 403, "form without token"
    assert client.post("/logout", data={}).status_code == 403
    aid = review.authenticate(sqlite_engine, "alice", PASSWORD["alice"])
    assert review.comparison_state(sqlite_engine, aid, "G1")["scores"] == {}, "nothing was saved"
    r = client.post("/api/save", json=body, headers={"x-csrf-token": csrf, "origin": "http://127.0.0.1"})
    assert r.status_code == 200 and r.json() == {"ok": True, "choices": {"best": None, "second": None}}
    variant = dict(review.slots(review.get_case(sqlite_engine, "comparison", "G1"), aid, SEED))["A"]
    assert review.comparison_state(sqlite_engine, aid, "G1")["scores"] == {(variant, "consistency"): 5}
    r = client.post("/comparison/G1", data={"csrf": csrf, "B.explainability": "2", "best": "B", "comment": "ok"})
    assert r.status_code == 303
    assert review.comparison_state(sqlite_engine, aid, "G1")["choices"]["comment"] == "ok"
    assert client.post("/logout", data={"csrf": csrf}).status_code == 303
    assert client.get("/").status_code == 303, "logged out"


def test_only_deidentified_media_is_served(sqlite_engine, cohort):
    client = _client(sqlite_engine, cohort.data_dir)
    _login(client, "alice")
    r = client.get("/media/comparison/G1", headers={"range": "bytes=0-99"})
    assert r.status_code == 206 and r.headers["content-type"] == "video/mp4" and len(r.content) == 100
    assert "content-disposition" not in r.headers, "no file name goes out"
    secret = cohort.data_dir / "01_ingest" / "private" / "raw.mp4"
    shutil.copy(cohort.data_dir / "02_deidentify" / "videos" / f"{fx.RA}.mp4", secret)
    try:
        for bad in ("01_ingest/private/raw.mp4", "02_deidentify/videos/../../01_ingest/private/raw.mp4"):
            with sqlite_engine.begin() as conn:  # a tampered case row: the app must still refuse it
                conn.execute(review.CASES.insert().values(
                    study="comparison", case_id="EVIL", position=99,
                    payload=json.dumps(dict(case_id="EVIL", media=bad, context=None, variants={"v": "r"},
                                            random_weights=False))))
            assert client.get("/media/comparison/EVIL").status_code == 404
            with sqlite_engine.begin() as conn:
                conn.execute(review.CASES.delete().where(review.CASES.c.case_id == "EVIL"))
    finally:
        secret.unlink()
    assert client.get("/media/nostudy/G1").status_code == 404


def test_logout_a_password_reset_and_review_logout_end_sessions_for_good(sqlite_engine, cohort):
    """A stateless signed cookie stays valid for its whole lifetime after logout: a copy of it (a shared
    machine, a proxy log) would still open the app.  Sessions here are tokens the database must still know."""
    def copy_of(client) -> str:
        return client.cookies.get(review_app_cookie())

    alice = _client(sqlite_engine, cohort.data_dir)
    csrf = _login(alice, "alice")
    stolen = copy_of(alice)
    thief = _client(sqlite_engine, cohort.data_dir)
    thief.cookies.set(review_app_cookie(), stolen)
    assert thief.get("/").status_code == 200  # the copy works while the session lives
    assert alice.post("/logout", data={"csrf": csrf}).status_code == 303
    assert thief.get("/").status_code == 303, "a logged-out session's cookie still opens the app"

    bob = _client(sqlite_engine, cohort.data_dir)
    _login(bob, "bob")
    thief.cookies.set(review_app_cookie(), copy_of(bob))
    review.add_reviewer(sqlite_engine, "bob", PASSWORD["bob"] + "-new", replace=True)
    assert bob.get("/").status_code == 303 and thief.get("/").status_code == 303

    again = _client(sqlite_engine, cohort.data_dir)
    _login(again, "alice")
    assert review.end_sessions(sqlite_engine, "alice") == 1
    assert again.get("/").status_code == 303
    with sqlite_engine.begin() as conn:  # the database holds hashes of tokens, not the tokens
        hashes = [r[0] for r in conn.execute(sa.select(review.SESSIONS.c.token_hash))]
    assert all(len(h) == 64 for h in hashes)


def test_sessions_expire(tmp_path, cohort):
    eng = review.open_db(f"sqlite:///{tmp_path / 'x.sqlite'}")
    review.prepare(eng, cohort.data_dir, PARAMS)
    _reviewers(eng)
    short = dataclasses.replace(PARAMS, review=ReviewParams(session_hours=1e-6))  # 3.6 ms
    client = _client(eng, cohort.data_dir, short)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"name": "bob", "password": PASSWORD["bob"], "csrf": token}).status_code == 303
    time.sleep(0.05)
    assert client.get("/").status_code == 303


def test_app_on_postgresql(postgres_server, cohort):
    eng = review.open_db(_pg_database(postgres_server))
    review.prepare(eng, cohort.data_dir, PARAMS)
    _reviewers(eng)
    alice, bob = _client(eng, cohort.data_dir), _client(eng, cohort.data_dir)
    csrf = _login(alice, "alice")
    f_case = review.case_list(eng, review.STUDY_FAITHFULNESS)[0]["case_id"]
    r = alice.post("/api/save", json={"study": "faithfulness", "case_id": f_case, "field": "score", "value": "4"},
                   headers={"x-csrf-token": csrf})
    assert r.status_code == 200
    assert re.search(r'name="score" value="4" checked', alice.get(f"/faithfulness/{f_case}").text)
    _login(bob, "bob")
    assert " checked" not in bob.get(f"/faithfulness/{f_case}").text
    eng.dispose()


# ---- end to end in headless Chromium ---------------------------------------------------------
@contextmanager
def live_server(app):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _playwright():
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs it with apt-get when root)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed").sync_playwright()


def _browser_login(page, base: str, name: str) -> None:
    page.goto(base + "/")
    assert page.url == base + "/login", "no page without login"
    page.fill('input[name="name"]', name)
    page.fill('input[name="password"]', PASSWORD[name])
    page.click('#login-form button[type="submit"]')
    page.wait_for_url(base + "/")


def _rate(page, name: str, value: str) -> None:
    with page.expect_response(lambda r: r.url.endswith("/api/save") and r.request.method == "POST") as resp:
        page.check(f'input[name="{name}"][value="{value}"]')
    assert resp.value.status == 200, resp.value.text()


def _video_ready(page) -> dict:
    page.wait_for_function("() => { const v = document.getElementById('video');"
                           " return v && v.readyState >= 1 && v.videoWidth > 0; }", timeout=20_000)
    return page.evaluate("() => { const v = document.getElementById('video');"
                         " return {w: v.videoWidth, h: v.videoHeight, d: v.duration, err: v.error}; }")


def test_browser_rate_reload_and_blinding(sqlite_engine, cohort):
    from tasks.review_app import create_app

    app = create_app(sqlite_engine, cohort.data_dir, PARAMS)
    ids = {n: review.authenticate(sqlite_engine, n, p) for n, p in PASSWORD.items()}
    g1 = review.get_case(sqlite_engine, review.STUDY_COMPARISON, "G1")
    f_case = review.case_list(sqlite_engine, review.STUDY_FAITHFULNESS)[0]["case_id"]
    likert = {"A.evidence_grounding": "4", "A.explainability": "2", "B.consistency": "5", "C.clinical_usefulness": "1"}
    with live_server(app) as base, _playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context().new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            _browser_login(page, base, "alice")
            page.click("#study-comparison a.button")  # Continue: the first open case
            page.wait_for_url(base + "/comparison/G1")
            video = _video_ready(page)
            assert (video["w"], video["h"]) == fx.FULL_SIZE and video["err"] is None
            assert video["d"] == pytest.approx(fx.DURATIONS[fx.RA], abs=1.0)
            for name, value in likert.items():
                _rate(page, name, value)
            _rate(page, "best", "B")
            _rate(page, "second", "B")  # same as best: best is cleared, in the page too
            assert not any(page.is_checked(f'input[name="best"][value="{s}"]') for s in "ABC")
            _rate(page, "best", "A")
            with page.expect_response(lambda r: r.url.endswith("/api/save")):
                page.fill('textarea[name="comment"]', "Short steps, wide base.")
            assert page.inner_text("#save-status") == "Saved"

            page.reload()
            _video_ready(page)
            for name, value in likert.items():
                assert page.is_checked(f'input[name="{name}"][value="{value}"]'), name
            assert page.locator('input[type="radio"]:checked').count() == len(likert) + 2
            assert page.is_checked('input[name="best"][value="A"]')
            assert page.is_checked('input[name="second"][value="B"]')
            assert page.input_value('textarea[name="comment"]') == "Short steps, wide base."
            html = page.content()
            assert not any(v in html for v in fx.VARIANTS), "reviewers never see variant names"

            page.goto(f"{base}/faithfulness/{f_case}")
            assert _video_ready(page)["w"] == fx.FULL_SIZE[0]
            _rate(page, "score", "4")
            page.reload()
            assert page.is_checked('input[name="score"][value="4"]')
            assert fx.MODEL not in page.content() and "qwen" not in page.content().lower()
            assert not errors, errors

            variant = dict(review.slots(g1, ids["alice"], SEED))
            state = review.comparison_state(sqlite_engine, ids["alice"], "G1")
            assert state["scores"] == {(variant[k[0]], k[2:]): int(v) for k, v in likert.items()}
            assert state["choices"] == dict(best=variant["A"], second=variant["B"], comment="Short steps, wide base.")
            assert review.faithfulness_scores(sqlite_engine, ids["alice"]) == {f_case: 4}

            page2 = browser.new_context().new_page()  # bob: his own cookies
            _browser_login(page2, base, "bob")
            page2.goto(base + "/comparison/G1")
            _video_ready(page2)
            assert page2.locator('input[type="radio"]:checked').count() == 0
            assert page2.input_value('textarea[name="comment"]') == ""
            page2.goto(f"{base}/faithfulness/{f_case}")
            assert page2.locator('input[type="radio"]:checked').count() == 0
            assert "alice" not in page2.content()
        finally:
            browser.close()


# ---- the command line --------------------------------------------------------------------
def test_cli_add_reviewer_and_stats(cohort, tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    pw_file = tmp_path / "pw"
    pw_file.write_text("carol-secret-9\n")
    repo_params = str(Path(__file__).resolve().parents[1] / "params.yaml")
    base = ["--data-dir", str(cohort.data_dir), "--params", repo_params, "review"]
    assert main(base + ["add-reviewer", "carol", "--password-file", str(pw_file), "--database", url]) == 0
    assert main(base + ["add-reviewer", "carol", "--password-file", str(pw_file), "--database", url]) == 1
    eng = review.open_db(url)
    cid = review.authenticate(eng, "carol", "carol-secret-9")
    assert cid is not None
    review.prepare(eng, cohort.data_dir, PARAMS)
    case = review.case_list(eng, review.STUDY_FAITHFULNESS)[0]
    review.save_faithfulness(eng, cid, case["case_id"], 5)
    assert main(base + ["stats", "--database", url, "--out", str(tmp_path / "out")]) == 0
    rows = read_table("faithfulness_ratings", tmp_path / "out" / "faithfulness.parquet").to_pylist()
    assert [(r["reviewer"], r["score"], r["feature_id"]) for r in rows] == [("carol", 5, case["feature_id"])]
    exported = (tmp_path / "out" / "faithfulness.parquet").read_bytes()
    assert fx.INBOX.encode() not in exported and not any(s.encode() in exported for s in fx.SOURCE.values())
    eng.dispose()


def test_the_session_secret_lives_in_a_private_file_not_in_the_database(tmp_path, cohort, monkeypatch):
    """A local account that can read review.sqlite must not be able to forge a reviewer session."""
    import sqlalchemy as sa

    db = tmp_path / "r.sqlite"
    eng = review.open_db(f"sqlite:///{db}")
    review.prepare(eng, cohort.data_dir, PARAMS)
    _reviewers(eng)
    with eng.begin() as conn:  # what an older version left there
        conn.execute(review.SECRETS.insert().values(name="session", value="old-secret-in-the-database-0123456789"))
    secret_file = tmp_path / "state" / "review_secret"
    monkeypatch.delenv(review.SECRET_ENV, raising=False)
    monkeypatch.setenv(review.SECRET_FILE_ENV, str(secret_file))
    client = _client(eng, cohort.data_dir)
    _login(client, "alice")
    secret = secret_file.read_text().strip()
    assert secret_file.stat().st_mode & 0o777 == 0o600 and secret_file.parent.stat().st_mode & 0o777 == 0o700
    with eng.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(review.SECRETS)).scalar_one() == 0
    eng.dispose()
    assert secret.encode() not in db.read_bytes() and b"old-secret-in-the-database" not in db.read_bytes()
    # a cookie signed with the old database secret is no session
    from itsdangerous import TimestampSigner
    import base64
    import json as _json

    def signed(key: str) -> str:
        payload = {"reviewer_id": 1, "name": "alice", "login_at": time.time()}
        return TimestampSigner(key).sign(base64.b64encode(_json.dumps(payload).encode())).decode()

    eng = review.open_db(f"sqlite:///{db}")
    attacker = _client(eng, cohort.data_dir)
    attacker.cookies.set(review_app_cookie(), signed("old-secret-in-the-database-0123456789"))
    assert attacker.get("/").status_code == 303
    # nor is one signed with the file's secret itself: a session is a token the database knows (revocable)
    holder = _client(eng, cohort.data_dir)
    holder.cookies.set(review_app_cookie(), signed(secret))
    assert holder.get("/").status_code == 303
    # the environment variable wins over the file
    monkeypatch.setenv(review.SECRET_ENV, "x" * 40)
    assert review.session_secret() == "x" * 40
    monkeypatch.setenv(review.SECRET_ENV, "short")
    with pytest.raises(Exception, match="too short"):
        review.session_secret()
    eng.dispose()


def review_app_cookie() -> str:
    from tasks.review_app import COOKIE

    return COOKIE


def test_concurrent_wrong_passwords_are_counted_before_checking_and_the_reviewer_gets_back_in(
        sqlite_engine, cohort, monkeypatch):
    """40 guesses at once: only the free tries reach the password check; then a short, growing wait."""
    import asyncio

    import httpx

    from tasks import review_app
    from tasks.review_app import create_app

    checked = []
    real = review.authenticate

    def counting(engine, name, password):
        checked.append(name)
        return real(engine, name, password)

    monkeypatch.setattr(review, "authenticate", counting)
    monkeypatch.setattr(review_app, "LOGIN_BACKOFF_S", 3.0)
    app = create_app(sqlite_engine, cohort.data_dir, PARAMS)

    async def attack() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            token = re.search(r'name="csrf" value="([^"]+)"', (await c.get("/login")).text).group(1)
            rs = await asyncio.gather(*(c.post("/login", data={"name": "alice", "password": f"guess-{i}",
                                                               "csrf": token}) for i in range(40)))
            statuses = [r.status_code for r in rs]
            right = {"name": "alice", "password": PASSWORD["alice"], "csrf": token}
            statuses.append((await c.post("/login", data=right)).status_code)  # at once: still waiting
            await asyncio.sleep(3.1)  # the first back-off step
            statuses.append((await c.post("/login", data=right)).status_code)
            return statuses

    statuses = asyncio.run(attack())
    assert statuses[:40].count(401) == review_app.LOGIN_FREE_FAILURES and statuses[:40].count(429) == 35
    assert len(checked) == review_app.LOGIN_FREE_FAILURES + 1, "refused tries never reach the password check"
    assert statuses[40:] == [429, 303], "the real reviewer is back in after a short wait, not locked out"


@pytest.mark.parametrize("host, mode, secure", [("127.0.0.1", "auto", False), ("0.0.0.0", "auto", True),
                                                ("127.0.0.1", "on", True), ("10.1.2.3", "off", False)])
def test_the_session_cookie_is_secure_when_the_app_listens_beyond_this_machine(sqlite_engine, cohort, host, mode,
                                                                               secure):
    params = dataclasses.replace(PARAMS, review=dataclasses.replace(PARAMS.review, host=host, secure_cookie=mode))
    cookie = _client(sqlite_engine, cohort.data_dir, params).get("/login").headers["set-cookie"].lower()
    assert ("; secure" in cookie) == secure, cookie
