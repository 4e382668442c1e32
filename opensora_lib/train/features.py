"""Inputs of the diffusion model for one micro-batch: VAE latents, caption states, size/fps conditioning.

`FeatureProvider.batch` loads the micro-batch's samples from a `VideoTextDataset`, encodes the pixels with the VAE
and the captions with the text encoder, and stacks them. Both encodings are deterministic functions of their inputs:

- a latent is drawn from the VAE posterior (Open-Sora samples it) with a generator seeded from the sample's key
  (file contents, frame indices, size, VAE weights), one sample at a time;
- a caption is encoded alone (padding to the model length), and only its valid tokens are kept.

So they can be memoised: with ``cache_dir`` every feature is also written there (one small ``.pt`` file per key,
temp file + rename) and read back by later runs - the optional pre-extracted features of Open-Sora's
``stage1_feat`` path, here as a transparent cache whose use never changes a number. ``read_only=True`` reads an
existing cache without writing to it; ``read_dirs`` are further caches only read (e.g. the caches of earlier stages,
DVC outputs of those stages).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..data.buckets import BucketTable, MicroBatch
from ..data.video_dataset import SampleError, VideoTextDataset, mirror
from ..utils.checkpoint import atomic_torch_save


def module_fingerprint(module: torch.nn.Module, extra: str = "") -> str:
    """sha1 over a module's class, config (when it has one) and every state-dict tensor."""
    h = hashlib.sha1()
    h.update(type(module).__name__.encode())
    h.update(extra.encode())
    config = getattr(module, "config", None)
    if isinstance(config, dict):
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def text_encoder_fingerprint(text_encoder) -> str:
    return module_fingerprint(text_encoder.model, extra=f"{type(text_encoder).__name__}/{text_encoder.model_max_length}")


class FeatureProvider:
    """Latents + caption states for micro-batches (see module doc).

    vae: a `VideoAutoencoder` (eval mode is set); text_encoder: an object with ``encode(texts)`` ->
    ``{"y": [B, 1, L, C], "mask": [B, L]}`` and ``model_max_length`` / ``output_dim``.
    """

    def __init__(
        self,
        dataset: VideoTextDataset,
        vae,
        text_encoder,
        cache_dir: str | os.PathLike | None = None,
        read_only: bool = False,
        read_dirs: list | tuple = (),
        device: str | torch.device = "cpu",
        vae_id: str | None = None,
        text_id: str | None = None,
    ):
        self.dataset = dataset
        self.vae = vae.eval() if vae is not None else None
        self.text_encoder = text_encoder
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.read_only = read_only
        self.read_dirs = [Path(d) for d in read_dirs if d]
        self.device = torch.device(device)
        self.vae_id = vae_id or (module_fingerprint(vae) if vae is not None else "none")
        self.text_id = text_id or text_encoder_fingerprint(text_encoder)
        self._latents: dict[str, torch.Tensor] = {}
        self._texts: dict[str, torch.Tensor] = {}
        self.stats = {"latent_hits": 0, "latent_misses": 0, "text_hits": 0, "text_misses": 0}

    # -- cache --------------------------------------------------------------------------------
    def _path(self, kind: str, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / kind / key[:2] / f"{key}.pt"

    def _lookup(self, kind: str, memo: dict, key: str) -> torch.Tensor | None:
        if key in memo:
            return memo[key]
        candidates = [self._path(kind, key)] + [d / kind / key[:2] / f"{key}.pt" for d in self.read_dirs]
        for path in candidates:
            if path is not None and path.exists():
                value = torch.load(path, map_location="cpu", weights_only=True)
                memo[key] = value
                return value
        return None

    def _store(self, kind: str, memo: dict, key: str, value: torch.Tensor) -> None:
        memo[key] = value
        path = self._path(kind, key)
        if path is not None and not self.read_only:
            atomic_torch_save(value, path)

    # -- features -----------------------------------------------------------------------------
    def latent_key(self, row_id: int, size: tuple[int, int, int], epoch: int) -> str:
        T, H, W = size
        indices = self.dataset.frame_indices(row_id, T, epoch).tolist()
        ident = ["latent/1", self.dataset.file_hash(row_id), indices, H, W, self.vae_id]
        return hashlib.sha1(json.dumps(ident).encode()).hexdigest()

    @torch.no_grad()
    def latent(self, row_id: int, size: tuple[int, int, int], epoch: int) -> torch.Tensor | None:
        """z [C, T', H/8, W/8] of one sample; None when the row is skipped by the dataset's error policy."""
        try:
            key = self.latent_key(row_id, size, epoch)
        except OSError as err:  # file vanished after validation
            self.dataset._bad(row_id, err, "load")
            return None
        z = self._lookup("latents", self._latents, key)
        if z is not None:
            self.stats["latent_hits"] += 1
            return z
        self.stats["latent_misses"] += 1
        video = self.dataset.load_video(row_id, size, epoch)
        if video is None:
            return None
        if self.vae is None:
            raise RuntimeError(f"latent {key} is not in the feature cache and no VAE was given")
        g = torch.Generator(device=self.device)
        g.manual_seed(int(key[:15], 16))
        x = video[None].to(self.device, next(self.vae.parameters()).dtype)  # [1, 3, T, H, W]
        z = self.vae.encode(x, generator=g)[0].float().cpu()  # [C, T', h, w]
        self._store("latents", self._latents, key, z)
        return z

    @torch.no_grad()
    def text_states(self, caption: str) -> torch.Tensor:
        """Valid-token states [n, C] of one caption (encoded alone)."""
        key = hashlib.sha1(f"text/1\0{self.text_id}\0{caption}".encode()).hexdigest()
        y = self._lookup("text", self._texts, key)
        if y is not None:
            self.stats["text_hits"] += 1
            return y
        self.stats["text_misses"] += 1
        enc = self.text_encoder.encode([caption])
        n = int(enc["mask"][0].sum())
        y = enc["y"][0, 0, :n].float().cpu().clone()  # [n, C]
        self._store("text", self._texts, key, y)
        return y

    def batch(self, mb: MicroBatch, table: BucketTable, epoch: int) -> dict:
        """Model inputs of one micro-batch:
        {"x": [B, C, T', h, w], "y": [B, 1, L, C], "mask": [B, L] long, "height", "width", "num_frames", "fps",
        "ar": [B] float, "rows": [B], "texts": [B]}. Skipped rows are left out; an all-skipped batch raises."""
        T, H, W = table.size(mb.bucket)
        zs, texts, rows, fps = [], [], [], []
        for row_id in mb.rows:
            z = self.latent(row_id, (T, H, W), epoch)
            if z is None:
                continue
            zs.append(mirror(z, *self.dataset.flips(row_id, epoch)))  # [C, T', h, w]; cached unmirrored
            rows.append(row_id)
            texts.append(self.dataset.caption(row_id, epoch))
            fps.append(self.dataset.fps(row_id))
        if not zs:
            raise SampleError(mb.rows[0], self.dataset.rows[mb.rows[0]]["path"],
                              f"every sample of micro-batch {mb.index} (bucket {mb.bucket}) was skipped",
                              self.dataset.csv_path)
        L = self.text_encoder.model_max_length
        C = self.text_encoder.output_dim
        y = torch.zeros(len(zs), 1, L, C)
        mask = torch.zeros(len(zs), L, dtype=torch.long)
        for i, text in enumerate(texts):
            states = self.text_states(text)[:L]
            y[i, 0, : len(states)] = states
            mask[i, : len(states)] = 1
        B = len(zs)
        return {
            "x": torch.stack(zs),
            "y": y,
            "mask": mask,
            "height": torch.full((B,), float(H)),
            "width": torch.full((B,), float(W)),
            "num_frames": torch.full((B,), float(T)),
            "fps": torch.tensor(fps, dtype=torch.float32),
            "ar": torch.full((B,), H / W),
            "rows": rows,
            "texts": texts,
        }
