"""audio stage: denoising against planted noise (exact SNR truth), flow outputs, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import audio, dsp
from tasks.media import VideoWriter, read_audio
from tasks.params import AudioParams, WindowParams
from tasks.schema import read_table, write_table
from tasks.synth import sound
from tasks.window import window_bounds

SR = 16_000  # Hz
GROAN = (6.0, 8.0)  # s: planted ictal vocalization (start, duration)


def clean_track(duration_s: float = 20.0) -> np.ndarray:
    """Phantom soundtrack without room tone: a groan and a staff prompt."""
    x = np.zeros(int(duration_s * SR))
    for clip in (sound.Clip("groan", GROAN[0], GROAN[1], 140.0, 7), sound.Clip("staff_speech", 16.0, 2.0, 190.0, 8)):
        sig = sound.render_clip(clip, SR)
        i = int(clip.t_start_s * SR)
        x[i:i + sig.size] += sig[: x.size - i]
    return x


def planted_noise(n: int, seed: int = 0) -> np.ndarray:
    """Stationary, mildly coloured broadband noise (unit-ish RMS) plus a 50 Hz hum."""
    rng = np.random.default_rng(seed)
    w = np.convolve(rng.standard_normal(n), [1.0, 0.7, 0.3], mode="same")
    return w + 0.3 * np.sin(2 * np.pi * 50.0 * np.arange(n) / SR)


def mix_at(clean: np.ndarray, noise: np.ndarray, event_snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    ev = slice(int(GROAN[0] * SR), int(sum(GROAN) * SR))
    k = np.sqrt(np.mean(clean[ev] ** 2) / np.mean(noise[ev] ** 2) / 10 ** (event_snr_db / 10))
    return (clean + k * noise).astype(np.float32), k * noise


def snr_db(clean: np.ndarray, est: np.ndarray) -> float:
    return 10 * np.log10(np.sum(clean**2) / np.sum((est - clean) ** 2))


@pytest.mark.parametrize("event_snr_db", [10.0, 0.0])
def test_spectral_gate_improves_exact_snr_and_keeps_the_vocalization(event_snr_db):
    clean = clean_track()
    x, _ = mix_at(clean, planted_noise(clean.size), event_snr_db)
    y = audio.denoise(x, SR, AudioParams())
    ev = slice(int(GROAN[0] * SR), int(sum(GROAN) * SR))
    quiet = np.r_[0:int(5 * SR), int(15 * SR):int(15.8 * SR)]  # nothing planted there
    before, after = snr_db(clean, x), snr_db(clean, y)
    kept = audio.band_energy_db(y[ev], SR) - audio.band_energy_db(clean[ev], SR)
    floor_drop = audio.rms_dbfs(x[quiet]) - audio.rms_dbfs(y[quiet])
    print(f"\n[audio] event SNR {event_snr_db:+.0f} dB: SNR {before:.1f} -> {after:.1f} dB (+{after - before:.1f}); "
          f"vocal-band energy in groan {kept:+.2f} dB vs clean; noise floor outside -{floor_drop:.1f} dB; "
          f"blind estimate {audio.estimate_snr_db(x, SR):.1f} -> {audio.estimate_snr_db(y, SR):.1f} dB")
    assert after - before >= 6.0
    assert abs(kept) <= (1.5 if event_snr_db >= 10 else 3.0)
    assert floor_drop >= 15.0
    assert audio.estimate_snr_db(y, SR) > audio.estimate_snr_db(x, SR) + 6.0


def test_wiener_also_improves_snr():
    clean = clean_track()
    x, _ = mix_at(clean, planted_noise(clean.size, seed=1), 10.0)
    y = audio.denoise(x, SR, AudioParams(method="wiener"))
    assert y.shape == x.shape and y.dtype == np.float32
    assert snr_db(clean, y) - snr_db(clean, x) >= 4.0


def test_blocks_give_the_same_result_as_one_pass(monkeypatch):
    clean = clean_track(12.0)
    x, _ = mix_at(clean, planted_noise(clean.size, seed=2), 5.0)
    noise = audio.noise_profile(x, SR, 0.2)
    whole = audio.denoise(x, SR, AudioParams(), noise=noise)
    monkeypatch.setattr(audio, "BLOCK_S", 2.5)
    blocked = audio.denoise(x, SR, AudioParams(), noise=noise)
    assert np.max(np.abs(whole - blocked)) < 1e-4


# ---- recording-level flow --------------------------------------------------------


def make_recording(data_dir, rid: str, samples: np.ndarray | None, duration_s: float) -> None:
    """De-identified-style MP4 (tiny frames, optional audio) and its windows table."""
    fps = 2.0
    with VideoWriter(data_dir / "02_deidentify" / "videos" / f"{rid}.mp4", width=64, height=48, fps=fps,
                     audio_rate=SR if samples is not None else None) as w:
        if samples is not None:
            w.write_audio(samples)
        for _ in range(int(duration_s * fps)):
            w.write(np.full((48, 64, 3), 90, np.uint8))
    rows = [dict(recording_id=rid, window_index=i, t_start_s=t0, t_end_s=t1, frame_start=int(t0 * fps),
                 frame_end=int(t1 * fps)) for i, (t0, t1) in enumerate(window_bounds(duration_s, WindowParams()))]
    write_table("windows", rows, data_dir / "04_window" / "windows" / f"{rid}.parquet")


def test_audio_recording_writes_windows_arms_and_quality(tmp_path):
    duration = 40.0
    clean = clean_track(duration)
    x, _ = mix_at(clean, planted_noise(clean.size, seed=3), 5.0)
    make_recording(tmp_path, "r1", x, duration)
    out = tmp_path / "07_audio"
    res = audio.audio_recording("r1", tmp_path, out, AudioParams())
    assert res["has_audio"] and not res["silent"] and res["flags"] == [] and res["n_windows"] == 2
    assert res["snr_after_db"] > res["snr_before_db"] + 6.0

    raw, sr = dsp.read_wav(out / "audio" / "r1_raw.wav")
    den, _ = dsp.read_wav(out / "audio" / "r1_denoised.wav")
    assert sr == SR and abs(raw.size / SR - duration) < 0.1 and den.size == raw.size
    # The vocalization survives the AAC round trip and the denoiser; the noise outside it drops.
    ev = slice(int(GROAN[0] * SR), int(sum(GROAN) * SR))
    quiet = slice(int(25 * SR), int(39 * SR))
    kept = audio.band_energy_db(den[ev], SR) - audio.band_energy_db(clean[ev], SR)
    drop = audio.rms_dbfs(raw[quiet]) - audio.rms_dbfs(den[quiet])
    print(f"\n[audio] via MP4/AAC: blind SNR {res['snr_before_db']:.1f} -> {res['snr_after_db']:.1f} dB; "
          f"groan vocal-band energy {kept:+.2f} dB vs clean; noise floor outside -{drop:.1f} dB")
    assert abs(kept) <= 3.0 and drop >= 12.0

    arms = read_table("arms", out / "arms" / "r1.parquet").to_pylist()
    assert {(a["window_index"], a["arm"]) for a in arms} == {(w, a) for w in (0, 1) for a in audio.ARMS}
    for a in arms:
        assert a["status"] == "ok" and (tmp_path / a["path"]).is_file()
        assert a["path"] == f"07_audio/windows/r1_w{a['window_index']:03d}_{a['arm'].removeprefix('audio_')}.wav"
    w1, _ = dsp.read_wav(out / "windows" / "r1_w001_denoised.wav")
    assert w1.size == 30 * SR  # the tail window ends at the recording's end: 10..40 s
    q = read_table("audio_quality", out / "quality" / "r1.parquet").to_pylist()[0]
    assert q["has_audio"] and q["method"] == "spectral_gate" and q["rms_dbfs"] < 0

    make_recording(tmp_path, "r2", None, 10.0)
    audio.audio_recording("r2", tmp_path, out, AudioParams())
    table = audio.STAGE.collect(out, ["r2", "r1"])
    assert table.num_rows == 4 + 2
    assert read_table("audio_quality", out / "audio_quality.parquet").num_rows == 2


def test_recording_without_audio_is_flagged_not_fatal(tmp_path):
    make_recording(tmp_path, "mute", None, 12.0)
    out = tmp_path / "07_audio"
    res = audio.audio_recording("mute", tmp_path, out, AudioParams())
    assert not res["has_audio"] and res["flags"] == ["no_audio_stream"] and res["snr_after_db"] is None
    arms = read_table("arms", out / "arms" / "mute.parquet").to_pylist()
    assert [(a["arm"], a["status"], a["path"]) for a in arms] == [("audio_raw", "no_audio", None),
                                                                  ("audio_denoised", "no_audio", None)]
    assert not (out / "audio").exists()
    q = read_table("audio_quality", out / "quality" / "mute.parquet").to_pylist()[0]
    assert q["has_audio"] is False and q["rms_dbfs"] is None and q["duration_s"] == 0.0


def test_silent_audio_is_flagged_and_not_denoised(tmp_path):
    make_recording(tmp_path, "hush", np.zeros(12 * SR, np.float32), 12.0)
    out = tmp_path / "07_audio"
    res = audio.audio_recording("hush", tmp_path, out, AudioParams())
    assert res["has_audio"] and res["silent"] and res["flags"] == ["silent"]
    arms = {a["arm"]: a for a in read_table("arms", out / "arms" / "hush.parquet").to_pylist()}
    assert arms["audio_raw"]["status"] == "silent" and arms["audio_raw"]["path"]
    assert arms["audio_denoised"]["status"] == "silent" and arms["audio_denoised"]["path"] is None
    assert not (out / "audio" / "hush_denoised.wav").exists()
    assert read_audio(tmp_path / "02_deidentify" / "videos" / "hush.mp4").size > 0


def test_wav_round_trip_and_window_slice(tmp_path):
    x = (0.5 * np.sin(np.linspace(0, 100, SR))).astype(np.float32)
    p = audio.write_wav(tmp_path / "a.wav", x, SR)
    y, sr = dsp.read_wav(p)
    assert sr == SR and np.max(np.abs(x - y)) < 1e-4
    s = dsp.window_slice(y, SR, 0.5, 1.5)
    assert s.size == SR and np.all(s[SR // 2 + 1:] == 0)
