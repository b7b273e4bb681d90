"""quiet: native stderr noise is held back, and shown when the work fails or in debug mode."""

from __future__ import annotations

import os

import pytest

from tasks import quiet


def test_native_stderr_is_held_back_on_success(capfd, monkeypatch):
    monkeypatch.delenv(quiet.DEBUG_ENV, raising=False)
    with quiet.native_stderr_captured():
        os.write(2, b"W0000 00:00:1.0 inference_feedback_manager.cc:114] noise\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_native_stderr_is_replayed_when_the_work_fails(capfd, monkeypatch):
    monkeypatch.delenv(quiet.DEBUG_ENV, raising=False)
    with pytest.raises(RuntimeError, match="graph failed"):
        with quiet.native_stderr_captured():
            os.write(2, b"E0000 calculator_graph.cc] the real reason\n")
            raise RuntimeError("graph failed")
    assert "the real reason" in capfd.readouterr().err


def test_debug_mode_captures_nothing(capfd, monkeypatch):
    monkeypatch.setenv(quiet.DEBUG_ENV, "1")
    with quiet.native_stderr_captured():
        os.write(2, b"W0000 visible in debug\n")
    assert "visible in debug" in capfd.readouterr().err


def test_mediapipe_models_start_quietly_in_a_stage_run(capfd, monkeypatch):
    """A real mediapipe pose model started and run inside the capture leaves nothing on stderr."""
    import numpy as np

    from tasks.params import PoseParams
    from tasks.pose import _pose_model

    monkeypatch.delenv(quiet.DEBUG_ENV, raising=False)
    with quiet.native_stderr_captured():
        with _pose_model(PoseParams(), static=True) as model:
            model.process(np.zeros((64, 64, 3), np.uint8))
    err = capfd.readouterr().err
    assert "W0000" not in err and "XNNPACK" not in err, err
