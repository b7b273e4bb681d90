"""quiet: silence third-party log spam at its source (mediapipe/absl, TFLite, protobuf).

mediapipe's C++ graph threads write absl lines (``W0000 ... Feedback manager requires
a model with a single signature inference``, ``INFO: Created TensorFlow Lite XNNPACK
delegate``) straight to file descriptor 2 while a model starts and first runs, where
Python's logging cannot filter them, and protobuf warns ``SymbolDatabase.GetPrototype()
is deprecated`` once per process.  ``native_stderr_captured()`` sends fd 2 to a
temporary file for a block of work (``tasks.cache.run_job`` wraps every stage run in it) and
replays what it caught when the block raises, so a real error is never hidden;
with ``SEMIOFLOW_DEBUG=1`` (``semioflow --debug``) it captures nothing.
``tasks.detectors.import_mediapipe()`` is the one place mediapipe is imported.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator


DEBUG_ENV = "SEMIOFLOW_DEBUG"  # "1": show everything third-party code prints
# Native loggers read these when they start; set before mediapipe is imported (worker processes too).
NATIVE_LOG_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2", "ABSL_MIN_LOG_LEVEL": "2",
                  # transformers: no "Writing model shards" bars, warnings at error level only
                  "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def debug() -> bool:
    return os.environ.get(DEBUG_ENV) == "1"


def quiet_environment() -> None:
    """Set the native loggers' levels (unless debugging) for this process and its children."""
    if not debug():
        for k, v in NATIVE_LOG_ENV.items():
            os.environ.setdefault(k, v)
        warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated",
                                category=UserWarning)


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Route file descriptor 2 to a temporary file for the block (see module doc)."""
    if debug():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                caught.seek(0)
                sys.stderr.write(caught.read().decode(errors="replace"))
                sys.stderr.flush()
