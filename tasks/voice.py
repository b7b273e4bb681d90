"""Speaker anonymisation with no model: the McAdams-coefficient LPC pole shift.

The VoicePrivacy Challenge's signal-processing baseline (Patino et al.,
"Speaker anonymisation using the McAdams coefficient", Interspeech 2021):
every 20 ms frame (10 ms hop, sqrt-Hann analysis and synthesis windows) is
split by LPC into an all-pole vocal-tract filter and its residual; the
angle ``phi`` of every complex pole moves to ``phi ** alpha`` (``alpha`` < 1
raises the formants, > 1 lowers them), and the residual is filtered back
through the shifted poles.  Pitch and timing are kept, so speech stays
intelligible and vocalisations (groans, moans) keep their energy and
rhythm; the formants that carry much of a speaker's identity move.

Each synthesised frame is scaled to the energy of the frame it replaces, so
loudness, and with it the audio features' energy envelope, is kept.

``VoiceAnonymizer`` streams: ``process`` takes any chunking and returns the
samples that are final so far; ``flush`` returns the rest, so the output has
exactly as many samples as the input.  Memory is one frame, whatever the
recording's length.

``site_alpha`` derives the coefficient from the site's secret key, so every
site shifts by its own amount (an attacker who knows the method still does
not know the coefficient) while one site's outputs are reproducible.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from scipy.signal import lfilter

SAMPLE_RATE = 16_000  # Hz; the anonymised track's rate (speech band; what the audio stage reads)
FRAME_S = 0.020  # seconds per LPC frame
HOP_S = 0.010  # seconds between frames (50 % overlap)
LPC_ORDER = 20  # poles; the baseline's order at 16 kHz
ALPHA_RANGE = (0.70, 0.80)  # site coefficients are drawn from here (bench/voice.py: below 0.7 Whisper loses words)
DEFAULT_ALPHA = 0.8  # the VoicePrivacy baseline's coefficient, for callers without a site key
VOICE_DOMAIN = b"voice:"  # keeps the coefficient's derivation apart from the key's other uses
SILENT_ENERGY = 1e-10  # frame energy (sum of squares) below which a frame is passed as silence
_REG = 1e-9  # diagonal loading of the autocorrelation (numerically flat frames)
BATCH_FRAMES = 100  # frames processed together (1 s at the 10 ms hop): numpy over frames, not a Python loop


def site_alpha(key: bytes) -> float:
    """The site's McAdams coefficient in ``ALPHA_RANGE``, from HMAC-SHA256(key, "voice:")."""
    u = int.from_bytes(hmac.new(key, VOICE_DOMAIN, hashlib.sha256).digest()[:8], "big") / 2.0 ** 64
    lo, hi = ALPHA_RANGE
    return lo + (hi - lo) * u


def shift_poles(a: np.ndarray, alpha: float) -> np.ndarray:
    """LPC polynomials ``a`` (frames x order+1, a[:, 0] = 1) with every complex pole's angle phi moved to
    phi ** alpha (sign kept, so conjugate pairs stay pairs; real poles stay where they are)."""
    order = a.shape[1] - 1
    companion = np.zeros((a.shape[0], order, order))
    companion[:, 0, :] = -a[:, 1:]
    companion[:, np.arange(1, order), np.arange(order - 1)] = 1.0
    poles = np.linalg.eigvals(companion)
    ang = np.angle(poles)
    complex_ = np.abs(poles.imag) > 0
    new_ang = np.where(complex_, np.sign(ang) * np.minimum(np.abs(ang) ** alpha, np.pi), ang)
    moved = np.abs(poles) * np.exp(1j * new_ang)
    coef = np.zeros((a.shape[0], order + 1), dtype=complex)
    coef[:, 0] = 1.0
    for k in range(order):  # multiply out prod(1 - p z^-1), one root at a time, all frames at once
        coef[:, 1: k + 2] = coef[:, 1: k + 2] - moved[:, k: k + 1] * coef[:, : k + 1]
    return coef.real


def lpc(frames: np.ndarray, order: int = LPC_ORDER) -> np.ndarray:
    """Autocorrelation-method LPC polynomials [1, a1, ...] (frames x order+1), Levinson-Durbin on all frames at once."""
    n = frames.shape[1]
    r = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * n, axis=1)) ** 2, axis=1)[:, : order + 1]
    r[:, 0] = r[:, 0] * (1 + _REG) + _REG
    a = np.zeros((frames.shape[0], order + 1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, order + 1):
        k = -(a[:, :i] * r[:, i:0:-1]).sum(axis=1) / err
        a[:, 1: i + 1] = a[:, 1: i + 1] + k[:, None] * a[:, i - 1::-1][:, :i]
        err = err * (1 - k * k)
    return a


def _fir(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-frame FIR filter: y[f, t] = sum_k a[f, k] x[f, t - k] (zero initial state)."""
    order = a.shape[1] - 1
    pad = np.concatenate([np.zeros((x.shape[0], order)), x], axis=1)
    taps = np.lib.stride_tricks.sliding_window_view(pad, order + 1, axis=1)[:, :, ::-1]
    return np.einsum("ftk,fk->ft", taps, a)


def _all_pole(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-frame all-pole filter 1 / A_f(z) (zero initial state); scipy's recursion beats a numpy loop over samples."""
    return np.stack([lfilter([1.0], a[f], x[f]) for f in range(x.shape[0])])


class VoiceAnonymizer:
    """Streaming McAdams anonymisation of mono float audio at ``sample_rate`` Hz."""

    def __init__(self, alpha: float, sample_rate: int = SAMPLE_RATE) -> None:
        if not 0.5 <= alpha <= 1.5:
            raise ValueError(f"McAdams coefficient {alpha} is outside [0.5, 1.5]")
        self.alpha, self.sample_rate = alpha, sample_rate
        self.n = int(round(FRAME_S * sample_rate))
        self.hop = int(round(HOP_S * sample_rate))
        # periodic Hann at 50 % overlap sums to 1; its square root is applied twice (analysis, synthesis)
        self.win = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.n) / self.n))
        self._in = np.zeros(self.n - self.hop)  # the first frame starts half a frame before sample 0
        self._acc = np.zeros(self.n)
        self._lead = self.n - self.hop  # output samples still to drop (they precede sample 0)
        self._count_in = 0
        self._count_out = 0

    def _frames(self, x: np.ndarray) -> np.ndarray:
        """Anonymised, synthesis-windowed frames (frames x n) of raw frames (frames x n)."""
        sig = x * self.win
        energy = (sig * sig).sum(axis=1)
        a = lpc(sig)
        with np.errstate(all="ignore"):
            out = _all_pole(shift_poles(a, self.alpha), _fir(a, sig))
            out_energy = (out * out).sum(axis=1)
            gain = np.sqrt(energy / out_energy)
        # silent frames, and any the filter made unstable, are passed through unchanged
        bad = (energy < SILENT_ENERGY) | ~np.isfinite(gain) | ~np.isfinite(out).all(axis=1)
        out = np.where(bad[:, None], sig, out * np.where(bad, 0.0, gain)[:, None])
        return out * self.win

    def _emit(self, x: np.ndarray, *, final: bool = False) -> np.ndarray:
        self._in = np.concatenate([self._in, np.asarray(x, dtype=np.float64)])
        n_frames = max(0, (self._in.size - self.n) // self.hop + 1)
        if n_frames == 0 or (n_frames < BATCH_FRAMES and not final):
            return np.zeros(0)
        starts = np.arange(n_frames) * self.hop
        frames = self._frames(self._in[starts[:, None] + np.arange(self.n)])
        span = (n_frames - 1) * self.hop + self.n
        acc = np.zeros(span)
        acc[: self.n] += self._acc
        for i in range(2):  # 50 % overlap: frames of one parity never overlap each other
            sel = frames[i::2]
            idx = (starts[i::2, None] + np.arange(self.n)).ravel()
            acc[idx] += sel.ravel()
        done = n_frames * self.hop
        out, self._acc = acc[:done], np.concatenate([acc[done:], np.zeros(self.n - (span - done))])
        self._in = self._in[done:]
        drop = min(self._lead, out.size)
        self._lead -= drop
        return out[drop:]

    def process(self, x: np.ndarray) -> np.ndarray:
        """Anonymise the next chunk; returns the output samples that are final (float32, clipped to [-1, 1])."""
        self._count_in += len(x)
        out = self._emit(x)
        self._count_out += out.size
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def flush(self) -> np.ndarray:
        """The remaining output: the total output has exactly as many samples as the input."""
        need = self._count_in - self._count_out
        out = self._emit(np.zeros(self.n), final=True)
        while out.size < need:
            out = np.concatenate([out, self._emit(np.zeros(self.n), final=True)])
        out = out[:need]
        self._count_out += out.size
        return np.clip(out, -1.0, 1.0).astype(np.float32)


def anonymize(x: np.ndarray, alpha: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Whole-array form of ``VoiceAnonymizer`` (same output as streaming it in any chunks)."""
    va = VoiceAnonymizer(alpha, sample_rate)
    return np.concatenate([va.process(x), va.flush()])
