"""The one place that talks to PyAV (FFmpeg): encode, decode, audio.

Everything streams: frames are produced/consumed one at a time, never a
whole video in memory.  Errors from FFmpeg are re-raised as ``MediaError``
carrying FFmpeg's own message.  Outputs are written atomically (temp name,
then rename), so a killed writer never leaves a file that looks complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tasks.atomic import partial_name
from tasks.errors import SemioflowError

VIDEO_CODEC = "libx264"
AUDIO_CODEC = "aac"
PIX_FMT = "yuv420p"
DEFAULT_CRF = 23  # x264 constant rate factor (lower = better quality)
DEFAULT_PRESET = "veryfast"
AUDIO_BITRATE = 64_000  # bit/s, mono speech-grade AAC


class MediaError(SemioflowError):
    """FFmpeg/PyAV could not read or write a media file."""


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded video frame: its index in decode order, pts and RGB pixels."""

    index: int
    pts_s: float
    rgb: np.ndarray  # (H, W, 3) uint8


class VideoWriter:
    """Write an H.264 (+ optional AAC mono) MP4 atomically.

    Use as a context manager::

        with VideoWriter(path, width=384, height=288, fps=12, audio_rate=16000) as w:
            w.write_audio(samples)      # float32 mono in [-1, 1], any chunking
            for rgb in frames:
                w.write(rgb)            # (height, width, 3) uint8

    The file appears at ``path`` only when the block exits without error.
    ``metadata`` sets container tags (e.g. ``creation_time``); ``stream_metadata``
    sets per-stream tags such as ``handler_name``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        fps: float,
        audio_rate: int | None = None,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        metadata: dict[str, str] | None = None,
        stream_metadata: dict[str, str] | None = None,
    ) -> None:
        if width % 2 or height % 2:
            raise MediaError(f"H.264 with yuv420p needs even dimensions, got {width}x{height}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = partial_name(self.path)
        self._n_video = 0
        self._n_audio = 0
        try:
            self._container = av.open(str(self._tmp), mode="w", format="mp4")
            for k, v in (metadata or {}).items():
                self._container.metadata[k] = v
            self._rate = Fraction(fps).limit_denominator(1001)
            self._video = self._container.add_stream(VIDEO_CODEC, rate=self._rate)
            self._video.width, self._video.height, self._video.pix_fmt = width, height, PIX_FMT
            self._video.options = {"crf": str(crf), "preset": preset}
            for k, v in (stream_metadata or {}).items():
                self._video.metadata[k] = v
            self._audio = None
            if audio_rate:
                self._audio = self._container.add_stream(AUDIO_CODEC, rate=audio_rate)
                self._audio.layout = "mono"
                self._audio.bit_rate = AUDIO_BITRATE
                for k, v in (stream_metadata or {}).items():
                    self._audio.metadata[k] = v
        except av.FFmpegError as exc:
            self._discard()
            raise MediaError(f"cannot open video writer: {exc}") from None
        self._audio_rate = audio_rate

    def write(self, rgb: np.ndarray) -> None:
        """Append one RGB frame (height, width, 3) uint8."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self._n_video
        frame.time_base = 1 / self._rate
        self._n_video += 1
        for packet in self._video.encode(frame):
            self._container.mux(packet)

    def write_audio(self, samples: np.ndarray) -> None:
        """Append mono float samples in [-1, 1] at ``audio_rate``."""
        if self._audio is None:
            raise MediaError("this writer has no audio stream (pass audio_rate=)")
        samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
        frame = av.AudioFrame.from_ndarray(samples[np.newaxis, :], format="fltp", layout="mono")
        frame.sample_rate = self._audio_rate
        frame.pts = self._n_audio
        frame.time_base = Fraction(1, self._audio_rate)
        self._n_audio += samples.shape[0]
        for packet in self._audio.encode(frame):
            self._container.mux(packet)

    def close(self) -> Path:
        """Flush encoders, close, and rename the temp file into place."""
        try:
            for stream in (self._video, self._audio):
                if stream is not None:
                    for packet in stream.encode(None):
                        self._container.mux(packet)
            self._container.close()
        except av.FFmpegError as exc:
            self._discard()
            raise MediaError(f"cannot finish video: {exc}") from None
        self._tmp.replace(self.path)
        return self.path

    def _discard(self) -> None:
        try:
            self._container.close()
        except (AttributeError, av.FFmpegError):
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()


def iter_frames(path: str | Path, *, width: int | None = None, height: int | None = None) -> Iterator[DecodedFrame]:
    """Decode every video frame in presentation order, streaming.

    ``width``/``height`` resize during conversion (cheaper than resizing
    afterwards).  Raises ``MediaError`` with FFmpeg's message on failure.
    """
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = stream.time_base
            for i, frame in enumerate(container.decode(stream)):
                pts = float(frame.pts * tb) if frame.pts is not None else float("nan")
                rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                yield DecodedFrame(index=i, pts_s=pts, rgb=rgb)
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode video: {exc}") from None
    except IndexError:
        raise MediaError("file has no video stream") from None


def read_audio(path: str | Path, *, sample_rate: int = 16_000) -> np.ndarray:
    """Decode the first audio stream as mono float32 at ``sample_rate`` Hz.

    Returns an empty array if the file has no audio stream.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return np.zeros(0, dtype=np.float32)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks = []
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode audio: {exc}") from None
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)
