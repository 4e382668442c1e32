"""Pixels into tensors: value range, resize-to-cover + centre crop, seeded batches."""

import numpy as np
import pytest
import torch

from opensora_lib.data import synthetic as syn
from opensora_lib.data.datasets import ClipBank, resize_crop, to_tensor, to_uint8


def test_to_tensor_and_back_is_exact():
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    x = to_tensor(frames)
    assert x.shape == (3, 3, 5, 7) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), frames)


def test_resize_crop_covers_then_centre_crops():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 30:50] = 255  # a white band in the middle columns
    x = resize_crop(frames, 32, 32)  # cover: 40x80 -> 32x64, crop the middle 32 columns
    assert x.shape == (3, 2, 32, 32)
    assert x[:, :, :, 16].min() > 0.9  # the band sits in the centre column
    assert x[:, :, :, 0].max() < -0.9
    same = resize_crop(frames[:, :32, :32], 32, 32)
    assert torch.equal(same, to_tensor(frames[:, :32, :32]))


def test_clip_bank_batches_are_seeded_and_shaped(tmp_path):
    paths = syn.generate_dataset(tmp_path, dict(seed=1, num_samples=8, min_frames=9, max_frames=12,
                                                max_duration=1.0), progress=False)
    bank = ClipBank(paths["meta"], progress=False)
    a = bank.sample(np.random.default_rng(5), 3, 9, 24, videos_only=True)
    b = bank.sample(np.random.default_rng(5), 3, 9, 24, videos_only=True)
    assert a.shape == (3, 3, 9, 24, 24) and torch.equal(a, b)
    assert not torch.equal(a, bank.sample(np.random.default_rng(6), 3, 9, 24, videos_only=True))
    with pytest.raises(ValueError, match="no clip has 99 frames"):
        bank.sample(np.random.default_rng(0), 1, 99, 24)
