"""The one place that talks to PyAV (FFmpeg): encode, decode, audio.

Everything streams: frames are produced/consumed one at a time, never a
whole video in memory.  Errors from FFmpeg are re-raised as ``MediaError``
carrying FFmpeg's own message.  Outputs are written atomically (temp name,
then rename), so a killed writer never leaves a file that looks complete.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from fractions import Fraction
from typing import Protocol
from pathlib import Path

import av
import cv2
import numpy as np

from tasks.atomic import partial_name
from tasks.errors import SemioflowError, error_words

VIDEO_CODEC = "libx264"
AUDIO_CODEC = "aac"
PIX_FMT = "yuv420p"
DEFAULT_CRF = 23  # x264 constant rate factor (lower = better quality)
DEFAULT_PRESET = "veryfast"
# x264's macroblock-tree rate control made identical frames encode differently from run to run here
# (6 runs, 6 different files, decoded pixels up to 80 levels apart, single-threaded too); without it
# the bytes repeat.  Reproducible outputs matter more than its few % of bitrate.
X264_PARAMS = "mbtree=0"
AUDIO_BITRATE = 64_000  # bit/s, mono speech-grade AAC
VFR_TICKS_PER_FRAME = 100  # time-base ticks per nominal frame, so pts can be uneven
HASH_CHUNK = 1 << 20  # bytes read at a time when hashing a source
FULL_RANGE = 2  # AVCOL_RANGE_JPEG: 0-255 luma, which the limited-range yuv420p output must not copy as is


class MediaError(SemioflowError):
    """FFmpeg/PyAV could not read or write a media file."""


def camera_streams(container) -> list:
    """The video streams that are moving pictures: attached pictures (cover art, thumbnails) are not."""
    return [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]


def video_stream(container):
    """The camera stream every reader uses: the largest moving-picture stream (then the default one, then the
    longest).  A recorder that adds a small preview stream or a second camera must not make ingest judge one
    stream and de-identification read another.  Raises ``MediaError`` when there is none."""
    streams = camera_streams(container)
    if not streams:
        raise MediaError("file has no video stream")

    def rank(s) -> tuple:
        seconds = float(s.duration * s.time_base) if s.duration and s.time_base else 0.0
        return (s.codec_context.width * s.codec_context.height,
                bool(s.disposition & av.stream.Disposition.default), seconds, -s.index)
    return max(streams, key=rank)


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded video frame: its index in decode order, pts and RGB pixels."""

    index: int
    pts_s: float
    rgb: np.ndarray  # (H, W, 3) uint8


@dataclass(frozen=True)
class YuvFrame:
    """One decoded frame kept in yuv420p, plus a small RGB copy for detectors.

    ``yuv`` is an I420 array of shape (height * 3 / 2, width), upright, with
    even sizes (an odd last row/column is dropped); ``i420_planes`` gives
    writable views of its Y, U and V planes.  ``small_rgb`` is the same
    picture shrunk (area interpolation) to ``small_size`` (width, height),
    made on first use: frames no detector looks at never pay for it.
    """

    index: int
    pts_s: float
    yuv: np.ndarray  # (H * 3 / 2, W) uint8, I420
    small_size: tuple[int, int]  # (w, h) of small_rgb

    @property
    def width(self) -> int:
        return self.yuv.shape[1]

    @property
    def height(self) -> int:
        return self.yuv.shape[0] * 2 // 3

    @cached_property
    def small_rgb(self) -> np.ndarray:
        """(h, w, 3) uint8: the picture at ``small_size`` (taken before any edit of ``yuv`` reaches it)."""
        return shrink_i420_to_rgb(self.yuv, *self.small_size)


def i420_planes(yuv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views (Y, U, V) into an I420 array of shape (H * 3 / 2, W); writing them writes ``yuv``."""
    h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
    flat = yuv.reshape(-1)  # a view: the array is contiguous
    n, q = h * w, h * w // 4  # U and V need not start on a row of the (H * 3 / 2, W) layout
    return (flat[:n].reshape(h, w), flat[n:n + q].reshape(h // 2, w // 2),
            flat[n + q:n + 2 * q].reshape(h // 2, w // 2))


def i420_from_planes(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pack Y, U, V planes (any strides) into one contiguous I420 array."""
    h, w = y.shape
    out = np.empty((h * 3 // 2, w), np.uint8)
    oy, ou, ov = i420_planes(out)
    oy[:], ou[:], ov[:] = y, u, v
    return out


def shrink_i420_to_rgb(yuv: np.ndarray, width: int, height: int) -> np.ndarray:
    """An I420 picture as RGB at ``width`` x ``height`` (even), area interpolation.

    Each plane is shrunk before the colour conversion, so only the small
    picture is converted (about 2 ms for 1080p -> 640x360 instead of ~7 ms
    for convert-then-shrink).  Same result as shrinking the RGB frame within
    a tenth of a grey level.
    """
    h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
    if (width, height) == (w, h):
        return cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)
    small = np.empty((height * 3 // 2, width), np.uint8)
    for src, dst in zip(i420_planes(yuv), i420_planes(small)):
        dst[:] = cv2.resize(src, (dst.shape[1], dst.shape[0]), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_YUV2RGB_I420)


def rgb_to_i420(rgb: np.ndarray) -> np.ndarray:
    """RGB (even sizes) to I420 with OpenCV (BT.601 limited range, as FFmpeg's default)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)


def encoder_options(codec: str, *, crf: int, preset: str) -> dict[str, str]:
    """FFmpeg options for ``codec``: quality and speed for x264/x265, and ``X264_PARAMS`` for x264."""
    if codec not in ("libx264", "libx265"):
        return {}
    opts = {"crf": str(crf), "preset": preset}
    if codec == "libx264":
        opts["x264-params"] = X264_PARAMS
    return opts


def to_video_frame(rgb: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """An RGB array as a frame in ``pix_fmt`` ready for the encoder.

    yuv420p is converted with OpenCV (BT.601, limited range, the same as
    FFmpeg's default conversion within one level), which is cheaper than
    letting the encoder convert.
    """
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    if pix_fmt == "yuv420p" and not (h % 2 or w % 2):
        return av.VideoFrame.from_ndarray(rgb_to_i420(rgb), format="yuv420p")
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return frame if pix_fmt == "rgb24" else frame.reformat(format=pix_fmt)


class VideoWriter:
    """Write an H.264 (+ optional AAC mono) MP4 atomically.

    Use as a context manager::

        with VideoWriter(path, width=384, height=288, fps=12, audio_rate=16000) as w:
            w.write_audio(samples)      # float32 mono in [-1, 1], any chunking
            for rgb in frames:
                w.write(rgb)            # (height, width, 3) uint8

    The file appears at ``path`` only when the block exits without error.
    ``metadata`` sets container tags (e.g. ``creation_time``); ``stream_metadata``
    sets per-stream tags such as ``handler_name``.  ``threads`` caps the
    encoder's threads (0 = FFmpeg's choice).  Identical frames give identical
    bytes (``X264_PARAMS``).
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
        codec: str = VIDEO_CODEC,
        pix_fmt: str = PIX_FMT,
        container_options: dict[str, str] | None = None,
        rotation_deg: int = 0,
        threads: int = 0,
    ) -> None:
        if pix_fmt == "yuv420p" and (width % 2 or height % 2):
            raise MediaError(f"{codec} with yuv420p needs even dimensions, got {width}x{height}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = partial_name(self.path)
        self._n_video = 0
        self._n_audio = 0
        self._pix_fmt = pix_fmt
        try:
            # the container format follows the suffix (.mp4, .mkv, .mov, .avi)
            self._container = av.open(str(self._tmp), mode="w", options=container_options or {})
            for k, v in (metadata or {}).items():
                self._container.metadata[k] = v
            self._rate = Fraction(fps).limit_denominator(1001)
            self._video = self._container.add_stream(codec, rate=self._rate)
            self._video.width, self._video.height, self._video.pix_fmt = width, height, pix_fmt
            self._video.codec_context.time_base = 1 / (self._rate * VFR_TICKS_PER_FRAME)
            opts = encoder_options(codec, crf=crf, preset=preset)
            if threads:
                opts["threads"] = str(threads)
            self._video.options = opts
            if rotation_deg:
                self._video.set_display_rotation(rotation_deg)
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
            raise MediaError(f"cannot open video writer: {error_words(exc)}") from None
        self._audio_rate = audio_rate

    def write(self, rgb: np.ndarray, *, pts_s: float | None = None) -> None:
        """Append one RGB frame (height, width, 3) uint8.

        Frames are evenly spaced at ``fps`` unless ``pts_s`` gives the
        presentation time (for variable-frame-rate files; must increase).
        """
        frame = to_video_frame(rgb, self._pix_fmt)
        if pts_s is None:
            frame.pts = self._n_video * VFR_TICKS_PER_FRAME
        else:
            frame.pts = int(round(pts_s * self._rate * VFR_TICKS_PER_FRAME))
        frame.time_base = 1 / (self._rate * VFR_TICKS_PER_FRAME)
        self._n_video += 1
        for packet in self._video.encode(frame):
            self._container.mux(packet)

    def write_audio(self, samples: np.ndarray) -> None:
        """Append mono float samples in [-1, 1] at ``audio_rate``."""
        if self._audio is None:
            raise MediaError("this writer has no audio stream (pass audio_rate=)")
        frame = mono_frame(samples, self._audio_rate, self._n_audio)
        self._n_audio += frame.samples
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
            raise MediaError(f"cannot finish video: {error_words(exc)}") from None
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
    """Decode every video frame in presentation order, streaming, upright.

    Display rotation metadata is applied (frames come out upright).
    ``width``/``height`` (of the displayed frame) resize during conversion,
    cheaper than resizing afterwards.  Raises ``MediaError`` with FFmpeg's message on failure.
    """
    try:
        with av.open(str(path)) as container:
            stream = video_stream(container)
            stream.thread_type = "AUTO"
            tb = stream.time_base
            for i, frame in enumerate(container.decode(stream)):
                pts = float(frame.pts * tb) if frame.pts is not None else float("nan")
                rot = int(round(frame.rotation or 0)) % 360
                # to_ndarray sizes the stored frame; swap so the caller gets the displayed size
                w, h = (height, width) if rot % 180 else (width, height)
                rgb = upright(frame.to_ndarray(format="rgb24", width=w, height=h), rot)
                yield DecodedFrame(index=i, pts_s=pts, rgb=rgb)
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode video: {error_words(exc)}") from None


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
        raise MediaError(f"cannot decode audio: {error_words(exc)}") from None
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)


# ---- probing -----------------------------------------------------------------

VFR_JITTER = 0.05  # relative std of packet durations above which a stream counts as VFR
VFR_SAMPLE_PACKETS = 300  # packets demuxed (not decoded) to judge frame-rate variability


@dataclass(frozen=True)
class ProbeInfo:
    """What the container says about a file, plus a first-frame decode check.

    ``width``/``height`` are the displayed size (after rotation).  ``n_frames``
    is the header's frame count (None when the container has none).
    """

    container: str
    video_codec: str
    width: int
    height: int
    fps: float
    duration_s: float
    n_frames: int | None
    rotation_deg: int
    vfr: bool
    has_audio: bool
    audio_codec: str | None
    sample_rate: int | None
    first_frame_ok: bool
    header_durations_s: tuple[float, ...]  # container, stream, frames/fps, last packet end (where known)
    index_coverage: float | None  # share of indexed video samples whose bytes exist in the file
    video_streams: int = 1  # moving-picture streams (attached pictures not counted); the largest is read


def probe(path: str | Path) -> ProbeInfo:
    """Open a media file, read its headers and decode its first video frame.

    Raises ``MediaError`` with FFmpeg's message when the file cannot be
    opened or has no video stream.  Does not decode the whole file.
    """
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise MediaError(f"not a readable media file: {error_words(exc)}") from None
    with container:
        v = video_stream(container)
        rate = v.average_rate or v.guessed_rate or v.base_rate
        fps = float(rate) if rate else 0.0
        durations = []
        if v.duration and v.time_base:
            durations.append(float(v.duration * v.time_base))
        n_frames = int(v.frames) if v.frames else None
        if n_frames and fps:
            durations.append(n_frames / fps)
        a = container.streams.audio[0] if container.streams.audio else None
        codec = v.codec_context.codec.canonical_name  # the codec (av1), not the decoder (libdav1d)
        n_streams = len(camera_streams(container))
        width, height = v.codec_context.width, v.codec_context.height
        coverage = _index_coverage(v, Path(path).stat().st_size)
        vfr = _is_vfr(container, v)
        last = _last_pts_s(container, v, max(durations + [container.duration / 1e6 if container.duration else 0.0]))
        if last is not None:
            durations.append(last)
        # the container's duration spans every stream (a sound track a little longer than the picture): it
        # judges the header, but the recording's duration is the video stream's own wherever that is known
        duration = max(durations) if durations else (container.duration or 0) / 1e6
        if container.duration:
            durations.insert(0, container.duration / 1e6)
    rotation, first_ok = _first_frame(path)
    if rotation % 180:
        width, height = height, width
    return ProbeInfo(
        container=container.format.name,
        video_codec=codec,
        width=width,
        height=height,
        fps=fps,
        duration_s=duration,
        n_frames=n_frames,
        rotation_deg=rotation,
        vfr=vfr,
        has_audio=a is not None,
        audio_codec=a.codec_context.name if a is not None else None,
        sample_rate=a.codec_context.sample_rate if a is not None else None,
        first_frame_ok=first_ok,
        header_durations_s=tuple(durations),
        index_coverage=coverage,
        video_streams=n_streams,
    )


def _index_coverage(stream, file_size: int) -> float | None:
    """Share of the video samples the container index lists that lie inside the file.

    A file cut short after its index was written (moov at the front) still
    opens; this finds the missing tail without decoding anything.
    """
    try:
        entries = stream.index_entries
        n = len(entries)
    except (AttributeError, av.FFmpegError):
        return None
    if n == 0:
        return None
    inside = sum(1 for e in entries if e.pos >= 0 and e.pos + e.size <= file_size)
    return inside / n


def _is_vfr(container, stream) -> bool:
    pts = []
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                pts.append(packet.pts)
            if len(pts) >= VFR_SAMPLE_PACKETS:
                break
    except av.FFmpegError:
        pass
    if len(pts) < 3:
        return False
    d = np.diff(np.sort(np.asarray(pts, dtype=np.float64)))
    d = d[d > 0]
    return bool(d.size > 1 and d.std() / d.mean() > VFR_JITTER)


LAST_PTS_MAX_PACKETS = 2000  # demux at most this many packets after seeking to the end


def _last_pts_s(container, stream, declared_s: float) -> float | None:
    """End time of the last video packet, found by seeking near the declared end.

    Compared with the header's durations this exposes absurd headers
    (a duration or frame count far from what the file holds).
    """
    try:
        container.seek(int(max(declared_s, 0.0) * 1e6), backward=True, any_frame=False)
        end = None
        for i, packet in enumerate(container.demux(stream)):
            if packet.pts is not None:
                t = float((packet.pts + (packet.duration or 0)) * stream.time_base)
                end = t if end is None else max(end, t)
            if i >= LAST_PTS_MAX_PACKETS:
                break
        return end
    except av.FFmpegError:
        return None


def _first_frame(path) -> tuple[int, bool]:
    try:
        with av.open(str(path)) as c:
            for frame in c.decode(video_stream(c)):
                return int(round(frame.rotation or 0)) % 360, True
    except av.FFmpegError:
        pass
    return 0, False


def upright(rgb: np.ndarray, rotation_deg: int) -> np.ndarray:
    """Apply display rotation (counter-clockwise degrees, FFmpeg's convention)."""
    k = (int(round(rotation_deg / 90.0))) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


@dataclass(frozen=True)
class Inspection:
    """One look at a source file: its content hash, size and first bytes, read through one open file, and
    the probe (``info``) or why there is none (``error``; ``timed_out`` when the decoder did not answer)."""

    sha256: str
    size: int
    head: bytes
    info: ProbeInfo | None = None
    error: str | None = None
    timed_out: bool = False
    prefix_sha256: str | None = None  # of the first ``prefix_bytes`` bytes asked for (None: not asked, or shorter)


class SourceBusy(MediaError):
    """Opening the file would block (another program holds a lease on it) or it is not a regular file."""


class ProbeTimeout(MediaError):
    """The file system did not deliver the file's bytes within the time limit."""


def _hash_source(path: str, prefix_bytes: int = 0) -> Inspection:
    """Open non-blocking, check it is a regular file, hash it.  Where another program holds a lease on
    the file (a recorder, a sync client) a plain ``open`` would wait for that program; this one fails at
    once with ``SourceBusy``, as does a path that is not a regular file (a FIFO put where a recording was)."""
    import errno
    import hashlib
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SourceBusy("another program holds the file (a lease): left for the next run") from None
        raise SourceBusy(f"cannot open the file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise SourceBusy("not a regular file")
        h, head, prefix, done = hashlib.sha256(), b"", None, 0
        while chunk := fh.read(HASH_CHUNK):
            head = head or chunk[:12]
            if 0 < prefix_bytes and done < prefix_bytes <= done + len(chunk):  # the prefix ends in this chunk
                p = h.copy()
                p.update(chunk[:prefix_bytes - done])
                prefix = p.hexdigest()
            h.update(chunk)
            done += len(chunk)
        return Inspection(h.hexdigest(), fh.tell(), head, prefix_sha256=prefix)


def _inspect_worker(path: str, conn, prefix_bytes: int = 0) -> None:
    import time

    def send(status: str, payload) -> None:
        # with the child's own clock reading (CLOCK_MONOTONIC is system-wide): the parent judges the probe's
        # time from when the hash was done, not from when it got round to reading the message
        conn.send((status, payload, time.monotonic()))

    try:
        seen = _hash_source(path, prefix_bytes)
        send("hash", seen)
        if seen.size:
            send("ok", probe(path))
    except SourceBusy as exc:
        send("busy", str(exc))
    except MediaError as exc:
        send("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - report any decoder crash to the parent as data
        send("error", f"{type(exc).__name__}: {error_words(exc)}")
    finally:
        conn.close()


def inspect_with_timeout(path: str | Path, read_timeout_s: float, probe_timeout_s: float, *,
                         prefix_bytes: int = 0) -> Inspection:
    """Hash and probe a source file in a separate process: killed when the hash takes more than
    ``read_timeout_s`` seconds, or the probe after it more than ``probe_timeout_s``.

    Everything that touches the file's bytes (open, hash, demux, decode) runs in the child, so a stalled
    share, a held lease or a pathological file cannot stop the batch.  Raises ``SourceBusy`` (held, not
    a regular file, unreadable) or ``ProbeTimeout`` (no hash in time): the file gets no id this run.  A
    probe that fails or times out after the hash comes back as ``error`` (``timed_out``) with the hash.
    ``prefix_bytes`` > 0 also hashes the file's first that many bytes (``prefix_sha256``): did it grow?
    """
    import multiprocessing as mp
    import time

    ctx = mp.get_context("spawn")  # fork is unsafe once torch/av threads exist
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_inspect_worker, args=(str(path), child, prefix_bytes), daemon=True)
    deadline = time.monotonic() + read_timeout_s
    proc.start()
    child.close()
    seen = None

    def late() -> Inspection:
        return dataclasses.replace(seen, error=f"no answer from the decoder within {probe_timeout_s:g} s",
                                   timed_out=True)

    try:
        while True:
            if not parent.poll(max(0.0, deadline - time.monotonic())):
                if seen is None:
                    raise ProbeTimeout(f"the file's bytes did not arrive within {read_timeout_s:g} s")
                return late()
            status, payload, sent_at = parent.recv()
            if status == "hash":
                seen = payload
                deadline = sent_at + probe_timeout_s  # the probe's clock starts when the child finished hashing
                if not seen.size:
                    return seen
            elif seen is not None and sent_at > deadline:  # answered, but later than the probe was allowed
                return late()
            elif status == "ok":
                return dataclasses.replace(seen, info=payload)
            elif status == "busy" or seen is None:  # held, not a regular file, or unreadable: no hash
                raise SourceBusy(payload)
            else:
                return dataclasses.replace(seen, error=payload)
    except EOFError:
        if seen is None:
            raise SourceBusy("the reading process crashed") from None
        return dataclasses.replace(seen, error="the decoder process crashed")
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        parent.close()


# ---- frame-by-frame transcoding (de-identification) -------------------------------


def mono_frame(samples: np.ndarray, rate: int, pts: int) -> av.AudioFrame:
    """Mono float samples (clipped to [-1, 1]) as an audio frame at ``rate`` Hz starting at sample ``pts``."""
    samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    frame = av.AudioFrame.from_ndarray(samples[np.newaxis, :], format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
    return frame


class AudioFilter(Protocol):
    """A streaming mono audio filter (``tasks.voice.VoiceAnonymizer`` is one)."""

    sample_rate: int

    def process(self, x: np.ndarray) -> np.ndarray: ...

    def flush(self) -> np.ndarray: ...


class Transcoder:
    """Decode a video frame by frame and re-encode processed frames to a new MP4.

    The audio stream (if kept) is copied packet by packet while the video is
    read, so nothing accumulates in memory; with ``audio_filter`` it is
    decoded instead, resampled to mono ``audio_filter.sample_rate`` Hz,
    passed through the filter (streaming: ``process`` per chunk, ``flush`` at
    the end) and encoded as AAC.  No container or stream metadata
    of the source is carried over (creation time, GPS, handler names and
    device serials are dropped).  The output appears at ``dst`` only after
    ``commit()``; ``discard()`` (or an exception in a ``with`` block) leaves
    nothing there.

    Typical use::

        with Transcoder(src, dst, keep_audio=True) as tc:
            for f in tc.frames():          # upright RGB, source pts
                tc.write(process(f.rgb), pts_s=f.pts_s)
            tc.commit()

    ``frames_yuv``/``write_yuv`` do the same without full-size RGB (the
    decoder's yuv420p planes are edited and encoded as they are).
    """

    def __init__(self, src: str | Path, dst: str | Path, *, keep_audio: bool, crf: int = DEFAULT_CRF,
                 preset: str = DEFAULT_PRESET, audio_filter: AudioFilter | None = None) -> None:
        self.dst = Path(dst)
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = partial_name(self.dst)
        self.decoded = 0
        self.decode_error: str | None = None
        self._crf, self._preset = crf, preset
        self._committed = False
        try:
            self._in = av.open(str(src))
        except av.FFmpegError as exc:
            raise MediaError(f"cannot open video: {error_words(exc)}") from None
        try:
            self._vin = video_stream(self._in)
        except MediaError:
            self._in.close()
            raise
        self._vin.thread_type = "AUTO"
        self._ain = self._in.streams.audio[0] if (keep_audio and self._in.streams.audio) else None
        self._out = av.open(str(self.tmp), mode="w", format="mp4")
        self._aout = None
        self._filter, self._resampler, self._n_audio = audio_filter, None, 0
        self._raw_audio: deque = deque()  # decoded mono chunks waiting for the filter (a deque: two threads)
        if self._ain is not None and audio_filter is not None:
            self._aout = self._out.add_stream(AUDIO_CODEC, rate=audio_filter.sample_rate)
            self._aout.layout = "mono"
            self._aout.bit_rate = AUDIO_BITRATE
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=audio_filter.sample_rate)
        elif self._ain is not None:
            self._aout = self._out.add_stream_from_template(self._ain)
            self._aout.metadata.clear()
        self._vout = None
        self._pending_audio: list = []
        self._mux_lock = threading.Lock()  # audio (demux side) and video (encode side) may mux from two threads
        self._t0: float | None = None
        rate = self._vin.average_rate or self._vin.guessed_rate or Fraction(30)
        self._rate = Fraction(rate).limit_denominator(1001)

    @property
    def fps(self) -> float:
        return float(self._rate)

    @property
    def has_audio(self) -> bool:
        """Whether the output gets a sound track (the source has one and it is kept)."""
        return self._ain is not None

    def frames(self) -> Iterator[DecodedFrame]:
        """Decoded frames, upright, pts in seconds from the first frame.

        A decode error mid-file ends the iteration and is kept in
        ``decode_error`` (the caller judges coverage from ``decoded``).
        """
        for frame, pts in self._decoded():
            rot = int(round(frame.rotation or 0)) % 360
            yield DecodedFrame(index=self.decoded - 1, pts_s=pts, rgb=upright(frame.to_ndarray(format="rgb24"), rot))

    def frames_yuv(self, *, small_short_side: int | None) -> Iterator[YuvFrame]:
        """Decoded frames kept in yuv420p (upright, even sizes) with a small RGB copy.

        The cheap path for frame-by-frame editing: no full-size RGB is ever
        made (``write_yuv`` encodes the planes as they are).  ``small_rgb``
        has its short side at ``small_short_side`` (never upscaled; None =
        full size), made when first asked for.  Iterating may run in another thread than ``write_yuv``:
        audio packets copied on the way are muxed under a lock.
        """
        for frame, pts in self._decoded():
            rot = int(round(frame.rotation or 0)) % 360
            as_is = frame.format.name == PIX_FMT and frame.color_range != FULL_RANGE
            if as_is and not (frame.width % 2 or frame.height % 2):
                yuv = frame.to_ndarray(format=PIX_FMT)  # a copy: the decoder may reuse its buffers
            else:  # odd size, full range or another pixel format: via RGB, cropped to even
                rgb = frame.to_ndarray(format="rgb24")
                h, w = rgb.shape[:2]
                yuv = rgb_to_i420(rgb[:h - h % 2, :w - w % 2])
            if rot:
                yuv = i420_from_planes(*(upright(p, rot) for p in i420_planes(yuv)))
            h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
            sw, sh = output_size(w, h, small_short_side) if small_short_side else (w, h)
            yield YuvFrame(index=self.decoded - 1, pts_s=pts, yuv=yuv, small_size=(sw, sh))

    def _decoded(self) -> Iterator[tuple[av.VideoFrame, float]]:
        """(frame, pts in s from the first frame); copies audio packets to the output on the way."""
        streams = [self._vin] + ([self._ain] if self._ain is not None else [])
        tb = self._vin.time_base
        try:
            for packet in self._in.demux(*streams):
                if packet.stream is self._ain:
                    if self._filter is not None:
                        # decoded here, filtered and encoded by the thread that encodes video (_encode): the
                        # filter's Python work would otherwise hold up decoding, the slower side at 1080p
                        for frame in packet.decode():
                            self._raw_audio.extend(f.to_ndarray()[0] for f in self._resampler.resample(frame))
                        continue
                    if packet.dts is None:
                        continue
                    packet.stream = self._aout
                    self._mux_audio([packet])
                    continue
                for frame in packet.decode():
                    pts = float(frame.pts * tb) if frame.pts is not None else self.decoded / self.fps
                    if self._t0 is None:
                        self._t0 = pts
                    self.decoded += 1
                    yield frame, pts - self._t0
        except av.FFmpegError as exc:
            self.decode_error = error_words(exc)

    def _mux_audio(self, packets: list) -> None:
        with self._mux_lock:
            if self._vout is None:
                # the header is written on the first mux, and the video
                # stream only exists once the first frame is processed
                self._pending_audio.extend(packets)
            else:
                for packet in packets:
                    self._out.mux(packet)

    def _filtered(self, *, flush: bool = False) -> None:
        """Filter the decoded audio waiting in ``_raw_audio`` and encode it (``flush``: the filter's tail too)."""
        parts = []
        while self._raw_audio:
            parts.append(self._filter.process(self._raw_audio.popleft()))
        if flush:
            parts.append(self._filter.flush())
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if samples.size:
            out = mono_frame(samples, self._filter.sample_rate, self._n_audio)
            self._n_audio += samples.size
            self._mux_audio(self._aout.encode(out))
        if flush:
            self._mux_audio(self._aout.encode(None))

    def write(self, rgb: np.ndarray, *, pts_s: float) -> None:
        """Encode one processed RGB frame at its source presentation time."""
        h, w = rgb.shape[:2]
        w2, h2 = w - w % 2, h - h % 2  # yuv420p needs even sizes: drop a row/column
        self._encode(to_video_frame(rgb[:h2, :w2], PIX_FMT), w2, h2, pts_s)

    def write_yuv(self, yuv: np.ndarray, *, pts_s: float) -> None:
        """Encode one processed I420 frame (as from ``frames_yuv``) at its source presentation time."""
        h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
        self._encode(av.VideoFrame.from_ndarray(yuv, format=PIX_FMT), w, h, pts_s)

    def _encode(self, frame: av.VideoFrame, w: int, h: int, pts_s: float) -> None:
        with self._mux_lock:
            if self._vout is None:
                self._vout = self._out.add_stream(VIDEO_CODEC, rate=self._rate)
                self._vout.width, self._vout.height, self._vout.pix_fmt = w, h, PIX_FMT
                self._vout.codec_context.time_base = 1 / (self._rate * VFR_TICKS_PER_FRAME)
                self._vout.options = encoder_options(VIDEO_CODEC, crf=self._crf, preset=self._preset)
                for packet in self._pending_audio:
                    self._out.mux(packet)
                self._pending_audio.clear()
        frame.pts = int(round(pts_s * self._rate * VFR_TICKS_PER_FRAME))
        frame.time_base = 1 / (self._rate * VFR_TICKS_PER_FRAME)
        packets = self._vout.encode(frame)  # outside the lock: the encoder is this thread's alone
        with self._mux_lock:
            for packet in packets:
                self._out.mux(packet)
        if self._raw_audio:
            self._filtered()

    def commit(self) -> Path:
        """Flush, close and move the output into place."""
        try:
            if self._vout is not None:
                for packet in self._vout.encode(None):
                    self._out.mux(packet)
                if self._filter is not None and self._aout is not None:
                    self._raw_audio.extend(f.to_ndarray()[0] for f in self._resampler.resample(None))
                    self._filtered(flush=True)
            self._out.close()
        except av.FFmpegError as exc:
            self.discard()
            raise MediaError(f"cannot finish video: {error_words(exc)}") from None
        finally:
            self._in.close()
        if self._vout is None:
            self.tmp.unlink(missing_ok=True)
            raise MediaError("no frame could be decoded")
        self.tmp.replace(self.dst)
        self._committed = True
        return self.dst

    def discard(self) -> None:
        """Close everything and delete the partial output."""
        for c in (self._out, self._in):
            try:
                c.close()
            except (av.FFmpegError, ValueError):
                pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Transcoder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:  # an error, or the caller decided not to keep it
            self.discard()


def all_metadata(path: str | Path) -> dict[str, str]:
    """Every container and stream metadata tag of a file (``stream<i>:`` prefixed)."""
    with av.open(str(path)) as c:
        tags = dict(c.metadata)
        for s in c.streams:
            tags.update({f"stream{s.index}:{k}": v for k, v in s.metadata.items()})
    return tags


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size with the short side scaled to ``short_side`` (never upscaled), both even."""
    scale = min(1.0, short_side / min(width, height))
    w, h = max(2, round(width * scale)), max(2, round(height * scale))
    return w - w % 2, h - h % 2


SPREAD_MAX_DECODE = 600  # frames decoded after one seek at most (a long GOP): the frame reached by then is taken


def spread_frames(path: str | Path, n: int, *, short_side: int) -> list[DecodedFrame]:
    """``n`` frames spread evenly over the video (at k / n of its length, k = 0..n-1), resized, upright.

    Each is reached by a seek to the keyframe before it and decoding on
    (at most ``SPREAD_MAX_DECODE`` frames); ``index`` is k, ``pts_s`` its
    time from the first frame.  Frames reached twice (a GOP longer than the
    spacing) are kept once.  Raises ``MediaError`` with FFmpeg's message.
    """
    out: list[DecodedFrame] = []
    try:
        with av.open(str(path)) as container:
            stream = video_stream(container)
            stream.thread_type = "AUTO"
            tb = stream.time_base
            start = stream.start_time or 0
            dur = float(stream.duration * tb) if stream.duration else float(container.duration or 0) / 1e6
            seen: set[int] = set()
            for k in range(n):
                target = start + int(k * dur / max(1, n) / tb)
                container.seek(target, stream=stream, backward=True, any_frame=False)
                frame = None
                for m, frame in enumerate(container.decode(stream)):
                    if frame.pts is None or frame.pts >= target or m >= SPREAD_MAX_DECODE:
                        break
                if frame is None or frame.pts in seen:
                    continue
                seen.add(frame.pts)
                rot = int(round(frame.rotation or 0)) % 360
                disp_w, disp_h = (frame.height, frame.width) if rot % 180 else (frame.width, frame.height)
                w, h = output_size(disp_w, disp_h, short_side)
                conv_w, conv_h = (h, w) if rot % 180 else (w, h)
                rgb = upright(frame.to_ndarray(format="rgb24", width=conv_w, height=conv_h), rot)
                pts = float((frame.pts - start) * tb) if frame.pts is not None else 0.0
                out.append(DecodedFrame(index=k, pts_s=pts, rgb=rgb))
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode video: {exc}") from None
    return out


def sample_frames(path: str | Path, *, fps: float, short_side: int) -> Iterator[DecodedFrame]:
    """Frames at ``fps`` chosen by presentation time, resized, upright.

    Slot k covers [k/fps, (k+1)/fps) seconds from the first frame; the first
    frame whose pts falls in a slot is kept (VFR-safe: uneven input timing
    never shifts the grid; an empty slot is simply absent).  Only kept frames
    are converted to RGB.  ``index`` counts kept frames; ``pts_s`` is the
    source presentation time of the kept frame.
    """
    try:
        with av.open(str(path)) as container:
            stream = video_stream(container)
            stream.thread_type = "AUTO"
            tb = stream.time_base
            t0, last_slot, kept = None, -1, 0
            for n, frame in enumerate(container.decode(stream)):
                pts = float(frame.pts * tb) if frame.pts is not None else n / float(stream.average_rate or 30)
                t0 = pts if t0 is None else t0
                t = pts - t0
                slot = int(np.floor(t * fps + 1e-6))
                if slot <= last_slot:
                    continue
                last_slot = slot
                rot = int(round(frame.rotation or 0)) % 360
                disp_w, disp_h = (frame.height, frame.width) if rot % 180 else (frame.width, frame.height)
                w, h = output_size(disp_w, disp_h, short_side)
                conv_w, conv_h = (h, w) if rot % 180 else (w, h)
                rgb = upright(frame.to_ndarray(format="rgb24", width=conv_w, height=conv_h), rot)
                yield DecodedFrame(index=kept, pts_s=t, rgb=rgb)
                kept += 1
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode video: {error_words(exc)}") from None
    except IndexError:
        raise MediaError("file has no video stream") from None


@dataclass(frozen=True)
class ClipPlan:
    """One output clip: frames ``first``..``last`` (inclusive indices) of a video, written to ``path``."""

    first: int
    last: int
    path: Path


def write_clips(video: str | Path, plans: list[ClipPlan], render, *, fps: float, crf: int) -> None:
    """Cut several (possibly overlapping) clips from one decoding pass over ``video``.

    ``render(i, k, rgb)`` returns the image clip ``i`` gets for frame ``k``, or
    None to leave that frame out.  A clip's writer is open only while its
    frames stream by.  If the video ends early, what was written is kept; on
    an error nothing is left at any clip's path.
    """
    if not plans:
        return
    open_: dict[int, VideoWriter] = {}
    end = max(p.last for p in plans)
    ok = False
    try:
        for f in iter_frames(video):
            k = f.index
            for i, p in enumerate(plans):
                if p.first <= k <= p.last:
                    img = render(i, k, f.rgb)
                    if img is not None:
                        if i not in open_:
                            h, w = img.shape[:2]
                            open_[i] = VideoWriter(p.path, width=w, height=h, fps=fps, crf=crf, threads=1)
                        open_[i].write(img)
                if k == p.last and i in open_:
                    open_.pop(i).close()
            if k >= end:
                break
        ok = True
    finally:
        for w in open_.values():
            w.__exit__(None if ok else RuntimeError, None, None)
