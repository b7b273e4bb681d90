"""ingest: pseudonymous ids, idempotency, and a quarantine row for every bad input."""

import hashlib
import io
import os
import shutil
import struct
import time
import wave
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.identity import ID_MAP, load_id_key, recording_id, sha256_file
from tasks.ingest import MANIFEST, QUARANTINE, ingest
from tasks.media import VideoWriter, iter_frames
from tasks.params import IngestParams
from tasks.schema import read_table

KEY = b"0" * 64
FPS = 10
SECONDS = 4
SR = 16000
OLD = time.time() - 3600  # mtime of files that finished copying long ago


def _frames(w: int, h: int, n: int):
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[: h // 8] = (255, 0, 0)  # red band on top: tells upright from rotated
        img[:, (i * 3) % w] = 255
        yield img


def make_clip(path: Path, *, w=64, h=48, audio=True, seconds=SECONDS, **writer_kw) -> Path:
    n = seconds * FPS
    with VideoWriter(path, width=w, height=h, fps=FPS, audio_rate=SR if audio else None, **writer_kw) as vw:
        if audio:
            t = np.arange(SR * seconds) / SR
            vw.write_audio(0.2 * np.sin(2 * np.pi * 220 * t))
        for img in _frames(w, h, n):
            vw.write(img)
    return path


def make_rotated(path: Path) -> Path:
    """Stored portrait (rotated 90 degrees CCW) with display rotation -90: shows upright."""
    with VideoWriter(path, width=48, height=64, fps=FPS, rotation_deg=-90) as vw:
        for img in _frames(64, 48, SECONDS * FPS):
            vw.write(np.rot90(img, 1))
    return path


def make_streams(path: Path, cameras: tuple[tuple[int, int, int], ...], *, cover: int = 0) -> Path:
    """Video streams (width, height, seconds) in this order; ``cover`` > 0 adds an attached picture (cover
    art) of that size, larger than any camera."""
    with av.open(str(path), "w") as c:
        streams = []
        if cover:
            s = c.add_stream("mjpeg", rate=1)
            s.width, s.height, s.pix_fmt = cover, cover, "yuvj420p"
            s.disposition = av.stream.Disposition.attached_pic
            streams.append((s, cover, cover, 1))
        for w, h, sec in cameras:
            s = c.add_stream("libx264", rate=FPS)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            streams.append((s, w, h, sec * FPS))
        for s, w, h, n in streams:
            for img in _frames(w, h, n):
                c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            c.mux(s.encode())
    return path


def make_audio_longer(path: Path, seconds: int = 3, extra_s: float = 0.064) -> Path:
    """A valid clip whose sound track runs ``extra_s`` past its last frame (common in camera files)."""
    with VideoWriter(path, width=64, height=48, fps=FPS, audio_rate=SR) as vw:
        t = np.arange(int(SR * (seconds + extra_s))) / SR
        vw.write_audio(0.2 * np.sin(2 * np.pi * 220 * t))
        for img in _frames(64, 48, seconds * FPS):
            vw.write(img)
    return path


def make_vfr(path: Path) -> Path:
    t = 0.0
    with VideoWriter(path, width=64, height=48, fps=FPS) as vw:
        for i, img in enumerate(_frames(64, 48, 40)):
            vw.write(img, pts_s=t)
            t += 0.04 if i % 2 else 0.16
    return path


MKV_DURATION_ID = bytes([0x44, 0x89])  # EBML id of Segment/Info/Duration


def patch_mkv_duration(path: Path, factor: float) -> None:
    """Scale the Matroska header's duration: it no longer matches the frames in the file."""
    data = bytearray(path.read_bytes())
    i = data.index(MKV_DURATION_ID)
    assert data[i + 2] == 0x88, "expected an 8-byte float duration"
    (value,) = struct.unpack(">d", data[i + 3:i + 11])
    data[i + 3:i + 11] = struct.pack(">d", value * factor)
    path.write_bytes(bytes(data))


def wav_bytes(seconds=2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.sin(np.arange(SR * seconds) / 10) * 3000).astype("<i2").tobytes())
    return buf.getvalue()


EXPECTED = {
    # name: (quarantine reason or None, flags that must be present)
    "doe_jane_good.mp4": (None, set()),
    "doe_jane_no_audio.mp4": (None, {"no_audio"}),
    "doe_jane_rotated.mp4": (None, {"rotated_270", "no_audio"}),
    "doe_jane_vfr.mp4": (None, {"vfr"}),
    "doe_jane_odd_dims_mjpeg.avi": (None, {"odd_dimensions", "codec_mjpeg"}),
    "doe_jane_hevc.mkv": (None, {"codec_hevc"}),
    "doe_jane_av1.mkv": (None, {"codec_av1"}),  # the codec, not the decoder (libdav1d)
    "doe_jane_preview_then_camera.mp4": (None, {"multiple_video_streams"}),
    "doe_jane_two_cameras.mp4": (None, {"multiple_video_streams"}),
    "doe_jane_cover_art.mp4": (None, set()),
    "doe_jane_audio_longer.mp4": (None, set()),
    "doe_jane_truncated.mp4": ("truncated", None),
    "doe_jane_cut_midway_faststart.mp4": ("corrupt", None),
    "doe_jane_zero.mp4": ("empty_file", None),
    "doe_jane_not_a_video.mov": ("not_a_video", None),
    "doe_jane_audio_only.mkv": ("no_video_stream", None),
    "doe_jane_absurd_header.mkv": ("inconsistent_header", None),
}


@pytest.fixture(scope="module")
def inbox(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inbox")
    make_clip(d / "doe_jane_good.mp4")
    make_clip(d / "doe_jane_no_audio.mp4", audio=False)
    make_rotated(d / "doe_jane_rotated.mp4")
    make_vfr(d / "doe_jane_vfr.mp4")
    make_clip(d / "doe_jane_odd_dims_mjpeg.avi", w=65, h=49, audio=False, codec="mjpeg", pix_fmt="yuvj444p")
    make_clip(d / "doe_jane_hevc.mkv", codec="libx265", audio=False)
    make_clip(d / "doe_jane_av1.mkv", codec="libsvtav1", audio=False)
    make_streams(d / "doe_jane_preview_then_camera.mp4", ((32, 24, 1), (64, 48, SECONDS)))
    make_streams(d / "doe_jane_two_cameras.mp4", ((64, 48, SECONDS), (128, 96, SECONDS)))
    make_streams(d / "doe_jane_cover_art.mp4", ((64, 48, SECONDS),), cover=160)
    make_audio_longer(d / "doe_jane_audio_longer.mp4")
    full = make_clip(d / "src_full.mp4", seconds=8)  # moov at the end (ffmpeg default)
    (d / "doe_jane_truncated.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    fast = make_clip(d / "src_fast.mp4", seconds=8, container_options={"movflags": "faststart"})
    (d / "doe_jane_cut_midway_faststart.mp4").write_bytes(fast.read_bytes()[: int(fast.stat().st_size * 0.6)])
    full.unlink()
    fast.unlink()
    (d / "doe_jane_zero.mp4").write_bytes(b"")
    (d / "doe_jane_not_a_video.mov").write_text("these are clinical notes, not a video\n" * 50)
    (d / "doe_jane_audio_only.mkv").write_bytes(wav_bytes())
    make_clip(d / "doe_jane_absurd_header.mkv")
    patch_mkv_duration(d / "doe_jane_absurd_header.mkv", 100)
    (d / "readme.txt").write_text("ignored: not a video extension")
    for p in d.iterdir():
        os.utime(p, (OLD, OLD))
    return d


@pytest.fixture(scope="module")
def ingested(inbox, tmp_path_factory):
    before = {p.name: sha256_file(p) for p in inbox.iterdir()}
    out = tmp_path_factory.mktemp("01_ingest")
    report = ingest(inbox, out, IngestParams(settle_s=5, probe_timeout_s=60), id_key=KEY)
    after = {p.name: sha256_file(p) for p in inbox.iterdir()}
    assert before == after, "raw files must stay untouched"
    return out, report


def _by_name(out: Path) -> dict[str, str]:
    return {Path(r["source_path"]).name: r["recording_id"] for r in read_table("id_map", out / ID_MAP).to_pylist()}


def test_every_file_is_accounted_for(ingested):
    out, report = ingested
    names = _by_name(out)
    assert set(names) == set(EXPECTED)  # readme.txt ignored; nothing silently dropped
    manifest = {r["recording_id"]: r for r in read_table("manifest", out / MANIFEST).to_pylist()}
    quarantine = {r["recording_id"]: r for r in read_table("quarantine", out / QUARANTINE).to_pylist()}
    assert not set(manifest) & set(quarantine)
    for name, (reason, flags) in EXPECTED.items():
        rid = names[name]
        if reason is None:
            assert rid in manifest, f"{name} should be accepted, got {quarantine.get(rid)}"
            assert flags <= set(manifest[rid]["flags"]), (name, manifest[rid]["flags"])
        else:
            assert rid in quarantine, f"{name} should be quarantined as {reason}"
            q = quarantine[rid]
            assert q["reason"] == reason, (name, q)
            assert q["stage"] == "ingest" and len(q["detail"]) > 10


def test_cut_file_reports_decoded_coverage(ingested):
    out, _ = ingested
    rid = _by_name(out)["doe_jane_cut_midway_faststart.mp4"]
    q = {r["recording_id"]: r for r in read_table("quarantine", out / QUARANTINE).to_pylist()}[rid]
    assert 0.3 < q["decoded_coverage"] < 0.75
    assert "%" in q["detail"]


def test_manifest_probe_values(ingested):
    out, _ = ingested
    names = _by_name(out)
    m = {r["recording_id"]: r for r in read_table("manifest", out / MANIFEST).to_pylist()}
    good = m[names["doe_jane_good.mp4"]]
    assert (good["width"], good["height"], good["fps"]) == (64, 48, FPS)
    assert abs(good["duration_s"] - SECONDS) < 0.2 and good["has_audio"] and good["sample_rate"] == SR
    rot = m[names["doe_jane_rotated.mp4"]]
    assert (rot["width"], rot["height"], rot["rotation_deg"]) == (64, 48, 270)
    assert m[names["doe_jane_vfr.mp4"]]["vfr"] and not good["vfr"]


def test_every_reader_takes_the_largest_moving_picture_stream(ingested, inbox):
    out, _ = ingested
    names = _by_name(out)
    m = {r["recording_id"]: r for r in read_table("manifest", out / MANIFEST).to_pylist()}
    preview = m[names["doe_jane_preview_then_camera.mp4"]]
    assert (preview["width"], preview["height"], preview["duration_s"]) == (64, 48, SECONDS)
    two = m[names["doe_jane_two_cameras.mp4"]]
    assert (two["width"], two["height"]) == (128, 96)  # not silently the first, smaller one
    cover = m[names["doe_jane_cover_art.mp4"]]
    assert (cover["width"], cover["height"]) == (64, 48) and "multiple_video_streams" not in cover["flags"]
    frames = list(iter_frames(inbox / "doe_jane_two_cameras.mp4"))
    assert len(frames) == SECONDS * FPS and frames[0].rgb.shape[:2] == (96, 128)
    assert next(iter(iter_frames(inbox / "doe_jane_cover_art.mp4"))).rgb.shape[:2] == (48, 64)


def test_duration_is_the_video_streams_own(ingested, inbox, tmp_path):
    """A sound track 64 ms longer than the picture must not make the video look 2 % short (corrupt)."""
    out, _ = ingested
    rid = _by_name(out)["doe_jane_audio_longer.mp4"]
    row = {r["recording_id"]: r for r in read_table("manifest", out / MANIFEST).to_pylist()}[rid]
    assert abs(row["duration_s"] - 3.0) < 0.01, row["duration_s"]
    from tasks.face_blur import RecordingInput, deidentify_recording
    from tasks.params import DeidentifyParams

    res = deidentify_recording(RecordingInput(rid, inbox / "doe_jane_audio_longer.mp4", row["duration_s"]),
                               tmp_path, DeidentifyParams(text="none", audio="drop"))
    assert res["status"] == "ok" and res["decoded_coverage"] > 0.99, res


def test_rotated_frames_come_out_upright(inbox):
    frame = next(iter(iter_frames(inbox / "doe_jane_rotated.mp4")))
    assert frame.rgb.shape[:2] == (48, 64)
    top, bottom = frame.rgb[:4].mean(axis=(0, 1)), frame.rgb[-4:].mean(axis=(0, 1))
    assert top[0] > 150 and top[1] < 100 and bottom[0] < 100


def test_ids_are_pseudonymous_and_keyed(ingested, inbox):
    out, _ = ingested
    for name, rid in _by_name(out).items():
        digest = sha256_file(inbox / name)
        assert rid == recording_id(digest, KEY)
        assert rid != recording_id(digest, b"1" * 64)  # another site key, other ids
        assert Path(name).stem.lower() not in rid.lower()


def test_no_file_name_or_path_outside_the_private_map(ingested, inbox):
    out, _ = ingested
    for table in (MANIFEST, QUARANTINE):
        text = str(pq.read_table(out / table).to_pylist())
        assert str(inbox) not in text
        assert "doe" not in text.lower() and "jane" not in text.lower(), table
        # nor the raw file's plain SHA-256: anyone holding the raw file could link it to its pseudonym
        for p in inbox.iterdir():
            assert sha256_file(p) not in text, (table, p.name)


def test_private_map_is_owner_only(ingested):
    out, _ = ingested
    assert (out / ID_MAP).stat().st_mode & 0o777 == 0o600
    assert (out / ID_MAP).parent.stat().st_mode & 0o777 == 0o700


def test_idempotent_and_incremental(inbox, tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    for n in ("doe_jane_good.mp4", "doe_jane_no_audio.mp4", "doe_jane_zero.mp4"):
        shutil.copy2(inbox / n, box / n)
    out = tmp_path / "out"
    params = IngestParams(settle_s=5)
    first = ingest(box, out, params, id_key=KEY)
    assert (len(first.accepted), len(first.quarantined)) == (2, 1)
    snapshot = {p: (out / p).read_bytes() for p in (MANIFEST, QUARANTINE)}
    second = ingest(box, out, params, id_key=KEY)
    assert (second.accepted, second.quarantined, second.known) == ((), (), 3)
    assert read_table("manifest", out / MANIFEST).num_rows == 2
    assert read_table("quarantine", out / QUARANTINE).num_rows == 1
    assert {p: (out / p).read_bytes() for p in snapshot} != {} and read_table("id_map", out / ID_MAP).num_rows == 3
    # a renamed copy of known content is the same recording
    shutil.copy2(box / "doe_jane_good.mp4", box / "good_copy.mp4")
    assert ingest(box, out, params, id_key=KEY).accepted == ()
    # one new file adds exactly one row
    make_clip(box / "new.mp4", seconds=3)
    os.utime(box / "new.mp4", (OLD, OLD))
    third = ingest(box, out, params, id_key=KEY)
    assert len(third.accepted) == 1
    assert read_table("manifest", out / MANIFEST).num_rows == 3


def test_file_still_being_written_is_left_for_next_run(inbox, tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    shutil.copy(inbox / "doe_jane_good.mp4", box / "fresh.mp4")  # mtime = now
    out = tmp_path / "out"
    params = IngestParams(settle_s=30)
    r1 = ingest(box, out, params, id_key=KEY)
    assert (r1.accepted, r1.pending) == ((), 1)
    r2 = ingest(box, out, params, id_key=KEY, now=time.time() + 60)
    assert len(r2.accepted) == 1 and r2.pending == 0


def test_decoder_that_does_not_answer_is_quarantined_and_batch_continues(inbox, tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    shutil.copy2(inbox / "doe_jane_good.mp4", box / "slow.mp4")
    out = tmp_path / "out"
    # A decoder that cannot answer in 1 ms stands in for one that hangs: the
    # probe runs in a child process that is killed at the deadline.
    report = ingest(box, out, IngestParams(settle_s=5, probe_timeout_s=0.001), id_key=KEY)
    assert [r for _, r in report.quarantined] == ["decoder_timeout"]
    shutil.copy2(inbox / "doe_jane_no_audio.mp4", box / "next.mp4")
    report2 = ingest(box, out, IngestParams(settle_s=5), id_key=KEY)
    assert len(report2.accepted) == 1  # the batch goes on; the timed-out file stays quarantined


def test_missing_inbox_is_a_clear_error(tmp_path):
    from tasks.errors import SemioflowError

    with pytest.raises(SemioflowError, match="inbox folder .* does not exist") as err:
        ingest(tmp_path / "ward7_nope", tmp_path / "out", IngestParams(), id_key=KEY)
    assert "ward7" not in str(err.value)  # the message reaches Prefect's logs: no path in it


def test_id_key_is_created_private_and_reused(tmp_path):
    p = tmp_path / "k" / "id_key"
    k1 = load_id_key(p)
    assert p.stat().st_mode & 0o777 == 0o600 and len(k1) == 64
    assert load_id_key(p) == k1
    assert hashlib.sha256(k1).hexdigest() != hashlib.sha256(load_id_key(tmp_path / "other")).hexdigest()


# ---- media I/O: the encoder every stage writes through ---------------------------------------------


def _moving_frames(n: int = 60, w: int = 320, h: int = 240) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (rng.integers(0, 40, (h, w, 3)) + np.stack([xx * 0.4, yy * 0.5, (xx + yy) * 0.2], -1)).astype(np.uint8)
    out = []
    for k in range(n):
        img = base.copy()
        cx, cy = int(40 + 3.5 * k), int(120 + 60 * np.sin(k / 6))
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 900] = (230, 180, 120)
        img[20:60, (5 * k) % (w - 40):(5 * k) % (w - 40) + 40] = (40, 90, 200)
        out.append(img)
    return out


def test_identical_frames_encode_to_identical_bytes(tmp_path):
    """x264's macroblock tree made each run's file differ (decoded pixels up to ~80 levels); media turns it off."""
    frames = _moving_frames()
    digests = set()
    for k in range(3):
        with VideoWriter(tmp_path / f"{k}.mp4", width=320, height=240, fps=25) as w:
            for f in frames:
                w.write(f)
        digests.add(hashlib.sha256((tmp_path / f"{k}.mp4").read_bytes()).hexdigest())
    assert len(digests) == 1


def _key_in_child(path: str) -> bytes:
    return load_id_key(path)


def test_id_key_created_by_concurrent_first_runs_is_one_key(tmp_path):
    """Several workers of a fresh site create the key at once: all must get the same one."""
    import multiprocessing as mp

    p = tmp_path / "site" / "id_key"
    with mp.get_context("spawn").Pool(6) as pool:
        keys = pool.map(_key_in_child, [str(p)] * 24)
    assert len(set(keys)) == 1 and keys[0] == p.read_bytes().strip()
    assert oct(p.stat().st_mode & 0o777) == "0o600"
    assert [f.name for f in p.parent.iterdir()] == ["id_key"]  # no candidate files left behind


def test_two_inboxes_two_cohorts_through_the_stage(inbox, tmp_path, monkeypatch):
    """ingest.inbox -> seizure, ingest.gait_inbox -> gait; content known in one cohort is not added to the other;
    a manifest written before cohorts existed reads as seizure recordings."""
    import dataclasses

    from tasks import ingest as stage
    from tasks.params import Params

    key_file = tmp_path / "id_key"
    key_file.write_bytes(KEY)
    monkeypatch.setenv("SEMIOFLOW_ID_KEY_FILE", str(key_file))
    seizure, gait = tmp_path / "seizure", tmp_path / "gait"
    seizure.mkdir()
    gait.mkdir()
    shutil.copy2(inbox / "doe_jane_good.mp4", seizure / "a.mp4")
    shutil.copy2(inbox / "doe_jane_no_audio.mp4", gait / "walk.mp4")
    shutil.copy2(inbox / "doe_jane_good.mp4", gait / "a_again.mp4")  # same content as a seizure recording
    base = Params()
    params = dataclasses.replace(base, ingest=dataclasses.replace(base.ingest, inbox=str(seizure),
                                                                  gait_inbox=str(gait), settle_s=0.0))
    out = tmp_path / "01_ingest"
    res = stage.run(tmp_path, out, params)
    assert res["accepted"] == 2 and res["known"] == 1
    assert "ingest: 1 new" in res["line"] and "ingest gait: 1 new" in res["line"]
    cohorts = {r["recording_id"]: r["cohort"] for r in read_table("manifest", out / MANIFEST).to_pylist()}
    assert sorted(cohorts.values()) == ["gait", "seizure"]
    assert cohorts[recording_id(sha256_file(gait / "walk.mp4"), KEY)] == "gait"
    # an older manifest (no cohort column) gains one on the next run: its recordings were seizure recordings
    legacy = read_table("manifest", out / MANIFEST).drop(["cohort"])
    pq.write_table(legacy, out / MANIFEST)
    make_clip(seizure / "b.mp4", seconds=3)
    os.utime(seizure / "b.mp4", (OLD, OLD))
    gait_only = dataclasses.replace(params, ingest=dataclasses.replace(params.ingest, gait_inbox=""))
    assert stage.run(tmp_path, out, gait_only)["accepted"] == 1
    cohorts = [r["cohort"] for r in read_table("manifest", out / MANIFEST).to_pylist()]
    assert sorted(cohorts) == ["seizure", "seizure", "seizure"]
    with pytest.raises(Exception, match="no inbox to scan"):
        stage.run(tmp_path, out, dataclasses.replace(params, ingest=dataclasses.replace(params.ingest, inbox="",
                                                                                          gait_inbox="")))


def test_a_file_that_grows_after_ingest_supersedes_its_old_id(inbox, tmp_path):
    """A writer that pauses longer than settle_s: the half file got an id; the finished file replaces it."""
    box, out = tmp_path / "box", tmp_path / "out"
    box.mkdir()
    # a recorder writing fragmented MP4: any prefix cut at a fragment is a valid, shorter video
    full = make_clip(tmp_path / "full.mp4", seconds=8,
                     container_options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}).read_bytes()
    (box / "night.mp4").write_bytes(full[:len(full) // 2])  # the writer paused here
    os.utime(box / "night.mp4", (OLD, OLD))
    first = ingest(box, out, IngestParams(settle_s=5), id_key=KEY)
    assert len(first.accepted) == 1
    old = first.accepted[0]
    (box / "night.mp4").write_bytes(full)  # ...and went on: same path, the old bytes then more
    os.utime(box / "night.mp4", (OLD + 60, OLD + 60))
    second = ingest(box, out, IngestParams(settle_s=5), id_key=KEY)
    assert len(second.accepted) == 1 and second.accepted[0] != old and second.superseded == (old,)
    manifest = [r["recording_id"] for r in read_table("manifest", out / MANIFEST).to_pylist()]
    assert manifest == [second.accepted[0]]
    q = {r["recording_id"]: r for r in read_table("quarantine", out / QUARANTINE).to_pylist()}
    assert q[old]["reason"] == "superseded" and second.accepted[0] in q[old]["detail"]
    status = {r["recording_id"]: r["status"] for r in read_table("id_map", out / ID_MAP).to_pylist()}
    assert status == {old: "superseded", second.accepted[0]: "accepted"}
    assert ingest(box, out, IngestParams(settle_s=5), id_key=KEY).known == 1  # and stays settled


def test_a_path_reused_for_another_recording_keeps_both(inbox, tmp_path):
    """A recorder that writes every night's recording to the same name (latest.mp4): the new file does not
    start with the old one's bytes, so it is a second recording, and the first one keeps its id."""
    box, out = tmp_path / "box", tmp_path / "out"
    box.mkdir()
    shutil.copy(inbox / "doe_jane_good.mp4", box / "latest.mp4")
    os.utime(box / "latest.mp4", (OLD, OLD))
    first = ingest(box, out, IngestParams(settle_s=5), id_key=KEY).accepted
    shutil.copy(inbox / "doe_jane_no_audio.mp4", box / "latest.mp4")
    os.utime(box / "latest.mp4", (OLD + 60, OLD + 60))
    second = ingest(box, out, IngestParams(settle_s=5), id_key=KEY)
    assert second.superseded == () and len(second.accepted) == 1
    manifest = {r["recording_id"] for r in read_table("manifest", out / MANIFEST).to_pylist()}
    assert manifest == {*first, *second.accepted}


def test_deidentify_refuses_a_source_that_changed_since_ingest(inbox, tmp_path):
    from tasks.face_blur import RecordingInput, deidentify_recording
    from tasks.params import DeidentifyParams

    src = tmp_path / "grows.mp4"
    src.write_bytes((inbox / "doe_jane_good.mp4").read_bytes())
    digest = sha256_file(src)
    make_clip(src, seconds=6)  # grown since ingest hashed it
    params = DeidentifyParams(text="none", audio="drop")
    res = deidentify_recording(RecordingInput("R0000000001", src, SECONDS, digest), tmp_path / "out", params)
    assert (res["status"], res["reason"]) == ("quarantined", "source_changed")
    assert not (tmp_path / "out" / "videos" / "R0000000001.mp4").exists()
    src.unlink()
    res = deidentify_recording(RecordingInput("R0000000001", src, SECONDS, digest), tmp_path / "out", params)
    assert res["reason"] == "source_changed"  # gone is not "undecodable": the detail says what happened


LEASE_HOLDER = """
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)  # a holder that does not give the file up when asked
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("held", flush=True)
time.sleep(600)
"""


def test_a_file_another_program_holds_does_not_stall_ingest(inbox, tmp_path):
    """A held write lease makes a plain open() wait for the holder (45 s lease-break time here, more on a
    share); ingest leaves that file for the next run and finishes the batch at once."""
    import subprocess
    import sys

    box, out = tmp_path / "box", tmp_path / "out"
    box.mkdir()
    for name in ("held.mp4", "free.mp4"):
        shutil.copy2(inbox / ("doe_jane_good.mp4" if name == "held.mp4" else "doe_jane_no_audio.mp4"), box / name)
    holder = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, str(box / "held.mp4")], stdout=subprocess.PIPE,
                              text=True)
    try:
        if holder.stdout.readline().strip() != "held":
            pytest.skip("this file system does not grant leases")
        t0 = time.monotonic()
        report = ingest(box, out, IngestParams(settle_s=5), id_key=KEY)
        assert time.monotonic() - t0 < 20
        assert (len(report.accepted), report.unreadable) == (1, 1)
        assert "not readable now" in report.describe()
    finally:
        holder.kill()
        holder.wait()
    again = ingest(box, out, IngestParams(settle_s=5), id_key=KEY)
    assert (len(again.accepted), again.unreadable, again.known) == (1, 0, 1)


def test_a_fifo_where_a_recording_was_is_not_read(tmp_path):
    from tasks.media import SourceBusy, inspect_with_timeout

    os.mkfifo(tmp_path / "pipe.mp4")
    t0 = time.monotonic()
    with pytest.raises(SourceBusy, match="not a regular file"):
        inspect_with_timeout(tmp_path / "pipe.mp4", 30, 30)
    assert time.monotonic() - t0 < 20
