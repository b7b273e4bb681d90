"""Real face photographs for the phantom cohort, and per-frame face rendering.

Real face detectors must fire on phantom faces, so each head carries a crop
of a real photograph that ships inside an installed package (no download):
``skimage.data.astronaut()`` (Eileen Collins) and matplotlib's sample
``grace_hopper.jpg``.  Identities are derived by variation (mirror, skin
tone, hair colour, cap, glasses); a patient and the staff member in the same
recording always come from different photographs.

``FaceSprite`` is a photo crop resized once per recording to the head size;
``draw_face`` pastes it per frame with eyelids, mouth, face pulling and a
head yaw/roll applied, and returns the face box and facial keypoints in frame
pixels (the truth the ``faces`` and ``joints`` tables record).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

PHOTOS = ("astronaut", "grace_hopper")

# Face box (x0, y0, width) and keypoints measured once on the source photos
# with mediapipe face detection (model_selection=1); source pixel coordinates.
_PHOTO_BOX = {
    "astronaut": (173.7, 67.8, 103.9),
    "grace_hopper": (165.9, 128.4, 200.4),
}
_PHOTO_KEYPOINTS = {  # subject's right eye is on the image left
    "astronaut": {
        "right_eye": (202.8, 103.5), "left_eye": (248.0, 105.9), "nose": (224.0, 132.3),
        "mouth": (222.6, 148.5), "right_ear": (178.6, 107.5), "left_ear": (271.4, 112.3),
    },
    "grace_hopper": {
        "right_eye": (226.8, 192.0), "left_eye": (306.0, 191.4), "nose": (271.1, 235.2),
        "mouth": (271.3, 274.2), "right_ear": (180.7, 214.7), "left_ear": (344.9, 213.9),
    },
}
# Crop around the face box, in face-box widths: includes hair and chin.
CROP_LEFT, CROP_RIGHT = 0.22, 1.22
CROP_TOP, CROP_BOTTOM = 0.42, 1.18
PROFILE_YAW = np.deg2rad(45.0)  # rad; beyond this the view is labelled profile
MIN_SQUEEZE = 0.28  # horizontal scale of the face patch at full profile


@dataclass(frozen=True)
class Identity:
    """A face identity derived from one photo by simple variations."""

    photo: str
    mirror: bool = False
    tone: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGB gain
    hair: tuple[int, int, int] | None = None  # RGB of a hair overlay; None keeps the photo's
    cap: tuple[int, int, int] | None = None  # RGB of a cap/hat over the hair
    glasses: bool = False

    def describe(self) -> str:
        """Short provenance string, e.g. ``skimage:astronaut+mirror+glasses``."""
        src = "skimage:astronaut" if self.photo == "astronaut" else "matplotlib:grace_hopper.jpg"
        parts = [src]
        if self.mirror:
            parts.append("mirror")
        if self.tone != (1.0, 1.0, 1.0):
            parts.append("tone")
        if self.hair is not None:
            parts.append("hair")
        if self.cap is not None:
            parts.append("cap")
        if self.glasses:
            parts.append("glasses")
        return "+".join(parts)


@lru_cache(maxsize=4)
def load_photo(name: str) -> np.ndarray:
    """The full source photograph as RGB uint8 (read-only, cached)."""
    if name == "astronaut":
        from skimage import data

        rgb = data.astronaut()
    elif name == "grace_hopper":
        import matplotlib.cbook as cbook

        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"matplotlib sample photo not readable at {path}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"unknown face photo {name!r}; known: {', '.join(PHOTOS)}")
    rgb = np.ascontiguousarray(rgb[..., :3])
    rgb.setflags(write=False)
    return rgb


@dataclass(frozen=True)
class FaceSprite:
    """A face patch at render size: pixels, soft alpha, box and keypoints in patch pixels."""

    rgb: np.ndarray  # (h, w, 3) uint8
    alpha: np.ndarray  # (h, w) float32 in [0, 1]
    box: tuple[float, float, float, float]  # detector-style face box x0, y0, x1, y1
    keypoints: dict[str, tuple[float, float]]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def make_sprite(identity: Identity, head_height_px: float) -> FaceSprite:
    """Crop, resize and vary the identity's photo so the patch is ``head_height_px`` tall."""
    photo = load_photo(identity.photo)
    bx, by, bw = _PHOTO_BOX[identity.photo]
    x0, x1 = bx - CROP_LEFT * bw, bx + CROP_RIGHT * bw
    y0, y1 = by - CROP_TOP * bw, by + CROP_BOTTOM * bw
    crop = photo[int(y0):int(y1), int(x0):int(x1)]
    scale = head_height_px / crop.shape[0]
    w = max(8, int(round(crop.shape[1] * scale)))
    h = max(8, int(round(crop.shape[0] * scale)))
    sx, sy = w / crop.shape[1], h / crop.shape[0]
    rgb = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    kps = {k: ((x - int(x0)) * sx, (y - int(y0)) * sy) for k, (x, y) in _PHOTO_KEYPOINTS[identity.photo].items()}
    box = ((bx - int(x0)) * sx, (by - int(y0)) * sy, (bx + bw - int(x0)) * sx, (by + bw - int(y0)) * sy)
    if identity.mirror:
        rgb = rgb[:, ::-1]
        kps = {_swap_side(k): (w - 1 - x, y) for k, (x, y) in kps.items()}
        box = (w - box[2], box[1], w - box[0], box[3])
    rgb = np.clip(rgb * np.asarray(identity.tone, np.float32), 0, 255)
    img = np.ascontiguousarray(rgb.astype(np.uint8))
    ied = abs(kps["left_eye"][0] - kps["right_eye"][0])
    cx = (kps["left_eye"][0] + kps["right_eye"][0]) / 2
    eye_y = (kps["left_eye"][1] + kps["right_eye"][1]) / 2
    # Skin colour from the cheeks (between eye and mouth, off the nose).
    cheek_y = int((eye_y + kps["mouth"][1]) / 2)
    cheek = img[cheek_y - 1:cheek_y + 2, int(cx - 0.55 * ied):int(cx - 0.35 * ied)].reshape(-1, 3)
    skin = tuple(int(v) for v in np.median(cheek, axis=0))
    hy = max(1, int(eye_y - 0.9 * ied))
    top = img[hy - 1:hy + 2, int(cx - 0.2 * ied):int(cx + 0.2 * ied)].reshape(-1, 3)
    hair = identity.hair or tuple(int(v) for v in np.median(top, axis=0))
    if identity.hair is not None:
        cv2.ellipse(img, (int(cx), int(eye_y - 0.55 * ied)), (int(1.25 * ied), int(0.75 * ied)), 0, 180, 360,
                    identity.hair, -1, cv2.LINE_AA)
    if identity.cap is not None:
        cv2.ellipse(img, (int(cx), int(eye_y - 0.75 * ied)), (int(1.3 * ied), int(0.8 * ied)), 0, 180, 360,
                    identity.cap, -1, cv2.LINE_AA)
    if identity.glasses:
        r = max(2, int(round(0.3 * ied)))
        t = max(1, int(round(0.06 * ied)))
        for k in ("left_eye", "right_eye"):
            ex, ey = kps[k]
            cv2.circle(img, (int(ex), int(ey)), r, (30, 30, 30), t, cv2.LINE_AA)
        cv2.line(img, (int(kps["right_eye"][0] + r), int(eye_y)), (int(kps["left_eye"][0] - r), int(eye_y)),
                 (30, 30, 30), t, cv2.LINE_AA)
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (int(cx), int(h * 0.5)), (int(w * 0.44), int(h * 0.48)), 0, 0, 360, 1.0, -1)
    k = max(3, int(0.08 * w) | 1)
    alpha = cv2.GaussianBlur(alpha, (k, k), 0)
    img.setflags(write=False)
    alpha.setflags(write=False)
    return FaceSprite(rgb=img, alpha=alpha, box=box, keypoints=kps, skin=skin, hair=hair)


def _swap_side(name: str) -> str:
    if name.startswith("left_"):
        return "right_" + name[5:]
    if name.startswith("right_"):
        return "left_" + name[6:]
    return name


@dataclass(frozen=True)
class FaceState:
    """Per-frame face expression and head rotation (radians; yaw > 0 turns to the patient's left)."""

    yaw: float = 0.0
    roll: float = 0.0
    eyes_open: float = 1.0  # 0 closed .. 1 open
    mouth_open: float = 0.0  # 0 closed .. 1 wide
    pull: float = 0.0  # -1 .. 1: lower face drawn to the patient's right (-) / left (+)


def draw_face(frame: np.ndarray, sprite: FaceSprite, center: tuple[float, float], state: FaceState
              ) -> tuple[tuple[float, float, float, float], str, dict[str, tuple[float, float]]]:
    """Paste the face onto ``frame`` (in place) centred at ``center``.

    Returns (face box x0, y0, x1, y1 in frame pixels, unclipped; view
    ``frontal``/``profile``; keypoints nose, left/right eye, left/right ear,
    mouth_left/right in frame pixels).
    """
    img = _expression(sprite, state)
    h, w = img.shape[:2]
    kps = sprite.keypoints
    squeeze = max(MIN_SQUEEZE, float(np.cos(state.yaw)))
    # Frame x grows to the patient's left (the patient faces the camera).
    shift = float(np.sin(state.yaw)) * 0.22 * w
    c, s = float(np.cos(state.roll)), float(np.sin(state.roll))
    pcx, pcy = w / 2.0, h / 2.0
    # patch -> frame: translate to patch centre, squeeze x, rotate by roll, move to the head centre.
    a = np.array([[c * squeeze, -s, 0.0], [s * squeeze, c, 0.0]], np.float64)
    a[:, 2] = np.array(center) + np.array([shift, 0.0]) - a[:, :2] @ np.array([pcx, pcy])
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64) @ a[:, :2].T + a[:, 2]
    fh, fw = frame.shape[:2]
    rx0, ry0 = max(0, int(np.floor(corners[:, 0].min()))), max(0, int(np.floor(corners[:, 1].min())))
    rx1, ry1 = min(fw, int(np.ceil(corners[:, 0].max())) + 1), min(fh, int(np.ceil(corners[:, 1].max())) + 1)
    if squeeze < 0.95:
        # A turned head shows the back of the skull (hair) behind the squeezed face.
        back = (int(center[0] - 0.3 * shift), int(center[1] - 0.02 * h))
        axes = (int(w * (0.2 + 0.12 * (1 - squeeze))), int(h * 0.44))
        cv2.ellipse(frame, back, axes, float(np.degrees(state.roll)), 0, 360, sprite.hair, -1, cv2.LINE_AA)
    if rx1 > rx0 and ry1 > ry0:
        local = a.copy()
        local[:, 2] -= (rx0, ry0)
        size = (rx1 - rx0, ry1 - ry0)
        patch = cv2.warpAffine(img, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        alpha = cv2.warpAffine(sprite.alpha, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        roi = frame[ry0:ry1, rx0:rx1]
        al = alpha[..., None]
        roi[:] = (patch * al + roi * (1.0 - al)).astype(np.uint8)

    def to_frame(p: tuple[float, float]) -> tuple[float, float]:
        x, y = a[:, :2] @ np.array(p) + a[:, 2]
        return float(x), float(y)

    bx0, by0, bx1, by1 = sprite.box
    bc = np.array([[bx0, by0], [bx1, by0], [bx0, by1], [bx1, by1]]) @ a[:, :2].T + a[:, 2]
    box = (float(bc[:, 0].min()), float(bc[:, 1].min()), float(bc[:, 0].max()), float(bc[:, 1].max()))
    ied = abs(kps["left_eye"][0] - kps["right_eye"][0])
    mx, my = kps["mouth"]
    out = {
        "nose": to_frame(kps["nose"]),
        "left_eye": to_frame(kps["left_eye"]),
        "right_eye": to_frame(kps["right_eye"]),
        "left_ear": to_frame(kps["left_ear"]),
        "right_ear": to_frame(kps["right_ear"]),
        "mouth_left": to_frame((mx + 0.35 * ied, my)),
        "mouth_right": to_frame((mx - 0.35 * ied, my)),
    }
    view = "profile" if abs(state.yaw) > PROFILE_YAW else "frontal"
    return box, view, out


def _expression(sprite: FaceSprite, state: FaceState) -> np.ndarray:
    """The sprite with eyelids, mouth opening and face pulling drawn in (a new array)."""
    img = sprite.rgb
    if state.eyes_open >= 0.99 and state.mouth_open <= 0.01 and abs(state.pull) <= 0.01:
        return img
    img = img.copy()
    kps = sprite.keypoints
    ied = abs(kps["left_eye"][0] - kps["right_eye"][0])
    if state.eyes_open < 0.99:
        closed = 1.0 - state.eyes_open
        rx, ry = max(2, int(0.26 * ied)), max(1, int(round(0.2 * ied * closed)))
        lash = max(1, int(round(0.05 * ied)))
        for k in ("left_eye", "right_eye"):
            ex, ey = kps[k]
            top = int(round(ey - 0.16 * ied))
            cv2.ellipse(img, (int(ex), top), (rx, ry + int(0.1 * ied)), 0, 0, 180, sprite.skin, -1, cv2.LINE_AA)
            if closed > 0.7:
                cv2.ellipse(img, (int(ex), int(ey)), (rx, max(1, int(0.08 * ied))), 0, 0, 180, (60, 40, 35), lash,
                            cv2.LINE_AA)
    if state.mouth_open > 0.01:
        mx, my = kps["mouth"]
        axes = (max(2, int(0.3 * ied)), max(1, int(0.28 * ied * state.mouth_open)))
        cv2.ellipse(img, (int(mx), int(my + 0.05 * ied)), axes, 0, 0, 360, (70, 25, 30), -1, cv2.LINE_AA)
    if abs(state.pull) > 0.01:
        # Shear the lower face sideways: the mouth corner is drawn towards one ear.
        ny = kps["nose"][1]
        shear = -0.35 * state.pull  # patient's left is image right when not mirrored: x grows
        m = np.array([[1.0, shear, -shear * ny], [0.0, 1.0, 0.0]], np.float64)
        warped = cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REPLICATE)
        y0 = int(ny)
        img[y0:] = warped[y0:]
    return img


def patient_identities(n: int, rng: np.random.Generator) -> list[Identity]:
    """``n`` distinct patient identities, alternating photos, varied by mirror/tone/hair/glasses."""
    hairs = [None, (60, 40, 25), (25, 20, 18), (150, 110, 60), (200, 200, 195)]
    tones = [(1.0, 1.0, 1.0), (0.82, 0.72, 0.62), (1.06, 0.98, 0.92), (0.68, 0.56, 0.46), (0.92, 0.86, 0.84)]
    out: list[Identity] = []
    seen: set[Identity] = set()
    for i in range(n):
        for _ in range(50):
            ident = Identity(
                photo=PHOTOS[i % len(PHOTOS)],
                mirror=bool(rng.integers(2)) if i >= len(PHOTOS) else False,
                tone=tones[int(rng.integers(len(tones)))] if i >= len(PHOTOS) else tones[0],
                hair=hairs[int(rng.integers(len(hairs)))] if i >= len(PHOTOS) else None,
                glasses=bool(rng.random() < 0.3),
            )
            if ident not in seen:
                break
        seen.add(ident)
        out.append(ident)
    return out


def staff_identity(patient: Identity, rng: np.random.Generator) -> Identity:
    """A staff identity from a different photo than ``patient``, wearing a scrub cap."""
    other = [p for p in PHOTOS if p != patient.photo][0]
    caps = [(40, 110, 150), (60, 140, 110), (120, 90, 160)]
    return Identity(photo=other, mirror=bool(rng.integers(2)), cap=caps[int(rng.integers(len(caps)))])
