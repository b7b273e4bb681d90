"""downsample: the de-identified video at 2 fps, resized, plus a frames table.

Per recording (``downsample_recording``): frames are chosen by presentation
time (``tasks.media.sample_frames``: slot k = [k/fps, (k+1)/fps)), so
variable-frame-rate input keeps an even time grid: a kept frame is stamped
with its slot's start ``k / fps`` (off the source time by less than one
source frame), and a slot the source left empty is simply absent.  The
short side is scaled to ``short_side`` (never upscaled).  Outputs in ``out_dir``
(``data/03_downsample/``): ``videos/<id>.mp4`` (H.264 at ``fps``, no audio),
``frames/<id>.parquet`` (table ``frames``: recording_id, frame_index, pts_s in
seconds, on the k / fps grid), and for the stage ``frames.parquet``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa

from tasks import layout
from tasks.contract import Stage, Table
from tasks.layout import rel
from tasks.media import VideoWriter, sample_frames
from tasks.params import DownsampleParams, Params
from tasks.schema import read_table, write_table

CRF = 20  # a little higher quality than default: these frames are what the models see
SLOT_EPS = 1e-6  # the same tolerance sample_frames uses to assign a pts to its slot


def downsample_recording(recording_id: str, src: Path, out_dir: Path, params: DownsampleParams) -> pa.Table:
    """Write ``videos/<id>.mp4`` and ``frames/<id>.parquet``; returns the frames table."""
    out_dir = Path(out_dir)
    rows: list[dict] = []
    writer = None
    try:
        for f in sample_frames(src, fps=params.fps, short_side=params.short_side):
            if writer is None:
                h, w = f.rgb.shape[:2]
                writer = VideoWriter(out_dir / "videos" / f"{recording_id}.mp4", width=w, height=h, fps=params.fps,
                                     crf=CRF)
            grid_s = math.floor(f.pts_s * params.fps + SLOT_EPS) / params.fps
            writer.write(f.rgb, pts_s=grid_s)
            rows.append(dict(recording_id=recording_id, frame_index=f.index, pts_s=grid_s))
    except BaseException:
        if writer is not None:
            writer.__exit__(RuntimeError, None, None)
        raise
    if writer is None:
        raise ValueError(f"{recording_id}: the de-identified video has no frames")
    writer.close()
    path = write_table("frames", rows, out_dir / "frames" / f"{recording_id}.parquet")
    return read_table("frames", path)


def run(recording_id: str, data_dir: Path, out_dir: Path, params: Params) -> dict:
    """One recording's de-identified video -> its 2 fps video and frames table."""
    frames = downsample_recording(recording_id, layout.path(data_dir, "deidentify", "videos", f"{recording_id}.mp4"),
                                  out_dir, params.downsample)
    return {"recording_id": recording_id, "n_frames": frames.num_rows}


STAGE = Stage(
    "downsample", "recording", run, "2 fps frames and video of each de-identified recording",
    after="deidentify", inputs=(rel("deidentify", "videos", "{rid}.mp4"),), tables=(Table("frames", "frames"),))
