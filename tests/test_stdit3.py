"""STDiT3: formulas, masks, isolation properties, the released size, checkpoints, a tiny train step."""

import math
from pathlib import Path

import pytest
import torch

from opensora_lib.models.stdit3 import (
    Attention,
    CheckpointError,
    RotaryEmbedding,
    STDiT3_Tiny_2,
    STDiT3_XL_2,
    apply_rope,
    convert_pixart_sigma_state_dict,
    load_pixart_sigma_checkpoint,
    load_stdit3_checkpoint,
    rotate_pairs,
    sincos_2d_pos_embed,
    timestep_sinusoid,
)
from opensora_lib.schedulers.rectified_flow import RFlowScheduler

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared/reference"


@pytest.fixture(autouse=True)
def one_thread():
    # the CPU is shared: one thread is faster for these tiny models than fighting over two
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw):
    torch.manual_seed(0)
    return STDiT3_Tiny_2(**kw).eval()


def inputs(B=2, T=3, H=6, W=7, L=10, C_cap=384, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, T, H, W, generator=g)
    t = torch.tensor([500.0, 20.0, 900.0, 1.0][:B])
    y = torch.randn(B, 1, L, C_cap, generator=g)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i in range(B):
        mask[i, : 3 + 2 * i] = 1  # different text lengths
    kw = dict(fps=torch.full((B,), 24.0), height=torch.full((B,), H * 8.0), width=torch.full((B,), W * 8.0))
    return x, t, y, mask, kw


def randomize_(model, seed=3, std=0.05):
    """Perturb every weight (also the zero-initialised ones) so that every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "rope.freqs":
                p.add_(std * torch.randn(p.shape, generator=g))
    return model


# --- formulas ----------------------------------------------------------------------------------


def test_timestep_sinusoid_is_cos_then_sin():
    t = torch.tensor([0.0, 3.0])
    emb = timestep_sinusoid(t, 256)
    assert emb.shape == (2, 256)
    assert torch.equal(emb[0, :128], torch.ones(128)) and torch.equal(emb[0, 128:], torch.zeros(128))
    k = torch.arange(128, dtype=torch.float64)
    f = torch.exp(-math.log(10000) * k / 128)
    torch.testing.assert_close(emb[1, :128].double(), torch.cos(3 * f), atol=1e-6, rtol=0)
    torch.testing.assert_close(emb[1, 128:].double(), torch.sin(3 * f), atol=1e-6, rtol=0)
    # by hand: k = 1 -> f = 10000^(-1/128) = 0.930572..., cos(3 f) = cos(2.791716) = -0.939415
    assert abs(emb[1, 1].item() - math.cos(3 * 10000 ** (-1 / 128))) < 1e-6
    assert abs(emb[1, 1].item() - (-0.939415)) < 1e-5


def test_pos_emb_first_half_is_column_second_half_is_row():
    h, w, dim = 2, 3, 16
    base = round(math.sqrt(h * w))  # 2
    emb = sincos_2d_pos_embed(h, w, dim, 1.0, base, torch.device("cpu"), torch.float32)
    assert emb.shape == (h * w, dim)
    grid = emb.view(h, w, dim)
    # first half depends only on the column, second half only on the row
    assert torch.equal(grid[0, :, : dim // 2], grid[1, :, : dim // 2])
    assert torch.equal(grid[:, 0, dim // 2 :], grid[:, 1, dim // 2 :])
    # column c = 1 -> coordinate 1 * base / w = 2/3; layout [sin(p f_k), cos(p f_k)], f_0 = 1
    assert abs(grid[0, 1, 0].item() - math.sin(2 / 3)) < 1e-6  # 0.61837
    assert abs(grid[0, 1, dim // 4].item() - math.cos(2 / 3)) < 1e-6  # 0.78589
    # f_1 = 10000^(-2/8) = 0.1
    assert abs(grid[0, 1, 1].item() - math.sin(2 / 3 * 0.1)) < 1e-6
    # row r = 1 -> coordinate 1 * base / h = 1
    assert abs(grid[1, 0, dim // 2].item() - math.sin(1.0)) < 1e-6  # 0.84147
    # scale: 480x480 pixels vs the 512 reference side -> coordinates / 0.9375
    emb2 = sincos_2d_pos_embed(h, w, dim, 480 / 512, base, torch.device("cpu"), torch.float32).view(h, w, dim)
    assert abs(emb2[1, 0, dim // 2].item() - math.sin(1 / 0.9375)) < 1e-6


def test_rope_interleaved_pairs_and_relative_positions():
    assert torch.equal(rotate_pairs(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-2.0, 1.0, -4.0, 3.0]))
    rope = RotaryEmbedding(72)
    assert rope.freqs.shape == (36,) and not rope.freqs.requires_grad
    torch.testing.assert_close(rope.freqs[5], torch.tensor(10000 ** (-10 / 72)))
    cos, sin = rope.cos_sin(8)
    assert cos.shape == (8, 72)
    assert torch.equal(cos[:, 0], cos[:, 1])  # pair (0, 1) shares one angle
    # position 3, pair k = 2: angle = 3 * 10000^(-4/72)
    assert abs(cos[3, 4].item() - math.cos(3 * 10000 ** (-4 / 72))) < 1e-6
    # q.k after rotation depends only on the offset between the two positions
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(72, generator=g), torch.randn(72, generator=g)
    qs = apply_rope(q.expand(8, 72), cos, sin)  # q at positions 0..7
    ks = apply_rope(k.expand(8, 72), cos, sin)
    dots = qs @ ks.T  # [i, j] = <q at i, k at j>
    for offset in (-3, 0, 2):
        diag = torch.diagonal(dots, offset)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(dots[0, 0], dots[0, 3])
    # inside the attention layer (qk-norm, then RoPE): the same token at every position gives
    # attention logits that depend only on i - j (a Toeplitz matrix)
    attn = Attention(72, 1, qk_norm=True).eval()
    x = torch.randn(1, 1, 72, generator=g).expand(1, 6, 72)
    q, k, _ = attn.qkv(x).view(1, 6, 3, 72).unbind(2)  # each [1, 6, 72]
    c6, s6 = rope.cos_sin(6)
    logits = apply_rope(attn.q_norm(q), c6, s6)[0] @ apply_rope(attn.k_norm(k), c6, s6)[0].T  # [6, 6]
    for offset in range(-5, 6):
        diag = torch.diagonal(logits, offset)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), atol=1e-4, rtol=1e-5)
    assert attn(x, (c6, s6)).shape == (1, 6, 72)


# --- model behaviour ---------------------------------------------------------------------------


def test_output_shape_padding_and_dtype():
    model = tiny()
    x, t, y, mask, kw = inputs(H=5, W=7)
    out = model(x, t, y, mask=mask, **kw)
    assert out.shape == (2, 8, 3, 5, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_all_true_x_mask_equals_no_mask():
    model = randomize_(tiny())
    x, t, y, mask, kw = inputs()
    with torch.no_grad():
        a = model(x, t, y, mask=mask, **kw)
        b = model(x, t, y, mask=mask, x_mask=torch.ones(2, 3, dtype=torch.bool), **kw)
    assert torch.equal(a, b)


def test_x_mask_false_frames_use_timestep_zero():
    """A frame with x_mask False is modulated exactly like a frame at timestep 0."""
    model = randomize_(tiny(legacy_final_x_mask=False))
    x, t, y, mask, kw = inputs(B=1, T=1)
    with torch.no_grad():
        at_zero = model(x, torch.zeros(1), y, mask=mask, **kw)
        masked = model(x, t[:1], y, mask=mask, x_mask=torch.zeros(1, 1, dtype=torch.bool), **kw)
    torch.testing.assert_close(masked, at_zero, atol=1e-5, rtol=1e-5)


def test_fresh_model_equals_its_spatial_only_path():
    full = tiny()
    spatial = STDiT3_Tiny_2(enable_temporal=False).eval()
    state = {k: v for k, v in full.state_dict().items() if not k.startswith(("temporal_blocks.", "rope."))}
    spatial.load_state_dict(state, strict=True)
    x, t, y, mask, kw = inputs()
    with torch.no_grad():
        a, b = full(x, t, y, mask=mask, **kw), spatial(x, t, y, mask=mask, **kw)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # after training (non-zero temporal weights) the temporal blocks matter
    randomize_(full)
    with torch.no_grad():
        assert not torch.allclose(full(x, t, y, mask=mask, **kw), b, atol=1e-3)


def test_cross_attention_sees_only_own_valid_tokens():
    model = randomize_(tiny())
    x, t, y, mask, kw = inputs()
    with torch.no_grad():
        base = model(x, t, y, mask=mask, **kw)
        # padded tokens of sample 0 (positions 3..) changed: nothing changes
        y2 = y.clone()
        y2[0, 0, 3:] = 100 * torch.randn_like(y2[0, 0, 3:])
        torch.testing.assert_close(model(x, t, y2, mask=mask, **kw), base, atol=1e-5, rtol=1e-5)
        # another sample's caption changed: sample 0 unchanged, sample 1 changed
        y3 = y.clone()
        y3[1] = torch.randn_like(y3[1])
        out3 = model(x, t, y3, mask=mask, **kw)
        torch.testing.assert_close(out3[0], base[0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out3[1], base[1], atol=1e-4)
        # batch of 2 equals two batches of 1
        single = model(x[1:], t[1:], y[1:], mask=mask[1:], **{k: v[1:] for k, v in kw.items()})
        torch.testing.assert_close(single, base[1:], atol=1e-5, rtol=1e-5)


def test_caption_dropout_and_eval_mode():
    model = randomize_(tiny())
    x, t, y, mask, kw = inputs()
    L = y.shape[2]
    with torch.no_grad():
        null = model.null_caption(2, L)
        dropped = model(x, t, y, mask=mask, force_drop_ids=torch.tensor([1, 0]), **kw)
        manual = model(x, t, torch.cat([null[:1], y[1:]]), mask=mask, **kw)
        torch.testing.assert_close(dropped, manual, atol=0, rtol=0)
        # eval: no random dropout
        assert torch.equal(model(x, t, y, mask=mask, **kw), model(x, t, y, mask=mask, **kw))
        # training with dropout probability 1: every caption is the null caption
        always = STDiT3_Tiny_2(class_dropout_prob=1.0)
        always.load_state_dict(model.state_dict())
        always.train()
        torch.testing.assert_close(always(x, t, y, mask=mask, **kw), model(x, t, null, mask=mask, **kw))


def test_fps_conditioning_switch():
    model = tiny()
    x, t, y, mask, kw = inputs()
    with pytest.raises(ValueError, match="fps"):
        model(x, t, y, mask=mask, height=kw["height"], width=kw["width"])
    no_fps = STDiT3_Tiny_2(enable_fps=False, enable_temporal=False).eval()
    assert not any(k.startswith(("fps_embedder", "temporal_blocks", "rope")) for k in no_fps.state_dict())
    assert no_fps(x, t, y, mask=mask).shape == (2, 8, 3, 6, 7)


def test_init_follows_reference():
    model = STDiT3_Tiny_2()
    for block in model.temporal_blocks:
        assert block.attn.proj.weight.abs().sum() == 0
        assert block.cross_attn.proj.weight.abs().sum() == 0
        assert block.mlp.fc2.weight.abs().sum() == 0
    assert model.fps_embedder.mlp[2].weight.abs().sum() == 0
    assert 0.01 < model.fps_embedder.mlp[0].weight.std() < 0.03
    assert model.spatial_blocks[0].attn.proj.weight.abs().sum() > 0
    assert model.t_block[1].bias.abs().sum() == 0
    assert model.final_layer.linear.weight.abs().sum() > 0


def test_xl2_on_meta_device_matches_released_state_dict():
    listing = REFERENCE_DIR / "stdit3_xl2_state_dict.txt"
    if not listing.is_file():
        pytest.skip(f"reference listing not found at {listing}")
    with torch.device("meta"):
        model = STDiT3_XL_2()
    assert sum(p.numel() for p in model.parameters()) == 1_207_643_972
    expected = [line.rsplit(" ", 1)[0] for line in listing.read_text().splitlines() if line and not line.startswith("#")]
    ours = [f"{k} [{', '.join(map(str, v.shape))}]" for k, v in model.state_dict().items()]
    assert ours == expected


# --- training ----------------------------------------------------------------------------------


def test_two_train_steps_tiny_preset_finite_and_checkpointing_equal():
    torch.manual_seed(0)
    model = STDiT3_Tiny_2(grad_checkpoint=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-15, weight_decay=0)
    scheduler = RFlowScheduler(sample_method="logit-normal", use_timestep_transform=True)
    x, _, y, mask, kw = inputs(B=2, T=3, H=4, W=4)
    kw["num_frames"] = torch.tensor([51, 51])
    x_mask = torch.tensor([[False, True, True], [True, True, True]])
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        loss = scheduler.training_losses(model, x, dict(y=y, mask=mask, **kw), mask=x_mask)["loss"]
        assert loss.shape == (2,) and torch.isfinite(loss).all()
        opt.zero_grad()
        loss.mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    # gradient checkpointing changes memory, not the gradients
    model.eval()  # no caption dropout
    grads = []
    for gc in (True, False):
        model.grad_checkpoint = gc
        model.zero_grad()
        torch.manual_seed(5)
        scheduler.training_losses(model, x, dict(y=y, mask=mask, **kw))["loss"].mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


# --- checkpoints -------------------------------------------------------------------------------


def test_loader_roundtrip_and_errors_name_file_and_key(tmp_path):
    model = randomize_(tiny())
    state = model.state_dict()
    # round trips
    pt = tmp_path / "model.pt"
    torch.save(state, pt)
    fresh = tiny()
    load_stdit3_checkpoint(fresh, pt)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), state.values()))
    from safetensors.torch import save_file

    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    load_stdit3_checkpoint(tiny(), st)

    # wrong shape
    bad = dict(state)
    bad["final_layer.linear.bias"] = torch.zeros(7)
    torch.save(bad, tmp_path / "wrong_shape.pth")
    with pytest.raises(CheckpointError, match=r"wrong_shape\.pth.*final_layer\.linear\.bias"):
        load_stdit3_checkpoint(tiny(), tmp_path / "wrong_shape.pth")
    # missing keys
    partial = {k: v for k, v in state.items() if not k.startswith("temporal_blocks.1.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial\.pt.*missing key 'temporal_blocks\.1\.scale_shift_table'"):
        load_stdit3_checkpoint(tiny(), tmp_path / "partial.pt")
    load_stdit3_checkpoint(tiny(), tmp_path / "partial.pt", allow_missing=("temporal_blocks.1.",))
    # unexpected key
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"extra\.pt.*unexpected key 'extra\.weight'"):
        load_stdit3_checkpoint(tiny(), tmp_path / "extra.pt")
    # truncated file
    data = pt.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        load_stdit3_checkpoint(tiny(), tmp_path / "truncated.pt")
    # missing file
    with pytest.raises(CheckpointError, match=r"nope\.pt"):
        load_stdit3_checkpoint(tiny(), tmp_path / "nope.pt")


def test_pixart_sigma_conversion(tmp_path):
    image_model = randomize_(STDiT3_Tiny_2(enable_temporal=False, enable_fps=False, qk_norm=False, model_max_length=8))
    # fake a PixArt-Sigma checkpoint: blocks.*, 2-D patch conv, a pos_embed, 8 caption rows
    pixart = {}
    for k, v in image_model.state_dict().items():
        k = k.replace("spatial_blocks.", "blocks.")
        pixart[k] = v.squeeze(2) if k == "x_embedder.proj.weight" else v
    pixart["pos_embed"] = torch.zeros(1, 16, 64)
    converted = convert_pixart_sigma_state_dict({"state_dict": pixart}, model_max_length=12)
    assert converted["x_embedder.proj.weight"].shape == (64, 4, 1, 2, 2)
    assert "pos_embed" not in converted and "spatial_blocks.0.attn.qkv.weight" in converted
    y_emb = converted["y_embedder.y_embedding"]
    assert y_emb.shape == (12, 384) and torch.equal(y_emb[8:], pixart["y_embedder.y_embedding"][-1:].expand(4, -1))
    assert convert_pixart_sigma_state_dict(pixart, model_max_length=5)["y_embedder.y_embedding"].shape == (5, 384)

    torch.save({"state_dict": pixart}, tmp_path / "PixArt-Sigma-XL-2-512-MS.pth")
    video = STDiT3_Tiny_2(model_max_length=8)  # qk_norm, temporal blocks and fps: not in PixArt
    load_pixart_sigma_checkpoint(video, tmp_path / "PixArt-Sigma-XL-2-512-MS.pth")
    assert torch.equal(video.spatial_blocks[1].mlp.fc1.weight, image_model.spatial_blocks[1].mlp.fc1.weight)
