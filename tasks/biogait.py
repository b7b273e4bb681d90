"""BioGait-VLM in one file: a frozen InternVL, Temporal Evidence Distillation, biomechanical fusion, a linear head.

    frames (T) --frozen vision tower + projector--> patch features --mean over patches--> V  (T x d)
    V + temporal positions --TED: M queries, transformer decoder--> mean over queries --> f_temp  (d)
    [E_bio ; V] --frozen LLM--> hidden states at the T visual positions --mean--> f_vlm  (d)
    [f_vlm ; f_temp] --linear--> 8 gait classes        (weighted cross-entropy, w_k = N / (K n_k))

Only the decoder (queries, temporal positions, layers) and the head train.
Everything before them is frozen, so ``VLMEncoder`` computes V and f_vlm once
per clip and the trainable part (``BioGait``) trains on those cached tensors.

Choices where the paper's description is open:

* **Order of the fusion sequence.**  The LLM is causal: visual tokens placed
  *before* the biomechanical text could not attend to it, and their hidden
  states would not depend on E_bio at all.  The sequence is therefore the
  text first, then V (``[E_bio ; V]`` as a set; text-then-vision as a
  sequence), and f_vlm pools the T visual positions, which have read the text.
* **One visual token per frame.**  V (the frame's patch features, mean-pooled)
  enters the LLM as one embedding per frame: T tokens instead of T x 256.
* **Standardisation.**  V and f_vlm are standardised per dimension with the
  *training* split's mean and std (``fit_standardiser``; buffers, not
  trained) before the decoder and the head.  A random-weight smoke model's
  hidden states share a large common component that a linear head would
  otherwise have to learn away.

Config: ``BioGaitConfig`` (``from_params`` builds it from ``params.gait`` and
the VLM's hidden size); the study's config is T=32 frames at the model's 448 px
tile, M=32 queries, 3 decoder layers, 4 heads; tests use a tiny random InternVL
(hidden 64) with a few queries and one layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.errors import ModelNotFoundError
from tasks.params import GaitParams

FFN_MULT = 4  # decoder feed-forward width, in model widths
STD_FLOOR = 1e-6  # standardisation: dimensions with a smaller spread are left unscaled


@dataclass(frozen=True)
class BioGaitConfig:
    """Shape of the trainable part; ``d_model`` is the VLM's hidden size (the width of V and f_vlm)."""

    d_model: int
    n_classes: int = 8
    n_frames: int = 32  # T
    n_queries: int = 32  # M
    n_layers: int = 3
    n_heads: int = 4
    dropout: float = 0.1
    use_ted: bool = True  # False: the "without TED" ablation (head on f_vlm only)

    @classmethod
    def from_params(cls, gp: GaitParams, *, d_model: int, n_classes: int, use_ted: bool = True) -> BioGaitConfig:
        return cls(d_model=d_model, n_classes=n_classes, n_frames=gp.frames, n_queries=gp.queries,
                   n_layers=gp.decoder_layers, n_heads=gp.heads, dropout=gp.dropout, use_ted=use_ted)


class TemporalEvidenceDecoder(nn.Module):
    """M learnable queries read the frame sequence V (+ learnable temporal positions); mean over queries."""

    def __init__(self, cfg: BioGaitConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.queries = nn.Parameter(torch.randn(cfg.n_queries, d) * d ** -0.5)
        self.time_pos = nn.Parameter(torch.zeros(cfg.n_frames, d))
        layer = nn.TransformerDecoderLayer(d, cfg.n_heads, FFN_MULT * d, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.n_layers, norm=nn.LayerNorm(d))

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, d)
        memory = v + self.time_pos[: v.shape[1]]
        q = self.queries.unsqueeze(0).expand(v.shape[0], -1, -1)
        return self.decoder(q, memory).mean(dim=1)


class BioGait(nn.Module):
    """The trainable part: TED (optional) and the linear head on ``[f_vlm ; f_temp]``.

    Inputs are the frozen features: ``v`` (B, T, d) and ``f_vlm`` (B, d);
    output logits (B, n_classes).  Standardisation buffers come from
    ``fit_standardiser`` (training split only).
    """

    def __init__(self, cfg: BioGaitConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.ted = TemporalEvidenceDecoder(cfg) if cfg.use_ted else None
        self.head = nn.Linear(d * (2 if cfg.use_ted else 1), cfg.n_classes)
        for name in ("v_mean", "f_mean"):
            self.register_buffer(name, torch.zeros(d))
        for name in ("v_std", "f_std"):
            self.register_buffer(name, torch.ones(d))

    def fit_standardiser(self, v: torch.Tensor, f_vlm: torch.Tensor) -> None:
        """Per-dimension mean/std of the TRAINING clips' V (all frames) and f_vlm."""
        flat = v.reshape(-1, v.shape[-1])
        self.v_mean.copy_(flat.mean(0))
        self.v_std.copy_(flat.std(0).clamp(min=STD_FLOOR))
        self.f_mean.copy_(f_vlm.mean(0))
        self.f_std.copy_(f_vlm.std(0).clamp(min=STD_FLOOR) if len(f_vlm) > 1 else torch.ones_like(self.f_std))

    def forward(self, v: torch.Tensor, f_vlm: torch.Tensor) -> torch.Tensor:
        f = (f_vlm - self.f_mean) / self.f_std
        if self.ted is None:
            return self.head(f)
        f_temp = self.ted((v - self.v_mean) / self.v_std)
        return self.head(torch.cat([f, f_temp], dim=-1))


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """w_k = N / (K n_k) over the training labels; a class absent from training gets weight 0."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


@dataclass(frozen=True)
class Fit:
    """What ``train`` returns: the trained model and the mean loss of each epoch."""

    model: BioGait
    losses: list[float]


def train(cfg: BioGaitConfig, v: torch.Tensor, f_vlm: torch.Tensor, y: np.ndarray, *, gp: GaitParams,
          seed: int, device: torch.device) -> Fit:
    """Train BioGait on cached features (AdamW, weighted cross-entropy, ``gp.epochs`` shuffled epochs)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = BioGait(cfg)
    model.fit_standardiser(v, f_vlm)
    model.to(device).train()
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y, cfg.n_classes).to(device))
    opt = torch.optim.AdamW(model.parameters(), lr=gp.lr, weight_decay=gp.weight_decay)
    target = torch.from_numpy(y).long()
    losses = []
    for _ in range(gp.epochs):
        order = rng.permutation(len(y))
        total = 0.0
        for start in range(0, len(order), gp.batch_size):
            rows = torch.from_numpy(order[start:start + gp.batch_size])
            logits = model(v[rows].to(device), f_vlm[rows].to(device))
            loss = loss_fn(logits, target[rows].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
        losses.append(total / max(len(y), 1))
    return Fit(model.eval(), losses)


@torch.no_grad()
def predict(model: BioGait, v: torch.Tensor, f_vlm: torch.Tensor, *, device: torch.device) -> np.ndarray:
    """Class probabilities (N, n_classes)."""
    model.to(device).eval()
    return torch.softmax(model(v.to(device), f_vlm.to(device)), dim=-1).float().cpu().numpy()


# ---- the frozen VLM -------------------------------------------------------------------------


class VLMEncoder:
    """The frozen InternVL half of BioGait: V per clip and f_vlm for a given text.

    ``local`` is a ``tasks.local_models.LocalModel`` of model_type ``internvl``.
    """

    def __init__(self, local: Any) -> None:
        if local.arch != "internvl":
            raise ModelNotFoundError(f"BioGait needs an InternVL folder (model_type internvl), got {local.arch} "
                                     f"({local.model_id}); set gait.vlm to one")
        self.local = local
        self.model = local.model
        self.tokenizer = local.processor.tokenizer
        self.d_model = int(self.model.config.text_config.hidden_size)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def frame_features(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (T, H, W, 3) -> V (T, d): one tile per frame through the vision tower and
        projector, mean over the frame's patch tokens."""
        vp = self.local.processor.video_processor
        batch = vp(videos=[frames], do_sample_frames=False, return_tensors="pt")
        pixels = batch["pixel_values_videos"][0].to(self.model.device, self.model.dtype)  # (T, 3, S, S)
        feats = self.model.model.get_image_features(pixel_values=pixels).pooler_output  # (T, tokens, d)
        return feats.mean(dim=1).float().cpu()

    @torch.no_grad()
    def fuse(self, v: torch.Tensor, text: str) -> torch.Tensor:
        """f_vlm (d): the frozen LLM over [text tokens ; V], hidden states at the visual positions, mean."""
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.model.device)
        emb = self.model.get_input_embeddings()(ids)
        seq = torch.cat([emb, v.unsqueeze(0).to(emb.device, emb.dtype)], dim=1)
        hidden = self.model.model.language_model(inputs_embeds=seq).last_hidden_state
        return hidden[0, ids.shape[1]:].mean(dim=0).float().cpu()

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
