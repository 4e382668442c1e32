"""Aesthetic scores: the LAION-style CLIP + MLP predictor (only from local weights), or a labelled proxy.

``aes`` (Open-Sora's column): CLIP ViT-L/14 image embedding, L2-normalised, through an MLP
768-1024-128-64-16-1 (linear layers with dropout between the first four and no non-linearity, as in the LAION
"improved aesthetic predictor" that Open-Sora loads as ``pretrained_models/aesthetic.pth``); the clip score is
the mean over frames at 10 %, 50 % and 90 % of the clip. :class:`ClipAestheticScorer` loads CLIP with
``transformers.CLIPModel.from_pretrained(local_path, local_files_only=True)`` and the MLP state dict from a local
file; nothing is ever downloaded. Without both paths there is no ``aes`` column.

``aes_proxy`` (ours, *not* the LAION score): a transparent image-quality proxy on a 0-10 scale, the mean over
the same three frames of ``10 * (sharpness + contrast + colourfulness) / 3`` with each term squashed to [0, 1)
by ``x / (x + k)``:

- sharpness: variance of the Laplacian of the grey frame, ``k = 100``;
- contrast: standard deviation of the grey levels, ``k = 40``;
- colourfulness: Hasler and Suesstrunk's metric, ``sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 +
  mean(yb)^2)`` with ``rg = R - G``, ``yb = (R + G) / 2 - B``, ``k = 40``.

The half-way points ``k`` are where a term gives half its weight; they were picked so that ordinary photos land
in the middle of the range. It measures crisp, contrasty, colourful frames, nothing about composition or taste.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

FRAME_POINTS = (0.1, 0.5, 0.9)  # where in the clip the scored frames are taken


def frame_points(num_frames: int, points=FRAME_POINTS) -> list[int]:
    """Frame indices at the given fractions of a clip (one index for a single frame)."""
    return sorted({min(num_frames - 1, max(0, int(round(p * (num_frames - 1))))) for p in points})


class AestheticMLP(nn.Module):
    """The LAION aesthetic head: 768-1024-128-64-16-1, dropout 0.2/0.2/0.1, no activations.

    ``layers`` indices match the published state dict (``layers.0``, ``layers.2``, ``layers.4``, ``layers.6``,
    ``layers.7``)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)


def load_mlp(path: str | os.PathLike, input_size: int = 768) -> AestheticMLP:
    """The MLP from a local ``.pth`` / ``.pt`` / ``.safetensors`` state dict (a ``state_dict`` wrapper and a
    ``mlp.`` prefix are accepted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic MLP weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("mlp."): v for k, v in state.items() if not k.startswith("clip.")}
    mlp = AestheticMLP(input_size)
    mlp.load_state_dict(state)
    return mlp.eval()


class ClipAestheticScorer:
    """CLIP image embedding -> L2 normalise -> :class:`AestheticMLP`, from local paths only."""

    def __init__(self, clip_path: str | os.PathLike, mlp_path: str | os.PathLike, device: str = "cpu"):
        from transformers import CLIPModel

        clip_path = Path(clip_path)
        if not clip_path.is_dir():
            raise FileNotFoundError(f"CLIP model folder not found: {clip_path}")
        self.device = torch.device(device)
        self.clip = CLIPModel.from_pretrained(str(clip_path), local_files_only=True).eval().to(self.device)
        self.processor = _load_image_processor(clip_path)
        dim = self.clip.config.projection_dim
        self.mlp = load_mlp(mlp_path, input_size=dim).to(self.device)

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """L2-normalised CLIP image embeddings of uint8 ``[N, H, W, 3]`` images."""
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        out = self.clip.get_image_features(pixel_values=pixels)
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        return torch.nn.functional.normalize(features.float(), p=2, dim=-1)

    @torch.no_grad()
    def score_frames(self, images: np.ndarray) -> float:
        return float(self.mlp(self.embed(images)).mean())


def _load_image_processor(path: Path):
    try:  # transformers 5 without torchvision: the PIL processor, imported directly to avoid its warning
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as Processor
    return Processor.from_pretrained(str(path), local_files_only=True)


def quality_terms(image: np.ndarray) -> dict:
    """Raw sharpness, contrast and colourfulness of one uint8 RGB image (see the module docstring)."""
    rgb = image.astype(np.float64)
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float64)
    sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    contrast = float(gray.std())
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    return {"sharpness": sharpness, "contrast": contrast, "colourfulness": colourfulness}


PROXY_HALF_POINTS = {"sharpness": 100.0, "contrast": 40.0, "colourfulness": 40.0}


def aes_proxy_image(image: np.ndarray) -> float:
    terms = quality_terms(image)
    squashed = [terms[k] / (terms[k] + half) for k, half in PROXY_HALF_POINTS.items()]
    return 10.0 * float(np.mean(squashed))


def aes_proxy(frames: np.ndarray) -> float:
    """The 0-10 image-quality proxy of a clip's frames (already picked, e.g. at :data:`FRAME_POINTS`)."""
    return float(np.mean([aes_proxy_image(f) for f in frames]))
