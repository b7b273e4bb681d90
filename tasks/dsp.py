"""Sound helpers shared by the audio stages and the model loader: resampling, reading 16-bit WAV, window slices."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

PCM_MAX = 32767  # int16 full scale


def resample(x: np.ndarray, orig_hz: int, new_hz: int) -> np.ndarray:
    """Band-limited resampling (torchaudio sinc); used for model inputs and test fixtures at other rates."""
    if orig_hz == new_hz:
        return np.asarray(x, dtype=np.float32)
    return AF.resample(torch.from_numpy(np.asarray(x, dtype=np.float32)), orig_hz, new_hz).numpy()


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate) of a 16-bit PCM WAV written by ``write_wav``."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{Path(path).name}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
        return (pcm.mean(axis=1) / PCM_MAX).astype(np.float32), w.getframerate()


def window_slice(x: np.ndarray, sample_rate: int, t0: float, t1: float) -> np.ndarray:
    """Samples of [t0, t1) seconds, zero-padded where ``x`` ends early."""
    a, b = int(round(t0 * sample_rate)), int(round(t1 * sample_rate))
    out = np.zeros(max(0, b - a), dtype=np.float32)
    piece = x[a:b]
    out[: piece.size] = piece
    return out
