"""Text encoders (MiniLM bundled, T5 from a local directory) and caption score suffixes."""

import os
import random

import pytest
import torch

from opensora_lib.models.stdit3 import STDiT3_Tiny_2
from opensora_lib.models.text_encoder import (
    MiniLMEncoder,
    T5Encoder,
    append_score_to_prompts,
    merge_cmotion,
    minilm_path,
    score_to_text,
)


@pytest.fixture(scope="module")
def minilm():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield MiniLMEncoder(model_max_length=16)
    torch.set_num_threads(n)


def test_minilm_shapes_mask_and_offline(minilm):
    texts = ["a cat", "a red car drives along a coastal road at sunset, aerial view"]
    out = minilm.encode(texts)
    y, mask = out["y"], out["mask"]
    assert y.shape == (2, 1, 16, 384) and mask.shape == (2, 16)
    assert minilm.output_dim == 384 and minilm.model_max_length == 16
    assert mask[0].tolist() == [1, 1, 1, 1] + [0] * 12  # [CLS] a cat [SEP]
    assert mask[1].sum() > 10
    assert torch.isfinite(y).all()
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    # deterministic, and the valid tokens do not depend on the padding length
    assert torch.equal(minilm.encode(texts)["y"], y)
    longer = MiniLMEncoder(model_max_length=24).encode(texts[:1])["y"]
    torch.testing.assert_close(longer[0, 0, :4], y[0, 0, :4], atol=1e-5, rtol=1e-5)


def test_null_caption_comes_from_the_model(minilm):
    with pytest.raises(RuntimeError, match="attach"):
        _detached(minilm).null(2)
    model = STDiT3_Tiny_2(model_max_length=16)
    minilm.attach(model)
    null = minilm.null(3)
    assert null.shape == (3, 1, 16, 384)
    assert torch.equal(null[2, 0], model.y_embedder.y_embedding)


def _detached(enc):
    clone = object.__new__(type(enc))
    clone.__dict__.update(enc.__dict__, y_embedder=None)
    return clone


def test_missing_model_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_t5_here"):
        T5Encoder(tmp_path / "no_t5_here")
    with pytest.raises(FileNotFoundError, match="no_minilm_here"):
        MiniLMEncoder(model_path=tmp_path / "no_minilm_here")


def test_t5_encoder_from_local_directory(tmp_path):
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    # a tiny random T5 (weights are not the point here) with a locally available tokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    T5EncoderModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    enc = T5Encoder(tmp_path, model_max_length=12)
    out = enc.encode(["a dog", "two dogs play in the snow"])
    assert out["y"].shape == (2, 1, 12, 32) and out["mask"].shape == (2, 12)
    assert enc.output_dim == 32
    assert out["mask"][0].sum() == 4
    bf16 = T5Encoder(tmp_path, model_max_length=12, dtype=torch.bfloat16).encode(["a dog"])
    assert bf16["y"].dtype == torch.bfloat16
    torch.testing.assert_close(bf16["y"].float(), out["y"][:1], atol=0.1, rtol=0.05)


def test_training_style_score_suffix():
    assert score_to_text("a cat.", aes=5.53, flow=10.0, drop_prob=0.0) == "a cat. [aesthetic score: 5.5, motion score: 10.0]"
    assert score_to_text("a cat.", aes=5.53, flow=10.0, drop_prob=1.0) == "a cat."
    assert score_to_text("a cat.", aes=None, flow=3.21, drop_prob=0.0) == "a cat. [motion score: 3.2]"
    assert score_to_text("a cat.", aes=float("nan"), drop_prob=0.0) == "a cat."
    rng = random.Random(0)
    kept = [score_to_text("x", aes=5.0, rng=rng) != "x" for _ in range(2000)]
    assert 0.76 < sum(kept) / len(kept) < 0.84  # each score dropped with probability 0.2
    assert merge_cmotion("a cat.", "pan_left") == "a cat. Camera motion: pan left."
    assert merge_cmotion("a cat.", "unknown") == "a cat."


def test_inference_style_score_suffix():
    out = append_score_to_prompts(["a cat", "a dog aesthetic score: 4.0."], aes=6.5, flow=5, camera_motion="zoom in")
    assert out[0] == "a cat aesthetic score: 6.5. motion score: 5.0. camera motion: zoom in."
    assert out[1] == "a dog aesthetic score: 4.0. motion score: 5.0. camera motion: zoom in."
    assert append_score_to_prompts(["a cat"]) == ["a cat"]
