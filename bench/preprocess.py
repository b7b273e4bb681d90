"""Preprocessing benchmark: ours vs the codec limit, deface and a naive OpenCV loop, on one file.

Renders a phantom 1920x1080 30 fps H.264 recording, ``--workload worst``
(today's moving-face clip: ``tasks.synth.seizure.make_spec``, 20 s) or
``--workload typical`` (``typical_spec``: a 10-minute EMU night with a
still, sleeping patient, two staff visits, dimmed lights, one 60 s seizure,
overlay text and a running clock), then in one run:

1. limit: PyAV decode + libx264 ``ultrafast`` encode of the same file;
2. ours: ingest -> deidentify -> downsample -> window (tasks functions, no
   Prefect), with deidentify's per-part profile in ms per frame (decode,
   motion gate, detect, second detector, text, blur, audit, text audit,
   encode, audio; parts run in three threads, so they add up to more than
   the wall time);
3. deface on the same file through its own per-frame loop (Python API): at its
   CLI defaults (full-size CenterFace) on the first ``--deface-frames`` frames,
   and with ``--scale 640x360`` on every frame;
4. naive: cv2.VideoCapture every frame, mediapipe faces Gaussian-blurred, every 15th frame kept;

then deidentify alone with burned-in text redaction and voice anonymisation
off and on (their added cost), then face recall of each output against the
planted ``faces`` truth (a truth box counts as blurred when the variance of
the Laplacian inside it falls below ``BLURRED_RATIO`` of the raw frame's), and
the peak RSS of our deidentify (a child process) on a short and a long input
(the clip repeated by stream copy).  Prints frames/s (of source video) and
the goal ratios (issue #22: deidentify >= 0.6x the limit on the typical
workload, >= 0.35x on the worst case, >= 3x deface --scale 640x360).

Figures on the 2-core dev machine, one run each (the limit measured in the same run):

* worst, 20 s: before (d071bb6) deidentify 23.8 frames/s, limit 246.7 (0.10x),
  deface-s 12.6; after (cf70cb7) 53.4 frames/s, limit 250.8 (0.21x), deface-s
  12.7 (4.2x), recall 100 % of 60 sampled truth boxes both times (deface-s
  96.7 %); peak RSS 60 s -> 1030 MiB, 300 s -> 1035 MiB (672 MiB before
  OpenVINO).
* typical, 600 s: before (d071bb6) deidentify 25.4 frames/s, limit 252.6 (0.10x);
  after (cf70cb7) 77.5 frames/s, limit 257.3 (0.30x); recall 100 % of 1871
  sampled truth boxes both times.

    .venv/bin/python bench/preprocess.py --workload worst --short 60 --long 300
    .venv/bin/python bench/preprocess.py --workload typical      # ~15 min
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTH, HEIGHT, FPS = 1920, 1080, 30.0
SEED = 11
BLURRED_RATIO = 0.2  # de-identified / raw variance of Laplacian inside a truth box below this = blurred
RECALL_STRIDE = 10  # frames; recall is measured on every 10th frame
NAIVE_KEEP_EVERY = 15  # frames; the naive loop keeps 2 fps of a 30 fps source
GOALS = {"deid/limit": {"typical": 0.6, "worst": 0.35}, "ours/deface": 2.0, "deid/deface-s": 3.0, "rss long/short": 1.15, "rss_gb": 1.5}


def typical_spec(name: str, seconds: float):
    """A typical EMU night, scaled to ``seconds`` (planned for 600): fixed camera, the patient asleep and still
    for the first 45 %, staff entering twice, the lights dimmed for a quarter of it, one 60 s seizure with
    strong motion (clonic, head turning, oral automatisms, tonic, full-body shaking), overlay text with a
    running clock (the phantom's overlay plan), a quiet post-ictal tail with slow fidgeting."""
    import dataclasses

    from tasks.synth import seizure as sz

    spec = sz.make_spec(source_name=name, duration_s=seconds, width=WIDTH, height=HEIGHT, fps=FPS, seed=SEED,
                        features={"clonic"})
    d = float(seconds)
    t0 = round(0.45 * d, 3)
    sz_s = min(60.0, d / 4)  # the seizure: 60 s in a 10-min night
    Ev = sz.Event
    events = (Ev(sz.SLEEP_FEATURE, 0.0, t0),
              Ev("head_turning", t0 + 0.05 * sz_s, t0 + 0.3 * sz_s, side="left"),
              Ev("clonic", t0, t0 + 0.45 * sz_s, side="right", rate_hz=3.0),
              Ev("oral_automatisms", t0 + 0.3 * sz_s, t0 + 0.6 * sz_s, rate_hz=1.5),
              Ev("tonic", t0 + 0.45 * sz_s, t0 + 0.6 * sz_s),
              Ev("full_body_shaking", t0 + 0.6 * sz_s, t0 + sz_s, rate_hz=4.0))
    visits = (sz.Visit(round(0.2 * d, 3), round(0.2 * d + 12.0, 3)),
              sz.Visit(round(t0 + sz_s + 5.0, 3), round(t0 + sz_s + 20.0, 3)))
    lights = ((round(0.7 * d, 3), 0.5), (round(0.95 * d, 3), 1.0))  # dimmed, then back on
    return dataclasses.replace(spec, events=tuple(sorted(events, key=lambda e: e.t_start_s)), visits=visits,
                               lights=lights, glances=())


def render(path: Path, seconds: float, workload: str = "worst") -> dict:
    """Render the phantom (``worst``: the moving-face clip; ``typical``: ``typical_spec``); returns truth boxes
    by frame index."""
    from tasks.synth import seizure as sz

    if workload == "typical":
        spec = typical_spec(path.name, seconds)
    else:
        spec = sz.make_spec(source_name=path.name, duration_s=seconds, width=WIDTH, height=HEIGHT, fps=FPS,
                            seed=SEED)
    t0 = time.perf_counter()
    truth = sz.render_recording(spec, path)
    print(f"rendered {path.name}: {spec.n_frames} frames {WIDTH}x{HEIGHT} @ {FPS:g} fps in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    boxes: dict[int, list] = {}
    for i, b in zip(truth.face_frame.tolist(), truth.face_box.tolist()):
        boxes.setdefault(int(i), []).append(b)
    return {"n": spec.n_frames, "boxes": boxes}


def limit(src: Path, dst: Path) -> float:
    """Decode + ultrafast encode, no pixel work: the ceiling for any transcoding stage."""
    import av

    t0 = time.perf_counter()
    n = 0
    with av.open(str(src)) as cin, av.open(str(dst), "w") as cout:
        vin = cin.streams.video[0]
        vin.thread_type = "AUTO"
        vout = cout.add_stream("libx264", rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        vout.options = {"preset": "ultrafast", "crf": "23"}
        for frame in cin.decode(vin):
            for p in vout.encode(frame):
                cout.mux(p)
            n += 1
        for p in vout.encode(None):
            cout.mux(p)
    return n / (time.perf_counter() - t0)


def ours(src: Path, work: Path, n_frames: int) -> tuple[float, Path, dict]:
    from tasks import face_blur
    from tasks.face_blur import RecordingInput, deidentify_recording
    from tasks.downsample import downsample_recording
    from tasks.ingest import ingest
    from tasks.params import DeidentifyParams, DownsampleParams, IngestParams, WindowParams
    from tasks.schema import read_table
    from tasks.window import window_one

    inbox = work / "inbox"
    inbox.mkdir(parents=True)
    os.link(src, inbox / src.name)
    times = {}
    profile = face_blur.Profile() if hasattr(face_blur, "Profile") else None  # commits before #22 have none
    t0 = time.perf_counter()
    ingest(inbox, work / "01", IngestParams(settle_s=0), id_key=b"0" * 64)
    row = read_table("manifest", work / "01" / "manifest.parquet").to_pylist()[0]
    rid, dur = row["recording_id"], row["duration_s"]
    times["ingest"] = time.perf_counter() - t0
    t = time.perf_counter()
    deid = deidentify_recording(RecordingInput(rid, src, dur), work / "02", DeidentifyParams(),
                                **({"profile": profile} if profile is not None else {}))
    times["deidentify"] = time.perf_counter() - t
    print(f"deidentify {n_frames / times['deidentify']:.1f} frames/s", flush=True)
    if profile is not None:
        print("  per part, ms per frame of thread time (three threads: the sum can exceed the wall time):\n  "
              + "  ".join(f"{k} {1000 * v / n_frames:.2f}" for k, v in profile.seconds.items())
              + f"  | wall {1000 * times['deidentify'] / n_frames:.2f}\n  frames each ran on: "
              + ", ".join(f"{k} {profile.calls[k] / n_frames:.0%}" for k in ("detect", "second", "text")),
              flush=True)
    assert deid["status"] == "ok", deid
    t = time.perf_counter()
    downsample_recording(rid, work / "02" / "videos" / f"{rid}.mp4", work / "03", DownsampleParams())
    times["downsample"] = time.perf_counter() - t
    t = time.perf_counter()
    window_one(rid, work / "03" / "frames" / f"{rid}.parquet", dur, work / "04", WindowParams())
    times["window"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    return n_frames / total, work / "02" / "videos" / f"{rid}.mp4", times


PRIVACY_VARIANTS = {  # deidentify params: what burned-in text and voice anonymisation each add
    "faces only": dict(text="none", text_audit_fps=0.0, audio="keep"),
    "+ text": dict(audio="keep"),
    "+ voice": dict(text="none", text_audit_fps=0.0),
    "default": {},
}


def privacy_parts(src: Path, work: Path, n_frames: int) -> dict[str, float]:
    """Deidentify frames/s with text redaction (+ its OCR audit) and voice anonymisation on and off."""
    import dataclasses

    from tasks.face_blur import RecordingInput, deidentify_recording
    from tasks.media import probe
    from tasks.params import DeidentifyParams

    dur = probe(src).duration_s
    out = {}
    for label, kw in PRIVACY_VARIANTS.items():
        t = time.perf_counter()
        row = deidentify_recording(RecordingInput("R", src, dur), work / label.replace(" ", "_").replace("+", "p"),
                                   dataclasses.replace(DeidentifyParams(), **kw))
        out[label] = n_frames / (time.perf_counter() - t)
        assert row["status"] == "ok", row
        print(f"deidentify, {label}: {out[label]:.1f} frames/s", flush=True)
    return out


DEFACE_THRESHOLD = 0.2  # deface CLI defaults: --thresh 0.2, --mask-scale 1.3, --replacewith blur, ellipse
DEFACE_MASK_SCALE = 1.3
DEFACE_SCALED = (640, 360)  # deface --scale WxH: the network sees this size (ours sees 640x360 too)


def deface(src: Path, dst: Path, *, max_frames: int | None, in_shape: tuple[int, int] | None) -> tuple[float, int, str]:
    """deface's own per-frame loop (``deface.deface.video_detect``) through its Python API.

    The same reader (imageio-ffmpeg), CenterFace, ``anonymize_frame`` and
    writer (libx264) as its CLI, with the CLI's defaults; ``in_shape`` is its
    ``--scale`` (None = full-size frames, the default).  Only the first
    ``max_frames`` frames are processed when given (full-size CenterFace on
    1080p runs at well under 1 frame/s here; frames/s is a rate, and recall
    is measured on the frames written).  Returns (frames/s, frames, settings).
    """
    import imageio.v2 as iio
    from deface.centerface import CenterFace
    from deface.deface import anonymize_frame

    t0 = time.perf_counter()
    cf = CenterFace(in_shape=in_shape, backend="auto")  # auto = onnxruntime if the onnx package is there, else OpenCV
    reader = iio.get_reader(str(src))
    # macro_block_size=1: imageio would otherwise pad 1080 rows to 1088 and shift the truth boxes
    writer = iio.get_writer(str(dst), format="FFMPEG", mode="I", fps=reader.get_meta_data()["fps"], codec="libx264",
                            macro_block_size=1)
    n = 0
    for frame in reader.iter_data():
        dets, _ = cf(frame, threshold=DEFACE_THRESHOLD)
        anonymize_frame(dets, frame, mask_scale=DEFACE_MASK_SCALE, replacewith="blur", ellipse=True,
                        draw_scores=False, replaceimg=None, mosaicsize=20)
        writer.append_data(frame)
        n += 1
        if max_frames and n >= max_frames:
            break
    reader.close()
    writer.close()
    fps = n / (time.perf_counter() - t0)
    shape = "full-size frames" if in_shape is None else f"--scale {in_shape[0]}x{in_shape[1]}"
    return fps, n, f"CenterFace {cf.backend}, {shape}, thresh {DEFACE_THRESHOLD}, mask-scale {DEFACE_MASK_SCALE}, blur"


def naive(src: Path, dst: Path) -> float:
    """The obvious loop: read every frame, blur mediapipe faces, keep every 15th frame."""
    import cv2
    import mediapipe as mp

    t0 = time.perf_counter()
    cap = cv2.VideoCapture(str(src))
    writer = None
    n = 0
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            h, w = bgr.shape[:2]
            res = det.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            for d in res.detections or []:
                b = d.location_data.relative_bounding_box
                x0, y0 = max(0, int(b.xmin * w)), max(0, int(b.ymin * h))
                x1, y1 = min(w, int((b.xmin + b.width) * w)), min(h, int((b.ymin + b.height) * h))
                if x1 - x0 > 2 and y1 - y0 > 2:
                    bgr[y0:y1, x0:x1] = cv2.GaussianBlur(bgr[y0:y1, x0:x1], (0, 0), max(x1 - x0, y1 - y0) / 4)
            if n % NAIVE_KEEP_EVERY == 0:
                if writer is None:
                    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), FPS / NAIVE_KEEP_EVERY, (w, h))
                writer.write(bgr)
            n += 1
    cap.release()
    if writer is not None:
        writer.release()
    return n / (time.perf_counter() - t0)


def recall(raw: Path, out: Path, truth: dict, *, out_every: int = 1, max_frames: int | None = None
           ) -> tuple[float, int]:
    """Share of truth boxes (every RECALL_STRIDE-th frame) whose sharpness collapsed in ``out``.

    Only the frames ``out`` holds are counted (and at most the first ``max_frames`` source frames).
    """
    import cv2

    from tasks.media import iter_frames

    def lapvar(rgb, b):
        x0, y0, x1, y1 = max(0, int(b[0])), max(0, int(b[1])), int(np.ceil(b[2])), int(np.ceil(b[3]))
        roi = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
        return float(cv2.Laplacian(roi, cv2.CV_64F).var()) if roi.size > 36 else None

    raw_frames = iter_frames(raw)
    blurred = total = 0
    for k, f_out in enumerate(iter_frames(out)):
        idx = k * out_every
        if max_frames is not None and idx >= max_frames:
            break
        f_raw = next(raw_frames)
        while f_raw.index < idx:
            f_raw = next(raw_frames)
        if idx % RECALL_STRIDE:
            continue
        for b in truth["boxes"].get(idx, []):
            a, o = lapvar(f_raw.rgb, b), lapvar(f_out.rgb, b)
            if a is None or a <= 0:
                continue
            total += 1
            blurred += o / a < BLURRED_RATIO
    return (blurred / total if total else float("nan")), total


def loop_clip(src: Path, dst: Path, times: int) -> float:
    """``src`` played ``times`` times in a row, by stream copy (no decode); returns the duration in s.

    Memory behaviour is what the RSS check measures, so the long input
    repeats the short one's picture instead of rendering new frames.  Each
    copy starts on the source's first keyframe, so the joins decode cleanly.
    """
    import av

    with av.open(str(src)) as cin, av.open(str(dst), "w", format="mp4") as cout:
        ins = [s for s in (cin.streams.video[0], *cin.streams.audio[:1])]
        outs = {s.index: cout.add_stream_from_template(s) for s in ins}
        offset = {s.index: 0 for s in ins}  # added to a copy's timestamps, per stream
        for _ in range(times):
            cin.seek(0)
            first, nxt = {}, dict(offset)
            for packet in cin.demux(*ins):
                if packet.dts is None:
                    continue
                i = packet.stream.index
                first.setdefault(i, packet.dts)
                packet.pts += offset[i]
                packet.dts += offset[i]
                # the next copy's first packet follows this copy's last one (audio priming overlaps otherwise)
                nxt[i] = packet.dts + (packet.duration or 1) - first[i]
                packet.stream = outs[i]
                cout.mux(packet)
            offset = nxt
        v = cin.streams.video[0]
        return float(offset[v.index] * v.time_base)


def rss_child(src: str, duration: str) -> None:
    """Run our deidentify on one file and print the peak RSS (MiB) of this process.

    The peak is the kernel's VmHWM for this process's own memory map:
    ``getrusage(RUSAGE_SELF).ru_maxrss`` would also count the parent's RSS
    at fork time (Linux carries it across exec), i.e. the bench's own size.
    """
    from tasks.face_blur import RecordingInput, deidentify_recording
    from tasks.params import DeidentifyParams

    with tempfile.TemporaryDirectory() as d:
        row = deidentify_recording(RecordingInput("R", Path(src), float(duration)), Path(d), DeidentifyParams())
    print(json.dumps({"rss_mib": _vm_hwm_mib(), "status": row["status"]}))


def _vm_hwm_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: kB on Linux, bytes on macOS


def peak_rss(src: Path, duration: float) -> float:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(src), str(duration)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["rss_mib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["worst", "typical"], default="worst",
                    help="worst: today's moving-face clip; typical: a 10-min EMU night (typical_spec)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="length of the comparison clip (>= 20; default 20 worst, 600 typical)")
    ap.add_argument("--short", type=float, default=20.0, help="short input for the RSS check, seconds")
    ap.add_argument("--long", type=float, default=120.0, help="long input for the RSS check, seconds")
    ap.add_argument("--deface-frames", type=int, default=120,
                    help="frames deface processes at its defaults (full-size CenterFace is slow; a rate is a rate)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["deface", "deface-scaled", "naive", "rss", "privacy"])
    ap.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    if args.seconds is None:
        args.seconds = 20.0 if args.workload == "worst" else 600.0
    if args.workload == "typical" and not args.skip:  # deface-s alone would take half an hour on 10 min of 1080p
        args.skip = ["deface", "deface-scaled", "naive", "rss", "privacy"]
    with tempfile.TemporaryDirectory(prefix="bench_pre_") as tmp:
        work = Path(tmp)
        src = work / "clip.mp4"
        truth = render(src, args.seconds, args.workload)
        n = truth["n"]
        fps, rec, notes = {}, {}, {}
        fps["limit"] = limit(src, work / "limit.mp4")
        print(f"limit  (PyAV decode + x264 ultrafast): {fps['limit']:.1f} frames/s", flush=True)
        fps["ours"], ours_video, times = ours(src, work / "ours", n)
        fps["deid"] = n / times["deidentify"]
        print(f"ours   (ingest->deidentify->downsample->window): {fps['ours']:.1f} frames/s  "
              + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()), flush=True)
        rec["ours"] = recall(src, ours_video, truth)
        parts = privacy_parts(src, work / "parts", n) if "privacy" not in args.skip else {}
        if "deface" not in args.skip:
            fps["deface"], k, notes["deface"] = deface(src, work / "deface.mp4", max_frames=args.deface_frames,
                                                      in_shape=None)
            rec["deface"] = recall(src, work / "deface.mp4", truth)
            rec["ours@deface"] = recall(src, ours_video, truth, max_frames=k)
            notes["deface"] += f"; first {k} frames"
            print(f"deface ({notes['deface']}): {fps['deface']:.2f} frames/s", flush=True)
        if "deface-scaled" not in args.skip:
            fps["deface-s"], k, notes["deface-s"] = deface(src, work / "deface_s.mp4", max_frames=None,
                                                           in_shape=DEFACE_SCALED)
            rec["deface-s"] = recall(src, work / "deface_s.mp4", truth)
            print(f"deface-s ({notes['deface-s']}; all {k} frames): {fps['deface-s']:.1f} frames/s", flush=True)
        if "naive" not in args.skip:
            fps["naive"] = naive(src, work / "naive.mp4")
            print(f"naive  (cv2 read all, mediapipe blur, keep 1/{NAIVE_KEEP_EVERY}): {fps['naive']:.1f} frames/s",
                  flush=True)
            rec["naive"] = recall(src, work / "naive.mp4", truth, out_every=NAIVE_KEEP_EVERY)
        rss = {}
        if "rss" not in args.skip:
            for label, secs in (("short", args.short), ("long", args.long)):
                p = work / f"rss_{label}.mp4"
                dur = loop_clip(src, p, max(1, round(secs / args.seconds)))
                rss[label] = (dur, peak_rss(p, dur))
                p.unlink()
                print(f"peak RSS of deidentify, {label} ({dur:.0f} s): {rss[label][1]:.0f} MiB", flush=True)

        print(f"\n== {args.seconds:g} s clip, {n} frames {WIDTH}x{HEIGHT} @ {FPS:g} fps, {os.cpu_count()} cores, "
              f"load average before the summary {os.getloadavg()[0]:.1f} ==")
        print(f"{'':10s}{'frames/s':>10s}{'x realtime':>12s}{'face recall':>16s}")
        for k, v in fps.items():
            r = rec.get("ours" if k == "deid" else k)
            shown = f"{r[0]:.1%} of {r[1]}" if r else "-"
            print(f"{k:10s}{v:10.1f}{v / FPS:12.2f}{shown:>16s}")
        for k, note in notes.items():
            print(f"  {k}: {note}")
        print(f"deid/limit  = {fps['deid'] / fps['limit']:.2f}  (deidentify alone; goal >= "
              f"{GOALS['deid/limit'][args.workload]})")
        print(f"ours/limit  = {fps['ours'] / fps['limit']:.2f}  (ingest -> window)")
        if "deface" in fps:
            r, ro = rec["deface"], rec["ours@deface"]
            print(f"ours/deface = {fps['ours'] / fps['deface']:.1f}  (goal >= {GOALS['ours/deface']}; recall on the "
                  f"first {args.deface_frames} frames: ours {ro[0]:.1%} of {ro[1]} vs deface {r[0]:.1%} of {r[1]})")
        if "deface-s" in fps:
            print(f"deid/deface-s = {fps['deid'] / fps['deface-s']:.2f}  (goal >= {GOALS['deid/deface-s']})")
            print(f"ours/deface-s = {fps['ours'] / fps['deface-s']:.2f}  (recall on all frames: ours "
                  f"{rec['ours'][0]:.1%} vs deface-s {rec['deface-s'][0]:.1%})")
        if parts:
            base = parts["faces only"]
            print("deidentify frames/s, faces only = 1: " + ", ".join(
                f"{k} {v / base:.2f}" for k, v in parts.items() if k != "faces only")
                + "  (text: PP-OCR regions every 0.5 s + OCR audit at 0.5 fps; voice: McAdams anonymisation)")
        if rss:
            (ds, s_mib), (dl, l_mib) = rss["short"], rss["long"]
            print(f"peak RSS of deidentify: {ds:.0f} s -> {s_mib:.0f} MiB, {dl:.0f} s -> {l_mib:.0f} MiB; "
                  f"long/short = {l_mib / s_mib:.2f}  (goal <= {GOALS['rss long/short']}); "
                  f"absolute {l_mib / 1024:.2f} GiB (goal < {GOALS['rss_gb']} GB)")


if __name__ == "__main__":
    main()
