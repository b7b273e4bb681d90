"""audio: extract each recording's soundtrack as mono 16 kHz and denoise it with STFT DSP.

Inputs (under ``data_dir``): ``02_deidentify/videos/<id>.mp4`` (the
de-identified video; its sound is the anonymised voice unless
``deidentify.audio`` says otherwise) and ``04_window/windows/<id>.parquet``.

Outputs (under ``out_dir`` = ``data_dir/07_audio``), all written atomically:

- ``audio/<id>_raw.wav``, ``audio/<id>_denoised.wav``: 16-bit PCM mono.
- ``windows/<id>_w<NNN>_raw.wav`` and ``..._denoised.wav``: one per window,
  cut at the window's [t_start_s, t_end_s) (zero-padded where the audio ends early).
- ``quality/<id>.parquet``: table ``audio_quality`` (one row).
- ``arms/<id>.parquet``: table ``arms``, arms ``audio_raw`` and
  ``audio_denoised`` per window; status ``ok | no_audio | silent``; path
  relative to ``data_dir`` (null when there is no file).

Denoising assumes stationary noise (room tone, ventilation, equipment hum):
the noise power spectrum is the mean power of the quietest
``noise_quantile`` share of STFT frames, then every bin gets a gain:

- ``spectral_gate``: bins ``gate_db`` above the noise pass, the rest drop to
  ``floor_db``; the binary mask is smoothed over time and frequency first
  (as in noisereduce's stationary mode) to avoid musical noise.
- ``wiener``: power-subtraction Wiener gain ``max(1 - N/|X|^2, floor)`` on a
  time-smoothed power spectrum.

Long recordings are processed in blocks (``BLOCK_S``) with margins, so the
STFT never holds more than a block; the noise profile is the median of the
blocks' profiles.  SNR figures in ``audio_quality`` are blind estimates
(``estimate_snr_db``): loud-frame power over quiet-frame power, no truth needed.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tasks.contract import Stage, Table
from tasks.layout import rel
from tasks.atomic import atomic_path
from tasks.dsp import PCM_MAX, window_slice
from tasks import layout
from tasks.layout import window_name
from tasks.media import read_audio
from tasks.params import AudioParams, Params
from tasks.schema import read_table, write_table

N_FFT = 512  # samples; 32 ms at 16 kHz
HOP = 128  # samples; 8 ms at 16 kHz
BLOCK_S = 60.0  # seconds of audio per STFT block
MARGIN = 4 * N_FFT  # samples of context on each side of a block (mask smoothing + window overlap)
SMOOTH_FRAMES = 5  # spectral_gate mask smoothing: time extent (frames, ~40 ms)
SMOOTH_BINS = 3  # spectral_gate mask smoothing: frequency extent (bins, ~94 Hz)
WIENER_SMOOTH_FRAMES = 3  # wiener: power-spectrum smoothing over time (frames)
SNR_FRAME_S = 0.05  # seconds per frame of the blind SNR estimate
SNR_LOUD_Q = 0.95  # frame-power quantile taken as "signal + noise"
SNR_QUIET_Q = 0.10  # frame-power quantile taken as "noise"
VOCAL_BAND_HZ = (100.0, 1000.0)  # where groans and voices carry their energy
EPS = 1e-12

ARMS = ("audio_raw", "audio_denoised")


# ---- DSP ------------------------------------------------------------------------


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (-inf for an empty or all-zero signal)."""
    if x.size == 0:
        return float("-inf")
    p = float(np.mean(np.square(x, dtype=np.float64)))
    return 10.0 * math.log10(p) if p > 0 else float("-inf")


def band_energy_db(x: np.ndarray, sample_rate: int, band_hz: tuple[float, float] = VOCAL_BAND_HZ) -> float:
    """Mean power (dB) of ``x`` inside ``band_hz`` (FFT band-pass, for measurements)."""
    if x.size == 0:
        return float("-inf")
    spec = np.fft.rfft(x.astype(np.float64))
    f = np.fft.rfftfreq(x.size, 1.0 / sample_rate)
    keep = (f >= band_hz[0]) & (f < band_hz[1])
    p = float(np.sum(np.abs(spec[keep]) ** 2)) / x.size**2
    return 10.0 * math.log10(p + EPS)


def estimate_snr_db(x: np.ndarray, sample_rate: int) -> float | None:
    """Blind SNR: power of the loud frames (95th pct) over the quiet frames (10th pct), in dB.

    ``(P_loud - P_quiet) / P_quiet``; None for audio shorter than a few frames.
    """
    n = int(SNR_FRAME_S * sample_rate)
    k = x.size // n
    if k < 10:
        return None
    p = np.mean(np.square(x[: k * n].reshape(k, n), dtype=np.float64), axis=1)
    loud, quiet = np.quantile(p, SNR_LOUD_Q), np.quantile(p, SNR_QUIET_Q)
    return 10.0 * math.log10(max(loud - quiet, EPS) / max(quiet, EPS))


def _stft(x: torch.Tensor) -> torch.Tensor:
    return torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT, dtype=x.dtype), center=True,
                      return_complex=True)


def _istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    return torch.istft(spec, N_FFT, HOP, window=torch.hann_window(N_FFT, dtype=torch.float64), center=True,
                       length=length)


def _blocks(n: int, sample_rate: int) -> list[tuple[int, int]]:
    step = max(HOP, int(BLOCK_S * sample_rate) // HOP * HOP)
    return [(s, min(n, s + step)) for s in range(0, n, step)] or [(0, 0)]


def noise_profile(x: np.ndarray, sample_rate: int, quantile: float) -> np.ndarray:
    """Noise power per STFT bin (N_FFT // 2 + 1,): mean power of the quietest frames.

    Computed per block, then the median over blocks (robust to a block that
    is mostly vocalization).
    """
    profiles = []
    for s0, s1 in _blocks(x.size, sample_rate):
        seg = torch.from_numpy(x[s0:s1].astype(np.float64))
        if seg.numel() < N_FFT:
            continue
        power = _stft(seg).abs().square()  # (freq, frames)
        energy = power.sum(0)
        k = max(1, int(round(quantile * energy.numel())))
        quiet = torch.argsort(energy)[:k]
        profiles.append(power[:, quiet].mean(1))
    if not profiles:
        return np.full(N_FFT // 2 + 1, EPS)
    return torch.stack(profiles).median(0).values.clamp_min(EPS).numpy()


def _gain(power: torch.Tensor, noise: torch.Tensor, params: AudioParams) -> torch.Tensor:
    floor = 10.0 ** (params.floor_db / 20.0)
    if params.method == "spectral_gate":
        mask = (power > noise[:, None] * 10.0 ** (params.gate_db / 10.0)).to(power.dtype)
        kernel = torch.ones(1, 1, SMOOTH_BINS, SMOOTH_FRAMES, dtype=power.dtype) / (SMOOTH_BINS * SMOOTH_FRAMES)
        mask = F.conv2d(mask[None, None], kernel, padding=(SMOOTH_BINS // 2, SMOOTH_FRAMES // 2))[0, 0]
        return floor + (1.0 - floor) * mask
    if params.method == "wiener":
        smooth = F.avg_pool1d(power[None], WIENER_SMOOTH_FRAMES, stride=1, padding=WIENER_SMOOTH_FRAMES // 2,
                              count_include_pad=False)[0]
        return (1.0 - noise[:, None] / smooth.clamp_min(EPS)).clamp(min=floor, max=1.0)
    raise ValueError(f"unknown audio.method {params.method!r}")


def denoise(x: np.ndarray, sample_rate: int, params: AudioParams,
            noise: np.ndarray | None = None) -> np.ndarray:
    """Denoised copy of mono float ``x`` (same length, float32).

    ``noise`` is a per-bin noise power profile (default: ``noise_profile`` of ``x``).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.size < N_FFT:
        return x.copy()
    noise_t = torch.from_numpy(noise if noise is not None else noise_profile(x, sample_rate, params.noise_quantile))
    out = np.empty_like(x)
    for s0, s1 in _blocks(x.size, sample_rate):
        a, b = max(0, s0 - MARGIN), min(x.size, s1 + MARGIN)
        seg = torch.from_numpy(x[a:b].astype(np.float64))
        spec = _stft(seg)
        clean = _istft(spec * _gain(spec.abs().square(), noise_t, params), seg.numel())
        out[s0:s1] = clean[s0 - a: s1 - a].numpy().astype(np.float32)
    return out


# ---- WAV files ----------------------------------------------------------------


def write_wav(path: Path, x: np.ndarray, sample_rate: int) -> Path:
    """Write mono float samples in [-1, 1] as 16-bit PCM WAV, atomically."""
    pcm = (np.clip(x, -1.0, 1.0) * PCM_MAX).round().astype("<i2")
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())
    return Path(path)


# ---- per recording ------------------------------------------------------------


def audio_recording(recording_id: str, data_dir: Path, out_dir: Path, params: AudioParams) -> dict:
    """Extract, denoise and cut one recording's audio into windows.

    Returns ``{recording_id, has_audio, silent, flags, rms_dbfs, snr_before_db,
    snr_after_db, n_windows}``.  A video without an audio stream gives
    status ``no_audio`` (flag ``no_audio_stream``); audio whose RMS is below
    ``silence_dbfs`` gives status ``silent`` (raw files kept, no denoised
    files).  Neither raises: the recording continues without audio arms.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    sr = params.sample_rate
    windows = read_table("windows", layout.path(data_dir, "window", "windows", f"{recording_id}.parquet")).to_pylist()
    x = read_audio(layout.path(data_dir, "deidentify", "videos", f"{recording_id}.mp4"), sample_rate=sr)
    flags: list[str] = []
    has_audio = x.size > 0
    level = rms_dbfs(x)
    silent = has_audio and not level > params.silence_dbfs
    snr_before = snr_after = None
    y = None
    paths: dict[str, Path | None] = {"audio_raw": None, "audio_denoised": None}
    if not has_audio:
        flags.append("no_audio_stream")
        status = "no_audio"
    else:
        status = "silent" if silent else "ok"
        if silent:
            flags.append("silent")
        end_s = max((w["t_end_s"] for w in windows), default=0.0)
        if x.size < 0.95 * end_s * sr:
            flags.append("audio_shorter_than_video")
        paths["audio_raw"] = write_wav(out_dir / "audio" / f"{recording_id}_raw.wav", x, sr)
        if not silent:
            y = denoise(x, sr, params)
            snr_before, snr_after = estimate_snr_db(x, sr), estimate_snr_db(y, sr)
            paths["audio_denoised"] = write_wav(out_dir / "audio" / f"{recording_id}_denoised.wav", y, sr)
    tracks = {"audio_raw": x, "audio_denoised": y}
    arm_rows = []
    for w in windows:
        wi = int(w["window_index"])
        for arm in ARMS:
            rel = None
            if paths[arm] is not None:
                suffix = "_raw.wav" if arm == "audio_raw" else "_denoised.wav"
                p = write_wav(out_dir / "windows" / window_name(recording_id, wi, suffix),
                              window_slice(tracks[arm], sr, w["t_start_s"], w["t_end_s"]), sr)
                rel = p.relative_to(data_dir).as_posix() if p.is_relative_to(data_dir) else str(p)
            arm_rows.append(dict(recording_id=recording_id, window_index=wi, arm=arm, path=rel,
                                 status=status))
    quality = dict(recording_id=recording_id, has_audio=has_audio, silent=bool(silent),
                   rms_dbfs=level if math.isfinite(level) else None,
                   snr_before_db=snr_before, snr_after_db=snr_after, method=params.method,
                   duration_s=x.size / sr, flags=flags)
    write_table("audio_quality", [quality], out_dir / "quality" / f"{recording_id}.parquet")
    write_table("arms", arm_rows, out_dir / "arms" / f"{recording_id}.parquet")
    return dict(recording_id=recording_id, has_audio=has_audio, silent=bool(silent), flags=flags,
                rms_dbfs=quality["rms_dbfs"], snr_before_db=snr_before, snr_after_db=snr_after,
                n_windows=len(windows))


def run(recording_id: str, data_dir: Path, out_dir: Path, params: Params) -> dict:
    return audio_recording(recording_id, data_dir, out_dir, params.audio)


WINDOWS = rel("window", "windows", "{rid}.parquet")
STAGE = Stage(
    "audio", "recording", run, "mono 16 kHz soundtrack, denoised, cut per window",
    after="window", inputs=(rel("deidentify", "videos", "{rid}.mp4"), WINDOWS),
    tables=(Table("arms", "arms"), Table("audio_quality", "quality")))
