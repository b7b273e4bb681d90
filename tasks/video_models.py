"""The two video baselines in one file: R(2+1)D-18 (torchvision) and ViViT (transformers).

Each family has a config dataclass and a builder (``r2plus1d(cfg)``,
``vivit(cfg)``) returning a ``VideoClassifier``: uint8 clips
``(batch, frames, height, width, 3)`` in, logits ``(batch, n_outputs)`` out.
The classifier normalises pixels the way its pretrained weights expect, so
callers never see model-specific preprocessing.

Sizes: ``"full"`` is the published architecture (R(2+1)D-18: 16 x 112 x 112
Kinetics clips; ViViT-B 16x2: 32 x 224 x 224), ``"tiny"`` a small network of
the same design for CPU tests.  Pretrained weights come only from local files:

* R(2+1)D: a torchvision state-dict file (``torch.save(r2plus1d_18(weights=
  "KINETICS400_V1").state_dict(), path)`` on a machine with internet).  Keys
  and shapes match torchvision's ``r2plus1d_18``; the Kinetics head (``fc``)
  is replaced by a fresh one with ``n_outputs`` units.
* ViViT: a Hugging Face folder saved with ``save_pretrained`` (e.g.
  ``google/vivit-b-16x2-kinetics400``), loaded with ``local_files_only``.
  Its position embeddings fix the clip shape, so the folder's
  ``num_frames``/``image_size`` must equal the config's.

A given path that does not exist is a ``ModelNotFoundError`` that says how to
supply one; no path means random initialisation and a ``RandomInitWarning``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D

from tasks.errors import ConfigError, ModelNotFoundError, SemioflowError
from tasks.params import BaselineParams

Size = Literal["tiny", "full"]

# Kinetics-400 normalisation of torchvision's video models (pixels in [0, 1]).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
# torchvision's R(2+1)D stem has 45 mid channels for 64 output channels (a hard-coded ratio, not the paper's formula).
STEM_MID_PER_OUT = 45 / 64
# VivitImageProcessor defaults: pixels * 1/127.5 - 1 ("offset"), then (x - 0.5) / 0.5.
VIVIT_RESCALE = 1 / 127.5
VIVIT_MEAN = (0.5, 0.5, 0.5)
VIVIT_STD = (0.5, 0.5, 0.5)
PIXEL_MAX = 255.0

R2PLUS1D_HOW_TO = ("save torchvision's Kinetics weights with torch.save(torchvision.models.video.r2plus1d_18("
                   "weights='KINETICS400_V1').state_dict(), 'r2plus1d_18.pt') on a machine with internet, copy the "
                   "file here and set train.r2plus1d.pretrained to its path (empty = random initialisation)")
VIVIT_HOW_TO = ("save a ViViT checkpoint with VivitForVideoClassification.from_pretrained("
                "'google/vivit-b-16x2-kinetics400').save_pretrained(FOLDER) (plus its image processor) on a machine "
                "with internet, copy FOLDER here and set train.vivit.pretrained to it (empty = random initialisation)")


class RandomInitWarning(UserWarning):
    """A baseline starts from random weights because no pretrained file was given."""


# ---- the shared wrapper --------------------------------------------------------


class VideoClassifier(nn.Module):
    """uint8 clips ``(B, T, H, W, 3)`` -> logits ``(B, n_outputs)``, normalisation included.

    ``pixels -> (pixels * scale + shift - mean) / std`` per channel, then the
    network; ``channels_first`` picks the layout the network wants
    (``(B, C, T, H, W)`` for 3D CNNs, ``(B, T, C, H, W)`` for ViViT).
    """

    def __init__(self, net: nn.Module, *, frames: int, image_size: int, n_outputs: int, scale: float,
                 shift: float, mean: tuple[float, ...], std: tuple[float, ...], channels_first: bool,
                 model_id: str) -> None:
        super().__init__()
        self.net = net
        self.frames, self.image_size, self.n_outputs = frames, image_size, n_outputs
        self.scale, self.shift, self.channels_first = scale, shift, channels_first
        self.model_id = model_id
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, 1, 1, 3), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 1, 1, 1, 3), persistent=False)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = (clips.float() * self.scale + self.shift - self.mean) / self.std  # (B, T, H, W, C)
        x = x.permute(0, 4, 1, 2, 3) if self.channels_first else x.permute(0, 1, 4, 2, 3)
        out = self.net(x.contiguous())
        return out.logits if hasattr(out, "logits") else out


# ---- R(2+1)D ---------------------------------------------------------------------


@dataclass(frozen=True)
class R2Plus1DConfig:
    """R(2+1)D: a video ResNet whose 3D convolutions are split into 2D spatial + 1D temporal.

    ``layers``/``widths`` are the blocks and channels of the four stages;
    the defaults are R(2+1)D-18 exactly (torchvision ``r2plus1d_18``).
    """

    layers: tuple[int, int, int, int] = (2, 2, 2, 2)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    frames: int = 16
    image_size: int = 112
    n_outputs: int = 1
    dropout: float = 0.0
    pretrained: str = ""  # torchvision state-dict file; "" = random initialisation

    @classmethod
    def preset(cls, size: Size, **overrides) -> R2Plus1DConfig:
        """``full`` = R(2+1)D-18; ``tiny`` = one block per stage, 1/8 of the channels."""
        base = {"full": cls(), "tiny": cls(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), frames=8, image_size=32)}
        if size not in base:
            raise ConfigError(f"unknown R(2+1)D size {size!r} (tiny | full)")
        return replace(base[size], **overrides)


class R2Plus1D(nn.Module):
    """R(2+1)D video ResNet; attribute names follow torchvision so its state dicts load as is."""

    def __init__(self, cfg: R2Plus1DConfig) -> None:
        super().__init__()
        w0 = cfg.widths[0]
        mid = max(1, round(w0 * STEM_MID_PER_OUT))
        self.stem = nn.Sequential(
            nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, w0, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(w0),
            nn.ReLU(inplace=True),
        )
        inplanes = w0
        for i, (n_blocks, width) in enumerate(zip(cfg.layers, cfg.widths)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1  # stages 2-4 halve time and space
                down = None
                if stride != 1 or inplanes != width:
                    down = nn.Sequential(nn.Conv3d(inplanes, width, kernel_size=1, stride=stride, bias=False),
                                         nn.BatchNorm3d(width))
                blocks.append(BasicBlock(inplanes, width, Conv2Plus1D, stride, down))
                inplanes = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(inplanes, cfg.n_outputs)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


def _load_r2plus1d_weights(net: R2Plus1D, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ModelNotFoundError(f"R(2+1)D weights {path} are not a state dict. {R2PLUS1D_HOW_TO}")
    own = net.state_dict()
    # The classification head is task-specific: a Kinetics fc (400 units) never fits n_outputs.
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    bad = sorted(k for k, v in body.items() if k not in own or own[k].shape != v.shape)
    missing = sorted(k for k in own if not k.startswith("fc.") and k not in body)
    if bad or missing:
        raise SemioflowError(f"R(2+1)D weights {path} do not fit the configured network ({len(bad)} unexpected or "
                             f"mis-shaped, {len(missing)} missing tensors, e.g. {(bad + missing)[0]}); "
                             "torchvision's r2plus1d_18 weights need train.r2plus1d.size: full")
    net.load_state_dict(body, strict=False)


def r2plus1d(cfg: R2Plus1DConfig) -> VideoClassifier:
    """Build R(2+1)D from ``cfg``; pretrained weights from ``cfg.pretrained`` when given."""
    net = R2Plus1D(cfg)
    if cfg.pretrained:
        path = Path(cfg.pretrained)
        if not path.is_file():
            raise ModelNotFoundError(f"R(2+1)D weights file {path} not found; {R2PLUS1D_HOW_TO}")
        _load_r2plus1d_weights(net, path)
        origin = "pretrained"
    else:
        warnings.warn("R(2+1)D: no pretrained weights given (train.r2plus1d.pretrained), random initialisation; "
                      + R2PLUS1D_HOW_TO, RandomInitWarning, stacklevel=2)
        origin = "scratch"
    size = _size_name(cfg, R2Plus1DConfig, ("layers", "widths"))
    return VideoClassifier(net, frames=cfg.frames, image_size=cfg.image_size, n_outputs=cfg.n_outputs,
                           scale=1 / PIXEL_MAX, shift=0.0, mean=KINETICS_MEAN, std=KINETICS_STD,
                           channels_first=True, model_id=f"r2plus1d_18-{size}-{origin}")


# ---- ViViT -----------------------------------------------------------------------


@dataclass(frozen=True)
class VivitCfg:
    """ViViT model 1 (joint spatio-temporal attention over tubelet tokens), transformers' ``VivitModel``.

    Defaults are ViViT-B 16x2 (google/vivit-b-16x2-kinetics400): 32 frames of
    224 x 224 cut into 2 x 16 x 16 tubelets, 12 layers of width 768.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    tubelet: tuple[int, int, int] = (2, 16, 16)  # frames, height, width of one token
    frames: int = 32
    image_size: int = 224
    n_outputs: int = 1
    dropout: float = 0.0
    pretrained: str = ""  # Hugging Face folder; "" = random initialisation

    @classmethod
    def preset(cls, size: Size, **overrides) -> VivitCfg:
        """``full`` = ViViT-B 16x2; ``tiny`` = 2 layers of width 32 on 8 x 32 x 32 clips."""
        base = {"full": cls(), "tiny": cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, tubelet=(2, 8, 8), frames=8, image_size=32)}
        if size not in base:
            raise ConfigError(f"unknown ViViT size {size!r} (tiny | full)")
        return replace(base[size], **overrides)

    def __post_init__(self) -> None:
        t, h, w = self.tubelet
        if self.frames % t or self.image_size % h or self.image_size % w:
            raise ConfigError(f"ViViT: {self.frames} frames x {self.image_size} px do not tile into "
                              f"{t}x{h}x{w} tubelets")


def _vivit_preprocessing(folder: Path | None) -> tuple[float, float, tuple[float, ...], tuple[float, ...]]:
    """(scale, shift, mean, std) from the folder's image processor config, else the ViViT defaults."""
    scale, shift, mean, std = VIVIT_RESCALE, -1.0, VIVIT_MEAN, VIVIT_STD
    cfg_file = folder / "preprocessor_config.json" if folder is not None else None
    if cfg_file is not None and cfg_file.is_file():
        pre = json.loads(cfg_file.read_text(encoding="utf-8"))
        if pre.get("do_rescale", True):
            scale = float(pre.get("rescale_factor", VIVIT_RESCALE))
            shift = -1.0 if pre.get("offset", True) else 0.0
        else:
            scale, shift = 1.0, 0.0
        if pre.get("do_normalize", True):
            mean = tuple(pre.get("image_mean", VIVIT_MEAN))
            std = tuple(pre.get("image_std", VIVIT_STD))
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return scale, shift, mean, std


def vivit(cfg: VivitCfg) -> VideoClassifier:
    """Build ViViT from ``cfg``; a pretrained Hugging Face folder from ``cfg.pretrained`` when given."""
    from transformers import VivitConfig, VivitForVideoClassification

    if cfg.pretrained:
        folder = Path(cfg.pretrained)
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"ViViT folder {folder} not found or has no config.json; {VIVIT_HOW_TO}")
        hf_cfg = VivitConfig.from_pretrained(folder, local_files_only=True)
        if (hf_cfg.num_frames, hf_cfg.image_size) != (cfg.frames, cfg.image_size):
            raise ConfigError(f"the pretrained ViViT expects {hf_cfg.num_frames} frames of {hf_cfg.image_size} px "
                              f"(its position embeddings fix the clip shape); set train.vivit.frames: "
                              f"{hf_cfg.num_frames} and train.vivit.image_size: {hf_cfg.image_size}")
        # A Kinetics head (400 labels) is replaced by a fresh one; transformers logs the mismatch.
        labels = {i: f"output_{i}" for i in range(cfg.n_outputs)}
        net = VivitForVideoClassification.from_pretrained(folder, local_files_only=True, num_labels=cfg.n_outputs,
                                                          id2label=labels, label2id={v: k for k, v in labels.items()},
                                                          ignore_mismatched_sizes=True)
        scale, shift, mean, std = _vivit_preprocessing(folder)
        origin = "pretrained"
    else:
        warnings.warn("ViViT: no pretrained folder given (train.vivit.pretrained), random initialisation; "
                      + VIVIT_HOW_TO, RandomInitWarning, stacklevel=2)
        hf_cfg = VivitConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                             num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
                             tubelet_size=list(cfg.tubelet), num_frames=cfg.frames, image_size=cfg.image_size,
                             hidden_dropout_prob=cfg.dropout, num_labels=cfg.n_outputs)
        net = VivitForVideoClassification(hf_cfg)
        scale, shift, mean, std = _vivit_preprocessing(None)
        origin = "scratch"
    size = "full" if cfg.pretrained else _size_name(cfg, VivitCfg, ("hidden_size", "num_hidden_layers",
                                                                    "num_attention_heads", "intermediate_size"))
    return VideoClassifier(net, frames=cfg.frames, image_size=cfg.image_size, n_outputs=cfg.n_outputs, scale=scale,
                           shift=shift, mean=mean, std=std, channels_first=False,
                           model_id=f"vivit_b16x2-{size}-{origin}")


def _size_name(cfg, cls, arch_fields: tuple[str, ...]) -> str:
    """``full`` / ``tiny`` when the architecture equals that preset, else ``custom`` (for model ids)."""
    for size in ("full", "tiny"):
        ref = cls.preset(size)
        if all(getattr(cfg, f) == getattr(ref, f) for f in arch_fields):
            return size
    return "custom"


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(arm: str, bp: BaselineParams, n_outputs: int) -> VideoClassifier:
    """The arm's model for ``n_outputs`` labels (``RandomInitWarning`` without pretrained weights)."""
    if arm == "r2plus1d":
        cfg = R2Plus1DConfig.preset(bp.size, frames=bp.frames, image_size=bp.image_size, n_outputs=n_outputs,
                                    pretrained=bp.pretrained)
        return r2plus1d(cfg)
    if arm == "vivit":
        cfg = VivitCfg.preset(bp.size, frames=bp.frames, image_size=bp.image_size, n_outputs=n_outputs,
                              pretrained=bp.pretrained)
        return vivit(cfg)
    raise ConfigError(f"unknown baseline arm {arm!r} (r2plus1d | vivit)")
