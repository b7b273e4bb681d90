"""query: requests, answer parsing, the response cache and endpoint faults.

Media come from one phantom recording run through the real stages
(``tests/enhance_fixture.py``: ingest -> deidentify -> downsample -> window,
then face_crop and audio here).  Endpoint behaviour is exercised against a
real HTTP server on localhost (``tests/fake_openai.py``) that a test scripts:
plain answers, garbage, refusals, truncation, 429/5xx, timeouts, death.
The real ``transformers serve`` and the in-process models are in
``tests/test_query_models.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tasks import audio, face_crop
from tasks.catalog import load_catalog
from tasks.params import AudioParams, EndpointParams, FaceCropParams, QueryParams
from tasks.query import query_recording, window_media
from tasks.query.openai import EndpointError, OpenAIBackend
from tasks.query.parse import CUT_MARK, parse_answer
from tasks.query.questions import questions_for
from tasks.schema import read_table
from tests.enhance_fixture import enhanced_data
from tests.fake_openai import FakeOpenAI, Response, chat, user_text

CATALOG = load_catalog()
VIDEO_FEATURES = [f.id for f in CATALOG.features if f.modality == "video"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The phantom's data dir plus face_crop and audio outputs (the transcript stage is not run)."""
    e = enhanced_data(tmp_path_factory)
    d = tmp_path_factory.mktemp("query_data")
    for sub in ("01_ingest", "02_deidentify", "03_downsample", "04_window"):
        (d / sub).symlink_to(e.data_dir / sub, target_is_directory=True)
    face_crop.face_crop_recording(e.recording_id, d, d / "05_face_crop", FaceCropParams())
    audio.audio_recording(e.recording_id, d, d / "07_audio", AudioParams())
    return d, e.recording_id


def params_for(url: str, **kw) -> QueryParams:
    vision = EndpointParams(backend="openai", model="fake-vlm", base_url=url, retries=3, backoff_s=0.01,
                            timeout_s=5.0, concurrency=4)
    audio_ep = replace(vision, model="fake-alm")
    return replace(QueryParams(max_frames=8, max_pixels=160 * 120, vision=vision, audio=audio_ep), **kw)


def yes_for(feature_ids: set[str]):
    """A server that says yes to the questions of ``feature_ids`` and no to the rest."""
    prompts = {f.id: f.prompt for f in CATALOG.features}

    def respond(body: dict) -> Response:
        text = user_text(body)
        fid = next(i for i, p in prompts.items() if p in text)
        present = "yes" if fid in feature_ids else "no"
        return chat(json.dumps({"present": present, "justification": f"{fid} {present}"}))

    return respond


# ---- requests ---------------------------------------------------------------------------


def test_media_prefix_is_byte_identical_across_a_windows_questions(data):
    d, rid = data
    params = params_for("http://127.0.0.1:9/v1")
    windows = read_table("windows", d / "04_window" / "windows" / f"{rid}.parquet").to_pylist()
    media = window_media(rid, d, windows, params, ("raw", "face_crop"), CATALOG)
    backend = OpenAIBackend(params.vision, params)
    for arm, n in (("raw", 18), ("face_crop", 7)):
        m = media[(0, arm)]
        assert len(m.images) == 8 and m.fps == pytest.approx(8 / 30, abs=1e-3)
        parts = backend.media_parts(m)
        qs = questions_for(rid, 0, arm, m, 30.0, params, CATALOG)
        assert len(qs) == n
        bodies = [json.dumps(backend.body(q, parts)) for q in qs]
        prefixes = {b[:b.index('{"type": "text"')] for b in bodies}
        assert len(prefixes) == 1, "media parts differ between questions of one window"
        prefix = prefixes.pop()
        assert len({b[len(prefix):] for b in bodies}) == n, "questions must differ"
        first = backend.body(qs[0], parts)["messages"][1]["content"]
        assert [p["type"] for p in first] == ["image_url"] * 8 + ["text"], "media first, question last"
    # windows differ from each other
    assert media[(0, "raw")].images != media[(1, "raw")].images


def test_arms_without_media_are_not_assessable_never_asked(data, tmp_path):
    d, rid = data
    with FakeOpenAI(yes_for(set())) as srv:
        params = params_for(srv.url, arms=("audio_transcript", "pose_overlay"))
        res = query_recording(rid, d, tmp_path, params)
    assert res["requests"] == 0
    rows = read_table("answers", tmp_path / "answers" / f"{rid}.parquet").to_pylist()
    assert {r["status"] for r in rows} == {"not_assessable"} and {r["present"] for r in rows} == {None}
    assert len(rows) == 2 * (2 + 11)  # 2 windows x (2 audio + 11 limb features)
    assert all("run transcript" in r["justification"] or "run pose" in r["justification"] for r in rows)


def test_no_pose_windows_are_not_assessable_and_backend_none_is_skipped(data, tmp_path):
    """Pose found no one in the recording (every window ``no_pose``): its pose-overlay questions are not asked
    and never read "no"; the raw arm is asked; an arm without a model stays ``skipped``."""
    from tasks.schema import write_table

    d, rid = data
    root = tmp_path / "data"
    root.mkdir()
    for sub in ("01_ingest", "02_deidentify", "03_downsample", "04_window"):
        (root / sub).symlink_to(d / sub, target_is_directory=True)
    windows = read_table("windows", d / "04_window" / "windows" / f"{rid}.parquet").to_pylist()
    write_table("arms", [dict(recording_id=rid, window_index=w["window_index"], arm="pose_overlay", path=None,
                              status="no_pose") for w in windows], root / "06_pose" / "arms" / f"{rid}.parquet")
    with FakeOpenAI(yes_for({"clonic"})) as srv:
        params = params_for(srv.url, arms=("raw", "pose_overlay", "audio_raw"),
                            features=("clonic", "ictal_vocalization"))
        params = replace(params, audio=replace(params.audio, backend="none"))
        res = query_recording(rid, root, tmp_path / "out", params)
    rows = read_table("answers", tmp_path / "out" / "answers" / f"{rid}.parquet").to_pylist()
    by_arm = {a: [r for r in rows if r["arm"] == a] for a in ("raw", "pose_overlay", "audio_raw")}
    assert res["requests"] == len(windows), "only the raw arm's clonic questions were asked"
    assert {r["status"] for r in by_arm["raw"]} == {"yes"}
    pose = by_arm["pose_overlay"]
    assert len(pose) == len(windows) and {(r["status"], r["present"]) for r in pose} == {("not_assessable", None)}
    assert all(r["justification"] == "no media: pose_overlay: no_pose" and r["model_id"] == "openai:fake-vlm"
               for r in pose)
    assert {(r["status"], r["model_id"]) for r in by_arm["audio_raw"]} == {("skipped", "none")}


# ---- answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, finish, status, present", [
    ('{"present": "yes", "justification": "rhythmic jerks"}', "stop", "yes", True),
    ('```json\n{"present": "no", "justification": "still"}\n```', "stop", "no", False),
    ("Yes. The left arm jerks rhythmically.", "stop", "yes", True),
    ("no", "stop", "no", False),
    ('{"present": "yes", "justification": "rhythmic jerks of the le', "length", "truncated", None),
    ('{"present": "yes", "justification": "ok"}', "length", "truncated", None),
    ("I'm sorry, but I can't help with assessing medical videos.", "stop", "refused", None),
    ("The image shows a room with a bed.", "stop", "unparsed", None),
    ('{"present": "maybe", "justification": "unclear"}', "stop", "unparsed", None),
    ("", "stop", "unparsed", None),
    # a refusal or hedge anywhere wins over the yes/no before it (never scored)
    ("No. I'm sorry, but I can't help with that.", "stop", "refused", None),
    ('{"present": "no", "justification": "I am sorry, I cannot assist with this request."}', "stop", "refused", None),
    ("Yes, no wait: I cannot determine", "stop", "unparsed", None),  # two answers are none
    ("Yes, no. Hard to say from this angle.", "stop", "unparsed", None),
    ('{"present": "yes", "justification": "the arm may jerk but it is unclear"}', "stop", "unparsed", None),
    ("No. I\u2019m sorry, I can\u2019t help with that.", "stop", "refused", None),  # curly apostrophes
    ('{"answer": "yes", "justification": "rhythmic jerks"}', "stop", "yes", True),
    ("The request was declined.", "refusal", "refused", None),  # OpenAI message.refusal
    # a justification given blank is no answer (a smoke model's newlines), whatever the word before it
    ('{"present": "yes", "justification": "' + "\\n" * 32 + '"}', "stop", "unparsed", None),
    ('{"present": "no", "justification": "  \\t "}', "stop", "unparsed", None),
    ('{"present": "no", "justification": ""}', "stop", "unparsed", None),
])
def test_parse_answer(text, finish, status, present):
    got = parse_answer(text, finish, ("clonic",), batched=False)["clonic"]
    assert (got.status, got.present) == (status, present)


@pytest.mark.parametrize("text, finish, status, just", [
    ('{"present": "yes", "justification": "arm jerks"}', "stop", "yes", "arm jerks"),
    ('{"present": "no", "justification": "the patient lies', "length", "no", "the patient lies" + CUT_MARK),
    ('{"present": "yes", "justification": "', "length", "unparsed", None),  # nothing after the word
    ('{"present": "yes", "justification": "' + "\n" * 32, "length", "unparsed", None),
    ('{"present": "no", "justification": "   "}', "stop", "unparsed", None),
    ('{"present": "no", "justification": "I\'m sorry, I cannot help with that."}', "stop", "refused", None),
    ('{"present": "yes", "justification": "arm\x0e jerks\ufffd', "length", "yes", "arm jerks" + CUT_MARK),
])
def test_parse_constrained_answer(text, finish, status, just):
    """A constrained yes/no stands even when its justification was cut; a refusal after it never does."""
    got = parse_answer(text, finish, ("clonic",), batched=False, answer=text.split('"')[3])["clonic"]
    assert (got.status, got.justification) == (status, just)
    assert got.present == ({"yes": True, "no": False}.get(status))


def test_parse_batched_answer_per_feature():
    text = json.dumps({"clonic": {"present": "yes", "justification": "a"}, "tonic": {"present": "no"},
                       "oral_automatisms": {"present": "yes", "justification": "\n\n \n"}})
    ids = ("clonic", "tonic", "limb_automatisms", "oral_automatisms")
    got = parse_answer(text, "stop", ids, batched=True)
    assert [got[k].status for k in ids] == ["yes", "no", "unparsed", "unparsed"]


def test_statuses_recorded_with_raw_text_and_rerun_makes_zero_requests(data, tmp_path):
    d, rid = data
    script = {"clonic": chat('{"present": "yes", "justification": "jerks"}'),
              "tonic": chat("lorem ipsum dolor"),
              "head_turning": chat("I cannot help with that request."),
              "limb_automatisms": chat('{"present": "no", "justification": "the patient', finish_reason="length")}
    prompts = {CATALOG.by_id(k).prompt: k for k in script}

    def respond(body):
        text = user_text(body)
        return next((script[k] for p, k in prompts.items() if p in text),
                    chat('{"present": "no", "justification": "x"}'))

    with FakeOpenAI(respond) as srv:
        params = params_for(srv.url, arms=("raw",), features=tuple(script) + ("blank_stare",))
        first = query_recording(rid, d, tmp_path, params)
        n_first = len(srv.bodies)
        second = query_recording(rid, d, tmp_path, params)
        assert len(srv.bodies) == n_first, "a rerun must not call the endpoint"
    assert first["requests"] == n_first == 2 * 5 and first["cache_hits"] == 0
    assert second["requests"] == 0 and second["cache_hits"] == 10
    rows = read_table("answers", tmp_path / "answers" / f"{rid}.parquet").to_pylist()
    by = {(r["window_index"], r["feature_id"]): r for r in rows}
    expect = {"clonic": "yes", "tonic": "unparsed", "head_turning": "refused", "limb_automatisms": "truncated",
              "blank_stare": "no"}
    for (wi, fid), r in by.items():
        assert r["status"] == expect[fid], (fid, r)
        assert r["raw_text"], "raw text is kept for every answer"
        assert (r["present"] is None) == (r["status"] not in ("yes", "no"))
    assert by[(0, "limb_automatisms")]["finish_reason"] == "length"
    assert by[(0, "clonic")]["justification"] == "jerks"


def test_identifiers_a_model_quotes_are_scrubbed_before_they_are_cached_or_stored(data, tmp_path):
    """A model that read a name off the screen (or heard one) repeats it: the answer still scores, and neither
    the stored answers nor the response cache keep the name, the date or the MRN."""
    d, rid = data
    said = ('{"present": "yes", "justification": "Mrs. Jane Doe, born March 4th 1961, MRN 4471903, '
            'shows rhythmic jerking of the right arm."}')
    with FakeOpenAI(lambda body: chat(said)) as srv:
        query_recording(rid, d, tmp_path, params_for(srv.url, arms=("raw",), features=("clonic",)))
    rows = read_table("answers", tmp_path / "answers" / f"{rid}.parquet").to_pylist()
    assert rows and all(r["status"] == "yes" and r["present"] is True for r in rows)
    assert all("rhythmic jerking" in r["justification"] and "[NAME]" in r["justification"] for r in rows)
    stored = json.dumps(rows) + "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert list((tmp_path / "cache").rglob("*.json"))
    for planted in ("Jane", "Doe", "1961", "4471903"):
        assert planted not in stored, planted


def test_structured_output_requested_and_dropped_when_refused(data, tmp_path):
    d, rid = data
    seen = []

    def respond(body):
        seen.append("response_format" in body)
        if "response_format" in body:
            return Response(400, {"error": {"message": "response_format json_schema is not supported"}})
        return chat('{"present": "no", "justification": "x"}')

    with FakeOpenAI(respond) as srv:
        params = params_for(srv.url, arms=("raw",), features=("clonic",))
        params = replace(params, vision=replace(params.vision, concurrency=1))
        res = query_recording(rid, d, tmp_path, params)
        assert all(b.get("logprobs") for b in srv.bodies), "only the refused option is dropped"
    assert seen == [True, False, False]
    assert res["statuses"] == {"no": 2}


def test_an_unrelated_400_drops_no_option_and_a_dropped_option_changes_the_cache_key(data, tmp_path):
    d, rid = data
    with FakeOpenAI(lambda b: Response(400, {"error": {"message": "prompt is too long for the context"}})) as srv:
        params = params_for(srv.url, arms=("raw",), features=("clonic",))
        params = replace(params, vision=replace(params.vision, concurrency=1))
        with pytest.raises(EndpointError, match="refused the request"):
            query_recording(rid, d, tmp_path / "a", params)
        assert all("response_format" in b for b in srv.bodies), "an error naming no option drops none"

    def named(body):
        if "response_format" in body:
            return Response(400, {"error": {"message": "response_format json_schema is not supported"}})
        return chat('{"present": "no", "justification": "x"}')

    with FakeOpenAI(named) as srv:
        params = replace(params, vision=replace(params.vision, base_url=srv.url))
        query_recording(rid, d, tmp_path / "b", params)
    rows = read_table("answers", tmp_path / "b" / "answers" / f"{rid}.parquet").to_pylist()
    assert all(r["status"] == "no" for r in rows)
    cached = {p.stem for p in (tmp_path / "b" / "cache").rglob("*.json")}
    assert {r["cache_key"] for r in rows} == cached, "answers are cached under the key of what was sent"
    assert len(cached) == 2


@pytest.mark.parametrize("bad", [
    Response(200, raw=b"<html><body>502 Bad Gateway</body></html>"),
    Response(200, {"error": {"message": "CUDA out of memory", "type": "server_error"}}),
    Response(200, {"id": "x", "object": "chat.completion", "choices": []}),
])
def test_a_200_without_an_answer_is_retried_and_never_cached(data, tmp_path, bad):
    d, rid = data
    faults = iter([bad, bad])

    def respond(body):
        return next(faults, None) or chat('{"present": "yes", "justification": "x"}')

    with FakeOpenAI(respond) as srv:
        params = params_for(srv.url, arms=("raw",), features=("clonic",))
        params = replace(params, vision=replace(params.vision, concurrency=1, retries=3))
        res = query_recording(rid, d, tmp_path / "ok", params)
    assert res["statuses"] == {"yes": 2} and res["requests"] == 2 + 2
    with FakeOpenAI(lambda b: bad) as srv:
        params = replace(params, vision=replace(params.vision, base_url=srv.url, retries=1))
        with pytest.raises(EndpointError, match="HTTP 200 (with a body that is not JSON|carrying an error|with no "
                                                "choices)"):
            query_recording(rid, d, tmp_path / "bad", params)
    assert not list((tmp_path / "bad" / "cache").rglob("*.json")), "a transport failure is never cached"


def test_a_refusal_field_is_recorded_refused_with_its_words(data, tmp_path):
    d, rid = data
    body = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "refusal": "I can not describe people in medical videos."}}]}
    with FakeOpenAI(lambda b: Response(200, body)) as srv:
        res = query_recording(rid, d, tmp_path, params_for(srv.url, arms=("raw",), features=("clonic",)))
    rows = read_table("answers", tmp_path / "answers" / f"{rid}.parquet").to_pylist()
    assert res["statuses"] == {"refused": 2}
    assert all(r["raw_text"] == "I can not describe people in medical videos." for r in rows)


def test_an_error_body_that_echoes_the_key_is_masked_and_plain_http_away_is_warned(data, tmp_path, monkeypatch,
                                                                                    caplog):
    d, rid = data
    key = "sk-test-0123456789abcdefSECRET"
    monkeypatch.setenv("SEMIOFLOW_API_KEY", key)
    echo = {"error": {"message": f"Incorrect API key provided: {key}. Header was Bearer {key}"}}
    with FakeOpenAI(lambda b: Response(401, echo)) as srv:
        params = params_for(srv.url, arms=("raw",), features=("clonic",))
        with pytest.raises(EndpointError) as err:
            query_recording(rid, d, tmp_path, params)
    assert "HTTP 401" in str(err.value) and key not in str(err.value) and "<masked>" in str(err.value)
    with caplog.at_level("WARNING"):
        OpenAIBackend(replace(params.vision, base_url="http://10.1.2.3:8000/v1"), params)
        OpenAIBackend(replace(params.vision, base_url="http://127.0.0.1:8000/v1"), params)
        OpenAIBackend(replace(params.vision, base_url="https://models.example.org/v1"), params)
    warned = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert len(warned) == 1 and "10.1.2.3" in warned[0]


def test_logprobs_give_yes_probability(data, tmp_path):
    d, rid = data
    lp = [{"token": '{"', "logprob": 0.0, "top_logprobs": []},
          {"token": "yes", "logprob": -0.2231, "top_logprobs": [{"token": "yes", "logprob": -0.2231},
                                                                  {"token": "no", "logprob": -1.6094}]}]
    with FakeOpenAI(lambda b: chat('{"present": "yes", "justification": "x"}', logprobs=lp)) as srv:
        params = params_for(srv.url, arms=("raw",), features=("clonic",))
        query_recording(rid, d, tmp_path, params)
        assert srv.bodies[0]["logprobs"] is True
    rows = read_table("answers", tmp_path / "answers" / f"{rid}.parquet").to_pylist()
    assert rows[0]["yes_prob"] == pytest.approx(0.8 / (0.8 + 0.2), abs=1e-3)


# ---- faults -----------------------------------------------------------------------------


def test_429_5xx_and_timeouts_are_retried(data, tmp_path):
    d, rid = data
    faults = iter([Response(429, headers={"retry-after": "0"}), Response(503), Response(500),
                   Response(200, chat("{}").body, delay_s=1.5)])  # the slow one times out

    def respond(body):
        f = next(faults, None)
        return f if f is not None else chat('{"present": "yes", "justification": "x"}')

    with FakeOpenAI(respond) as srv:
        params = params_for(srv.url, arms=("raw",), features=("clonic",))
        params = replace(params, vision=replace(params.vision, timeout_s=0.5, concurrency=1, retries=4))
        res = query_recording(rid, d, tmp_path, params)
    assert res["statuses"] == {"yes": 2}
    assert res["requests"] == 2 + 4, "each fault costs one more attempt"


def test_permanent_failure_is_not_cached_and_rerun_resumes(data, tmp_path):
    d, rid = data
    params = params_for("", arms=("raw",), features=("clonic", "tonic"))
    with FakeOpenAI(lambda b: Response(503)) as srv:
        params = replace(params, vision=replace(params.vision, base_url=srv.url))
        with pytest.raises(EndpointError, match="failed 4 times.*rerun to resume"):
            query_recording(rid, d, tmp_path, params)
    assert not list((tmp_path / "cache").rglob("*.json")), "a failure must never be cached"
    assert not (tmp_path / "answers").exists()
    with FakeOpenAI(yes_for({"tonic"})) as srv:
        params = replace(params, vision=replace(params.vision, base_url=srv.url))
        res = query_recording(rid, d, tmp_path, params)
    assert res["requests"] == 4 and res["statuses"] == {"yes": 2, "no": 2}


def test_an_endpoint_that_stays_down_ends_the_next_recordings_at_once(data, tmp_path):
    """The circuit breaker: after one recording spent its retries, the next ones ask nothing and say why."""
    d, rid = data
    with FakeOpenAI(lambda b: Response(503)) as srv:
        params = params_for(srv.url, arms=("raw",), features=("clonic", "tonic"))
        params = replace(params, vision=replace(params.vision, retries=2, concurrency=2))
        backends = {"vision": OpenAIBackend(params.vision, params), "audio": None}
        with pytest.raises(EndpointError, match=r"failed 3 times, last: HTTP 503|is down \(first failure: HTTP 503"):
            query_recording(rid, d, tmp_path / "first", params, backends=backends)
        sent = len(srv.bodies)
        for i in range(3):  # three more recordings of the same run
            t0 = time.monotonic()
            with pytest.raises(EndpointError, match=r"is down \(first failure: HTTP 503.*not asked again"):
                query_recording(rid, d, tmp_path / f"next{i}", params, backends=backends)
            assert time.monotonic() - t0 < 2.0
        assert len(srv.bodies) == sent, "nothing more was sent"
    assert not list(tmp_path.rglob("cache/**/*.json"))


def test_endpoint_dying_mid_run_keeps_answers_and_rerun_asks_only_the_rest(data, tmp_path):
    d, rid = data
    feats = tuple(VIDEO_FEATURES[:6])
    state = {"n": 0}
    holder = {}

    def respond(body):
        state["n"] += 1
        if state["n"] == 5:  # the server process "dies" after four answers
            import threading

            threading.Thread(target=holder["srv"].stop, daemon=True).start()
            return Response(500, delay_s=0.3)
        return chat('{"present": "no", "justification": "x"}')

    params = params_for("", arms=("raw",), features=feats)
    srv = FakeOpenAI(respond)
    holder["srv"] = srv
    with srv:
        params = replace(params, vision=replace(params.vision, base_url=srv.url, concurrency=1, retries=2))
        with pytest.raises(EndpointError, match="cannot reach the endpoint|HTTP 500"):
            query_recording(rid, d, tmp_path, params)
    cached = list((tmp_path / "cache").rglob("*.json"))
    assert len(cached) == 4
    with FakeOpenAI(yes_for(set())) as srv2:
        params = replace(params, vision=replace(params.vision, base_url=srv2.url))
        res = query_recording(rid, d, tmp_path, params)
    assert res["requests"] == 2 * len(feats) - 4 and res["cache_hits"] == 4


KILL_SCRIPT = r"""
import json, sys
from pathlib import Path
from dataclasses import replace
from tasks.params import QueryParams, EndpointParams
from tasks.query import query_recording
d, rid, out, url = sys.argv[1:5]
ep = EndpointParams(backend="openai", model="fake", base_url=url, concurrency=2, timeout_s=30)
p = QueryParams(arms=("raw",), max_frames=8, max_pixels=160 * 120, vision=ep, audio=replace(ep, backend="none"))
print(json.dumps(query_recording(rid, Path(d), Path(out), p)), flush=True)
"""


def test_sigkill_during_the_stage_leaves_no_partial_cache_entry(data, tmp_path):
    d, rid = data
    respond_slow = lambda b: chat('{"present": "no", "justification": "' + "x" * 4000 + '"}', )  # noqa: E731
    with FakeOpenAI(lambda b: Response(200, respond_slow(b).body, delay_s=0.05)) as srv:
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(d), rid, str(tmp_path), srv.url],
                                cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        def complete() -> list[Path]:  # a temp file being written (".<name>.partial-….json") is no entry
            return [p for p in (tmp_path / "cache").rglob("*.json") if not p.name.startswith(".")]

        deadline = time.monotonic() + 120
        while len(complete()) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        entries = complete()
        assert 6 <= len(entries) < 36, "killed mid-run"
        for p in entries:
            e = json.loads(p.read_text())  # complete, or it would not parse
            assert e["key"] == p.stem and e["text"].endswith('"}')
        n_before = len(srv.bodies)
        out = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(d), rid, str(tmp_path), srv.url],
                             cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["cache_hits"] == len(entries) and res["requests"] == 36 - len(entries)
    assert len(srv.bodies) - n_before == 36 - len(entries)
    assert res["statuses"] == {"no": 36}


# ---- batched mode -----------------------------------------------------------------------


def test_batched_mode_cuts_requests_at_least_5x_on_the_same_windows(data, tmp_path):
    d, rid = data

    def respond(body):
        text = user_text(body)
        ids = [f.id for f in CATALOG.features if f'"{f.id}"' in text]
        return chat(json.dumps({i: {"present": "yes" if i == "clonic" else "no", "justification": i} for i in ids}))

    with FakeOpenAI(respond) as srv:
        single = query_recording(rid, d, tmp_path / "single", params_for(srv.url, arms=("raw", "face_crop")))
        with FakeOpenAI(respond) as srv2:
            batched = query_recording(rid, d, tmp_path / "batched",
                                      params_for(srv2.url, arms=("raw", "face_crop"), mode="batched"))
    assert len(srv2.bodies) == batched["requests"] == 2 * 3  # windows x (facial, limb on raw; facial on crop)
    assert single["requests"] >= 5 * batched["requests"]
    rows = read_table("answers", tmp_path / "batched" / "answers" / f"{rid}.parquet").to_pylist()
    assert len(rows) == 2 * (18 + 7)
    assert {r["feature_id"] for r in rows if r["status"] == "yes"} == {"clonic"}
    assert all(r["status"] in ("yes", "no") for r in rows)


def test_video_part_and_audio_part_formats(data, tmp_path):
    """media_format video: one H.264 part holding every frame; audio arms: an input_audio WAV part."""
    import base64

    from tasks.media import probe

    d, rid = data
    with FakeOpenAI(yes_for(set())) as srv:
        params = params_for(srv.url, arms=("raw", "audio_denoised"), features=("clonic", "ictal_vocalization"))
        params = replace(params, vision=replace(params.vision, media_format="video"))
        res = query_recording(rid, d, tmp_path, params)
    assert res["statuses"] == {"no": 4}
    video_body = next(b for b in srv.bodies if b["messages"][1]["content"][0]["type"] == "video_url")
    parts = video_body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["video_url", "text"]
    mp4 = tmp_path / "part.mp4"
    mp4.write_bytes(base64.b64decode(parts[0]["video_url"]["url"].split(",", 1)[1]))
    assert probe(mp4).n_frames == 8
    # vLLM's video format: a stable uuid per window x arm (its multimodal cache), the clip's fps passed through
    videos = [b for b in srv.bodies if b["messages"][1]["content"][0]["type"] == "video_url"]
    uuids = {}
    for b in videos:
        part = b["messages"][1]["content"][0]
        uuids.setdefault(part["video_url"]["url"], set()).add(part["uuid"])
        assert 0 < b["mm_processor_kwargs"]["fps"] <= 2.0  # 8 of the window's 2 fps frames
    assert all(len(u) == 1 for u in uuids.values()) and len({u for s in uuids.values() for u in s}) == len(uuids)
    assert not any("mm_processor_kwargs" in b for b in srv.bodies if b not in videos)
    audio_body = next(b for b in srv.bodies if b["messages"][1]["content"][0]["type"] == "input_audio")
    wav = base64.b64decode(audio_body["messages"][1]["content"][0]["input_audio"]["data"])
    assert wav[:4] == b"RIFF" and len(wav) > 16000 * 2 * 20, "about 30 s of 16 kHz 16-bit audio"


def test_each_windows_first_question_goes_alone_to_warm_the_prefix_cache(data, tmp_path):
    """A window x arm's questions share their media; vLLM reuses that prefix only once one request has filled
    its cache.  The first of each goes alone, the rest go concurrently once it has returned."""
    import threading

    d, rid = data
    delay = 0.15
    log: list[tuple[str, float]] = []
    lock = threading.Lock()
    answer = yes_for(set())

    def respond(body: dict) -> Response:
        media = json.dumps([p for p in body["messages"][-1]["content"] if p.get("type") != "text"])
        with lock:
            log.append((media, time.monotonic()))
        return replace(answer(body), delay_s=delay)

    with FakeOpenAI(respond) as srv:
        params = params_for(srv.url, arms=("raw", "face_crop"))
        res = query_recording(rid, d, tmp_path, params)
    groups: dict[str, list[float]] = {}
    for media, t in log:
        groups.setdefault(media, []).append(t)
    assert len(groups) == 4 and res["requests"] == len(log) == 2 * (18 + 7)  # 2 windows x 2 arms
    for times in groups.values():
        first, rest = times[0], sorted(times[1:])
        assert rest[0] - first >= delay * 0.9, "a question went before its window's first had returned"
    # the rest still go 4 at a time: far less than one by one
    span = max(t for _, t in log) - min(t for _, t in log) + delay
    assert span < 0.6 * len(log) * delay, span


# ---- a failed rerun keeps the last good answers ------------------------------------------


def _stage_dir(data, tmp_path) -> Path:
    """A data dir for the query stage as the runner sees it: the window stage's marker says the recording came
    through."""
    from tasks.cache import write_marker

    d, rid = data
    root = tmp_path / "data"
    root.mkdir()
    for sub in ("01_ingest", "02_deidentify", "03_downsample", "05_face_crop", "07_audio"):
        (root / sub).symlink_to(d / sub, target_is_directory=True)
    win = root / "04_window" / "windows"
    win.mkdir(parents=True)
    (win / f"{rid}.parquet").write_bytes((d / "04_window" / "windows" / f"{rid}.parquet").read_bytes())
    write_marker(root / "04_window", rid, "fixture", [win / f"{rid}.parquet"], {})
    return root


def test_a_failed_rerun_keeps_the_answers_tables_and_the_random_weights_flag(data, tmp_path, monkeypatch):
    """A good run, then the stage pointed at a closed port: the run fails, and every answer, the stage table and
    query.json stay as they were (random_weights included); state.json marks the recording stale."""
    import socket

    from tasks import query
    from tasks.cache import RunFailed, run_local
    from tasks.params import Params
    from tasks.local_models import TINY_MARKER

    _, rid = data
    root = _stage_dir(data, tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-vlm").mkdir()
    (tmp_path / "tiny-vlm" / TINY_MARKER).write_text("{}")  # a random-weight smoke model
    out = root / "09_query"
    files = [out / "answers.parquet", out / "answers" / f"{rid}.parquet", out / "query.json"]
    with FakeOpenAI(yes_for({"clonic"})) as srv:
        qp = params_for(srv.url, arms=("raw",), features=("clonic", "tonic"))
        qp = replace(qp, vision=replace(qp.vision, model="tiny-vlm"), audio=replace(qp.audio, backend="none"))
        run_local(query.STAGE, root, Params(query=qp))
    good = {f: f.read_bytes() for f in files}
    summary = json.loads(good[out / "query.json"])
    assert summary["random_weights"] and summary["answers"] == read_table("answers", files[0]).num_rows > 0
    assert json.loads((out / "state.json").read_text()) == {"recordings": 1, "stale": [], "missing": []}

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    # a served model (not a smoke model) that would have flipped random_weights, had an answer come back
    qp = replace(qp, vision=replace(qp.vision, model="served-vlm", base_url=dead, retries=0, timeout_s=1.0))
    with pytest.raises(RunFailed, match=f"query failed for {rid}: EndpointError"):
        run_local(query.STAGE, root, Params(query=qp))
    assert {f: f.read_bytes() for f in files} == good
    assert json.loads((out / "state.json").read_text()) == {"recordings": 1, "stale": [rid], "missing": []}
