"""Audio synthesis for the phantom cohort: voices, groans, alarms, room tone.

Voices are source-filter syntheses: a harmonic glottal source on a pitch
contour, shaped by vowel formants per syllable, with short noise bursts as
consonants.  The one exception is ``spoken_phi``: a patient saying their name,
date of birth and record number in words, spoken by espeak-ng (planted only
where espeak-ng is installed), so the privacy tests have identifiers a real
speech recogniser hears.  A groan is a
long, low, gliding voiced /o/-/u/ sound: energy in the vocal band
(~100-1000 Hz).  Alarms are monitor beeps far above that band.

Every clip is a pure function of its ``Clip`` (which carries its own seed);
``mix`` renders any time slice of a recording's soundtrack, so a writer can
stream audio second by second without holding the whole track.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tasks.dsp import resample

VOWELS = {  # formant frequencies F1, F2, F3 (Hz), adult average
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
FORMANT_BW = (90.0, 110.0, 170.0)  # Hz, formant bandwidths
FORMANT_GAIN = (1.0, 0.55, 0.25)
MAX_HARMONIC_HZ = 4000.0  # Hz, highest source harmonic synthesized
SYLLABLE_S = (0.12, 0.28)  # s
WORD_PAUSE_S = (0.06, 0.22)  # s
MOAN_S = (1.0, 2.6)  # s, one groan/moan
MOAN_GAP_S = (0.15, 0.6)  # s
ALARM_HZ = 2600.0  # Hz, monitor beep (well above the vocal band)
ALARM_BEEP_S = 0.16  # s
ROOM_NOISE = 0.004  # RMS of room tone (full scale 1.0)
LEVELS = {  # peak amplitude per clip kind
    "groan": 0.45,
    "staff_speech": 0.25,
    "reply": 0.22,
    "background_speech": 0.035,
    "alarm": 0.08,
    "spoken_phi": 0.3,
}
ESPEAK = "espeak-ng"
ESPEAK_VOICE = "en-us"
ESPEAK_WPM = 140  # words per minute
ESPEAK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Clip:
    """One sound event: kind (a ``LEVELS`` key), start/duration (s), pitch (Hz) and its own seed."""

    kind: str
    t_start_s: float
    duration_s: float
    f0_hz: float
    seed: int
    text: str = ""  # spoken_phi: the words

    @property
    def t_end_s(self) -> float:
        return self.t_start_s + self.duration_s


def voiced(f0: np.ndarray, formants: np.ndarray, sample_rate: int) -> np.ndarray:
    """Harmonic source on pitch contour ``f0`` (Hz per sample) through ``formants`` ((n, 3) Hz)."""
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    out = np.zeros_like(f0)
    n_harm = int(MAX_HARMONIC_HZ / max(40.0, float(f0.min())))
    for k in range(1, n_harm + 1):
        fk = k * f0
        gain = np.zeros_like(f0)
        for i in range(3):
            gain += FORMANT_GAIN[i] / (1.0 + ((fk - formants[:, i]) / FORMANT_BW[i]) ** 2)
        out += gain / np.sqrt(k) * np.sin(k * phase)
    return out


def _envelope(n: int, ramp: int) -> np.ndarray:
    env = np.ones(n)
    r = min(ramp, n // 2)
    if r > 0:
        w = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, r))
        env[:r], env[n - r:] = w, w[::-1]
    return env


def speech(duration_s: float, f0_hz: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-like babble: syllables of random vowels, falling intonation, consonant bursts."""
    n = int(duration_s * sample_rate)
    f0 = np.full(n, f0_hz)
    formants = np.tile(np.array(VOWELS["a"]), (n, 1))
    env = np.zeros(n)
    t = 0
    names = list(VOWELS)
    noise = np.zeros(n)
    while t < n:
        syl = int(rng.uniform(*SYLLABLE_S) * sample_rate)
        end = min(n, t + syl)
        formants[t:end] = VOWELS[names[int(rng.integers(len(names)))]]
        f0[t:end] = f0_hz * (1.0 + 0.12 * rng.standard_normal()) * (1.0 - 0.15 * t / n)
        env[t:end] = _envelope(end - t, int(0.03 * sample_rate))
        burst = int(0.025 * sample_rate)
        if rng.random() < 0.6 and t + burst < n:
            noise[t:t + burst] = rng.standard_normal(burst) * 0.25
        t = end
        if rng.random() < 0.3:
            t += int(rng.uniform(*WORD_PAUSE_S) * sample_rate)
    f0 = np.convolve(f0, np.ones(400) / 400, mode="same")
    sig = voiced(f0, formants, sample_rate) * env + np.diff(noise, prepend=0.0)
    return sig / (np.abs(sig).max() + 1e-9)


def groan(duration_s: float, f0_hz: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Repeated low moans (vowels o/u/a) with slow pitch glides and short breaths between."""
    n = int(duration_s * sample_rate)
    out = np.zeros(n)
    t = 0
    while t < n:
        m = min(n - t, int(rng.uniform(*MOAN_S) * sample_rate))
        if m < int(0.2 * sample_rate):
            break
        tt = np.arange(m) / sample_rate
        glide = 1.0 + 0.15 * np.sin(np.pi * tt / tt[-1]) - 0.1 * tt / tt[-1]
        f0 = f0_hz * glide * (1.0 + 0.01 * np.sin(2 * np.pi * 5.5 * tt))
        formants = np.tile(np.array(VOWELS[("o", "u", "a")[int(rng.integers(3))]]), (m, 1))
        out[t:t + m] = voiced(f0, formants, sample_rate) * _envelope(m, int(0.15 * sample_rate))
        t += m + int(rng.uniform(*MOAN_GAP_S) * sample_rate)
    return out / (np.abs(out).max() + 1e-9)


def alarm(duration_s: float, sample_rate: int) -> np.ndarray:
    """Triple monitor beeps every two seconds."""
    n = int(duration_s * sample_rate)
    t = np.arange(n) / sample_rate
    cycle = t % 2.0
    on = (cycle < 3 * 2 * ALARM_BEEP_S) & ((cycle // ALARM_BEEP_S) % 2 == 0)
    return np.sin(2 * np.pi * ALARM_HZ * t) * on


def spoken(text: str, duration_s: float, sample_rate: int) -> np.ndarray:
    """``text`` spoken by espeak-ng, fitted to ``duration_s`` (cut or padded), peak 1."""
    try:
        res = subprocess.run([ESPEAK, "-v", ESPEAK_VOICE, "-s", str(ESPEAK_WPM), "--stdout", text],
                             capture_output=True, check=True, timeout=ESPEAK_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"espeak-ng could not speak a phantom clip: {exc}") from None
    with wave.open(io.BytesIO(res.stdout), "rb") as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32767.0
    x = resample(x, rate, sample_rate).astype(np.float64)
    out = np.zeros(int(duration_s * sample_rate))
    out[: min(out.size, x.size)] = x[: out.size]
    return out / (np.abs(out).max() + 1e-9)


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


@lru_cache(maxsize=32)
def render_clip(clip: Clip, sample_rate: int) -> np.ndarray:
    """The clip's samples at its ``LEVELS`` amplitude (float64, cached)."""
    rng = np.random.default_rng(clip.seed)
    if clip.kind == "groan":
        sig = groan(clip.duration_s, clip.f0_hz, sample_rate, rng)
    elif clip.kind in ("staff_speech", "reply", "background_speech"):
        sig = speech(clip.duration_s, clip.f0_hz, sample_rate, rng)
    elif clip.kind == "alarm":
        sig = alarm(clip.duration_s, sample_rate)
    elif clip.kind == "spoken_phi":
        sig = spoken(clip.text, clip.duration_s, sample_rate)
    else:
        raise ValueError(f"unknown clip kind {clip.kind!r}; known: {', '.join(LEVELS)}")
    sig = sig * LEVELS[clip.kind]
    sig.setflags(write=False)
    return sig


def mix(clips: tuple[Clip, ...], start: int, n: int, sample_rate: int, seed: int) -> np.ndarray:
    """Samples ``[start, start + n)`` of the soundtrack: room tone plus every overlapping clip.

    Room tone for a slice depends only on ``seed`` and ``start``, so the same
    slicing always gives the same samples.
    """
    rng = np.random.default_rng([seed, start])
    out = rng.standard_normal(n) * ROOM_NOISE
    for clip in clips:
        c0 = int(round(clip.t_start_s * sample_rate))
        c1 = c0 + int(clip.duration_s * sample_rate)
        lo, hi = max(start, c0), min(start + n, c1)
        if lo >= hi:
            continue
        sig = render_clip(clip, sample_rate)
        out[lo - start:hi - start] += sig[lo - c0:hi - c0]
    return np.clip(out, -1.0, 1.0).astype(np.float32)
