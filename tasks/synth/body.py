"""Articulated 2D body of the phantom patient (and the staff silhouette).

The patient sits upright on a bed facing the camera.  A ``Pose`` holds the
per-frame degrees of freedom (shoulder abduction, elbow flexion, trunk and
pelvis offsets); ``skeleton`` turns it into joint pixels with mediapipe-pose
joint names, and ``draw_body`` paints shaded limbs (gown sleeves, bare
forearms and hands, trousers, feet) with OpenCV so a real pose estimator
recognises a person.  Lengths are in units of frame height, so one model
serves 384x288 and 1920x1080 alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Body geometry in frame heights (before the per-patient body scale).
SHOULDER_HALF = 0.092
HIP_HALF = 0.062
UPPER_ARM = 0.135
FOREARM = 0.125
THIGH = 0.10  # seated facing the camera: the thigh is foreshortened
SHIN = 0.19
NECK = 0.045
HEAD_HEIGHT = 0.17  # face patch height incl. hair
TORSO = 0.25  # shoulder line to hip line
SHOULDER_Y = 0.40  # shoulder line height in the frame (fraction of height)

BODY_JOINTS = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
FACE_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "mouth_left", "mouth_right")
JOINTS = FACE_JOINTS + BODY_JOINTS


@dataclass(frozen=True)
class Look:
    """Colours (RGB) of one patient's clothes and skin."""

    gown: tuple[int, int, int]
    trousers: tuple[int, int, int]
    skin: tuple[int, int, int]
    scale: float = 1.0  # body size relative to the reference body


def skeleton(pose: dict[str, float], width: int, height: int, scale: float) -> dict[str, tuple[float, float]]:
    """Joint pixels for one frame from the pose degrees of freedom.

    ``pose`` keys: trunk_dx, trunk_dy, lean (rad), pelvis_dy (frame heights),
    abd_left/abd_right (rad, 0 = arm hanging), flex_left/flex_right (rad,
    0 = straight elbow), knee_spread (frame heights).  Also returns ``neck``
    and ``head`` (head centre) used for drawing.
    """
    u = height * scale
    cx = width / 2 + pose["trunk_dx"] * height
    sy = height * SHOULDER_Y + pose["trunk_dy"] * height
    hip_y = sy + TORSO * u + pose["pelvis_dy"] * height
    lean = pose["lean"]
    j: dict[str, tuple[float, float]] = {}
    hip_cx = width / 2 + 0.3 * pose["trunk_dx"] * height
    # Lean rotates the upper body about the hip centre.
    c, s = np.cos(lean), np.sin(lean)

    def about_hip(x: float, y: float) -> tuple[float, float]:
        dx, dy = x - hip_cx, y - hip_y
        return hip_cx + c * dx - s * dy, hip_y + s * dx + c * dy

    for side, sign in (("left", 1.0), ("right", -1.0)):
        shoulder = about_hip(cx + sign * SHOULDER_HALF * u, sy)
        abd = pose[f"abd_{side}"] + sign * lean
        elbow = (shoulder[0] + sign * np.sin(abd) * UPPER_ARM * u, shoulder[1] + np.cos(abd) * UPPER_ARM * u)
        fa = abd - pose[f"flex_{side}"]
        wrist = (elbow[0] + sign * np.sin(fa) * FOREARM * u, elbow[1] + np.cos(fa) * FOREARM * u)
        hip = (hip_cx + sign * HIP_HALF * u, hip_y)
        knee = (hip[0] + sign * (0.035 + pose["knee_spread"]) * u, hip[1] + THIGH * u)
        ankle = (knee[0] + sign * 0.01 * u, knee[1] + SHIN * u)
        j[f"{side}_shoulder"], j[f"{side}_elbow"], j[f"{side}_wrist"] = shoulder, elbow, wrist
        j[f"{side}_hip"], j[f"{side}_knee"], j[f"{side}_ankle"] = hip, knee, ankle
    neck = about_hip(cx, sy - 0.25 * NECK * u)
    head = about_hip(cx, sy - (NECK + 0.5 * HEAD_HEIGHT * 0.9) * u)
    j["neck"], j["head"] = neck, head
    return j


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, v * f))) for v in rgb)


def _limb(img: np.ndarray, a, b, color, width: float) -> None:
    """A shaded cylinder: dark rim, base colour, highlight stripe."""
    pa, pb = (int(round(a[0])), int(round(a[1]))), (int(round(b[0])), int(round(b[1])))
    w = max(2, int(round(width)))
    cv2.line(img, pa, pb, _shade(color, 0.62), w, cv2.LINE_AA)
    cv2.line(img, pa, pb, color, max(1, int(w * 0.72)), cv2.LINE_AA)
    cv2.line(img, pa, pb, _shade(color, 1.18), max(1, int(w * 0.28)), cv2.LINE_AA)


def draw_body(img: np.ndarray, j: dict[str, tuple[float, float]], look: Look, height: int) -> None:
    """Paint the patient's body (no head) onto ``img`` in place."""
    u = height * look.scale
    # Legs first (behind the torso), then torso, neck, arms.
    for side in ("left", "right"):
        _limb(img, j[f"{side}_hip"], j[f"{side}_knee"], look.trousers, 0.085 * u)
        _limb(img, j[f"{side}_knee"], j[f"{side}_ankle"], look.trousers, 0.07 * u)
        ax, ay = j[f"{side}_ankle"]
        cv2.ellipse(img, (int(ax), int(ay + 0.01 * u)), (int(0.035 * u), int(0.02 * u)), 0, 0, 360,
                    (45, 40, 40), -1, cv2.LINE_AA)
    ls, rs, lh, rh = j["left_shoulder"], j["right_shoulder"], j["left_hip"], j["right_hip"]
    ext = 0.03 * u
    torso = np.array([
        (rs[0] - ext * 0.3, rs[1] - ext * 0.2), (ls[0] + ext * 0.3, ls[1] - ext * 0.2),
        (lh[0] + ext, lh[1] + ext), (rh[0] - ext, rh[1] + ext),
    ], np.int32)
    cv2.fillConvexPoly(img, torso, _shade(look.gown, 0.8), cv2.LINE_AA)
    inner = np.array([
        (rs[0] + ext * 0.5, rs[1] + ext * 0.4), (ls[0] - ext * 0.5, ls[1] + ext * 0.4),
        (lh[0] - ext * 0.2, lh[1]), (rh[0] + ext * 0.2, rh[1]),
    ], np.int32)
    cv2.fillConvexPoly(img, inner, look.gown, cv2.LINE_AA)
    cv2.line(img, (int(j["neck"][0]), int(j["neck"][1])),
             (int((lh[0] + rh[0]) / 2), int((lh[1] + rh[1]) / 2)), _shade(look.gown, 0.9), 1, cv2.LINE_AA)
    nx, ny = j["neck"]
    cv2.ellipse(img, (int(nx), int(ny)), (int(0.032 * u), int(0.04 * u)), 0, 0, 360, _shade(look.skin, 0.85), -1,
                cv2.LINE_AA)
    for side in ("left", "right"):
        _limb(img, j[f"{side}_shoulder"], j[f"{side}_elbow"], look.gown, 0.068 * u)
        _limb(img, j[f"{side}_elbow"], j[f"{side}_wrist"], look.skin, 0.05 * u)
        ex, ey = j[f"{side}_elbow"]
        wx, wy = j[f"{side}_wrist"]
        d = np.hypot(wx - ex, wy - ey) + 1e-6
        hx, hy = wx + (wx - ex) / d * 0.03 * u, wy + (wy - ey) / d * 0.03 * u
        angle = float(np.degrees(np.arctan2(wy - ey, wx - ex)))
        cv2.ellipse(img, (int(hx), int(hy)), (int(0.042 * u), int(0.027 * u)), angle, 0, 360,
                    _shade(look.skin, 0.95), -1, cv2.LINE_AA)


def draw_staff(img: np.ndarray, head: tuple[float, float], height: int, scrubs: tuple[int, int, int]) -> None:
    """A standing staff member's body below ``head`` (the face is pasted separately)."""
    u = height * 1.05
    hx, hy = head
    sy = hy + 0.12 * u
    body = np.array([
        (hx - 0.1 * u, sy), (hx + 0.1 * u, sy), (hx + 0.09 * u, sy + 0.5 * u), (hx - 0.09 * u, sy + 0.5 * u),
    ], np.int32)
    cv2.fillConvexPoly(img, body, scrubs, cv2.LINE_AA)
    cv2.line(img, (int(hx), int(hy + 0.06 * u)), (int(hx), int(sy)), (200, 160, 140), int(0.05 * u), cv2.LINE_AA)
    for sign in (-1, 1):
        _limb(img, (hx + sign * 0.1 * u, sy + 0.02 * u), (hx + sign * 0.13 * u, sy + 0.3 * u), scrubs, 0.055 * u)
        _limb(img, (hx + sign * 0.09 * u, sy + 0.5 * u), (hx + sign * 0.07 * u, sy + 0.95 * u),
              _shade(scrubs, 0.8), 0.08 * u)
