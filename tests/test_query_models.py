"""query against real model code: `transformers serve` over HTTP, and models loaded in-process.

No weights of a real VLM exist here, so every model is a tiny random-weight
model of the real architecture (``tasks.tiny_models.build_tiny``), saved to
a folder and loaded through the same code a real checkpoint takes.  Their
answers are noise: these tests check the plumbing (requests, counts, the
cache, P(yes), the random-weights label), never the answers' content.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks.tiny_models import build_tiny
from tasks.params import EndpointParams, QueryParams
from tasks.answers import RANDOM_TAG
from tasks.query import query_recording
from tasks.query.parse import CUT_MARK
from tasks.schema import read_table
from tests.test_query import data  # noqa: F401 - the shared phantom data dir fixture

BIN = Path(sys.executable).parent
ALLOWED = {"yes", "no", "unparsed", "refused", "truncated"}
SMALL = dict(max_frames=4, max_pixels=112 * 112, max_tokens=12)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_tiny(arch, root / arch, seed=1) for arch in ("qwen2_5_vl", "internvl", "qwen3_vl",
                                                                        "audioflamingo3")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_transformers_serve_end_to_end_and_rerun_makes_zero_requests(data, tiny, tmp_path):  # noqa: F811
    d, rid = data
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(BIN / "transformers"), "serve", str(tiny["qwen2_5_vl"]), "--host", "127.0.0.1",
                                 "--port", str(port), "--device", "cpu"], stdout=fh, stderr=subprocess.STDOUT,
                                env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        ep = EndpointParams(backend="openai", model=str(tiny["qwen2_5_vl"]), base_url=f"http://127.0.0.1:{port}/v1",
                            concurrency=2, timeout_s=120)
        params = QueryParams(arms=("raw",), features=("clonic", "head_turning"), vision=ep,
                             audio=EndpointParams(backend="none"), **SMALL)
        first = query_recording(rid, d, tmp_path / "q", params)
        served = log.read_text().count("POST /v1/chat/completions")
        second = query_recording(rid, d, tmp_path / "q", params)
        served_again = log.read_text().count("POST /v1/chat/completions")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert first["requests"] == first["questions"] == 2 * 2 and served >= 4, log.read_text()[-2000:]
    assert second["requests"] == 0 and second["cache_hits"] == 4
    assert served_again == served, "the server saw requests on the cached rerun"
    rows = read_table("answers", tmp_path / "q" / "answers" / f"{rid}.parquet").to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} <= ALLOWED
    assert all(r["raw_text"] is not None and r["model_id"].endswith(RANDOM_TAG) for r in rows)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "internvl", "qwen3_vl"])
def test_in_process_vision_models(data, tiny, tmp_path, arch):  # noqa: F811
    d, rid = data
    ep = EndpointParams(backend="local", model=str(tiny[arch]), device="cpu")
    params = QueryParams(arms=("raw", "face_crop"), features=("clonic", "blank_stare"), vision=ep,
                         audio=EndpointParams(backend="none"), **SMALL)
    res = query_recording(rid, d, tmp_path, params)
    assert res["requests"] == res["questions"] == 2 * (2 + 1) and res["random_weights"]
    rows = read_table("answers", tmp_path / "answers" / f"{rid}.parquet").to_pylist()
    # constrained decoding (the default): every answer is yes or no, even from random weights at a
    # 12-token cap, and the text is the forced JSON with the model's own justification after it
    assert {r["status"] for r in rows} <= {"yes", "no"}
    assert all(r["present"] == (r["status"] == "yes") for r in rows)
    assert all(r["status"] == ("yes" if r["yes_prob"] >= 0.5 else "no") for r in rows), "greedy = the likelier word"
    assert all(r["raw_text"].replace('" yes', '"yes').replace('" no', '"no').startswith(
        f'{{"present": "{r["status"]}", "justification": "') for r in rows)
    assert all(r["justification"] is None or r["justification"].endswith(CUT_MARK) or r["finish_reason"] == "stop"
               for r in rows)
    assert all(0.0 <= r["yes_prob"] <= 1.0 for r in rows), "P(yes) from the first answer token"
    assert {r["model_id"] for r in rows} == {rows[0]["model_id"]} and rows[0]["model_id"].startswith(arch)
    again = query_recording(rid, d, tmp_path, params)
    assert again["requests"] == 0


def test_in_process_audio_model_with_transcript_arm(data, tiny, tmp_path):  # noqa: F811
    d, rid = data
    ep = EndpointParams(backend="local", model=str(tiny["audioflamingo3"]), device="cpu")
    params = QueryParams(arms=("audio_raw", "audio_denoised", "audio_transcript"), vision=EndpointParams(
        backend="none"), audio=ep, **SMALL)
    res = query_recording(rid, d, tmp_path, params)
    rows = read_table("answers", tmp_path / "answers" / f"{rid}.parquet").to_pylist()
    by_arm = {}
    for r in rows:
        by_arm.setdefault(r["arm"], set()).add(r["status"])
    # the fixture has no transcript stage output: that arm is not assessable, the two audio arms are asked
    assert by_arm["audio_transcript"] == {"not_assessable"}
    assert by_arm["audio_raw"] <= ALLOWED and by_arm["audio_denoised"] <= ALLOWED
    assert res["requests"] == 2 * 2 * 2  # windows x arms x audio features
    assert all(r["model_id"].startswith("audioflamingo3") for r in rows if r["status"] != "not_assessable")


def test_free_decoding_is_still_there_and_keyed_apart(data, tiny, tmp_path):  # noqa: F811
    """constrained: false lets the model write the whole answer (random weights then fail the format)."""
    d, rid = data
    ep = EndpointParams(backend="local", model=str(tiny["qwen2_5_vl"]), device="cpu")
    base = dict(arms=("raw",), features=("clonic",), vision=ep, audio=EndpointParams(backend="none"), **SMALL)
    query_recording(rid, d, tmp_path, QueryParams(**base))
    free = query_recording(rid, d, tmp_path, QueryParams(**base, constrained=False))
    assert free["requests"] == free["questions"], "a constrained answer must not be served from the cache"
    rows = read_table("answers", tmp_path / "answers" / f"{rid}.parquet").to_pylist()
    assert all(r["raw_text"].startswith('{"present": "') for r in rows)
    assert not any(r["raw_text"].startswith(('{"present": "yes", "justification": "',
                                              '{"present": "no", "justification": "')) for r in rows)


def test_sampled_constrained_answers_are_seeded_per_request(data, tiny, tmp_path):  # noqa: F811
    """temperature > 0: each request draws with its own seed (both words occur over a window's questions
    at P(yes) ~0.4-0.5), and the same request draws the same word again."""
    d, rid = data
    ep = EndpointParams(backend="local", model=str(tiny["qwen2_5_vl"]), device="cpu")
    params = QueryParams(arms=("raw", "face_crop", "pose_overlay"), vision=ep, audio=EndpointParams(backend="none"),
                         **{**SMALL, "max_tokens": 6}, temperature=1.0)
    query_recording(rid, d, tmp_path / "a", params)
    query_recording(rid, d, tmp_path / "b", params)
    a, b = (read_table("answers", tmp_path / x / "answers" / f"{rid}.parquet").to_pylist() for x in "ab")
    assert [r["status"] for r in a] == [r["status"] for r in b]
    # the drawn word, from the text (at a 6-token cap nothing may follow it: no justification, so unparsed)
    words = [re.match(r'\{"present": " ?(yes|no)"', r["raw_text"]).group(1) for r in a if r["raw_text"]]
    assert set(words) == {"yes", "no"}, [r["yes_prob"] for r in a]
    assert words == [re.match(r'\{"present": " ?(yes|no)"', r["raw_text"]).group(1) for r in b if r["raw_text"]]
    asked = [r for r in a if r["raw_text"]]
    assert all(r["status"] in (w, "unparsed") for r, w in zip(asked, words)), "the word, or no answer"
