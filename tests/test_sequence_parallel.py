"""Sequence parallelism: collectives, and STDiT3 split over 2 and 4 gloo processes equals one process.

The multi-process checks run in workers started with torch.multiprocessing.spawn (gloo on 127.0.0.1,
one CPU thread each); every worker computes the single-process reference itself and asserts, so a
failure shows up as the worker's traceback. One spawn per group size keeps the start-up cost (each
process imports torch) to two rounds.
"""

import copy
import os
import pickle
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from opensora_lib.models.stdit3 import STDiT3
from opensora_lib.parallel import bench_sp
from opensora_lib.parallel import sequence_parallel as spm

RTOL = 1e-5  # max |SP - single| relative to max |single|, fp32


def tiny_model(heads=3, depth=2, hidden=48, seed=0, **kw):
    """A tiny STDiT3 with every weight perturbed (also the zero-initialised ones) so every path matters."""
    torch.manual_seed(seed)
    model = STDiT3(depth=depth, hidden_size=hidden, num_heads=heads, qk_norm=True, caption_channels=32,
                   model_max_length=16, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "rope.freqs":
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def inputs(B=2, T=3, H=5, W=5, L=9, seed=1):
    """Latent [B, 4, T, H, W] (patch 2 -> ceil(H/2)*ceil(W/2) tokens a frame), captions with per-sample lengths."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, T, H, W, generator=g)
    t = torch.tensor([700.0, 30.0, 400.0][:B])
    y = torch.randn(B, 1, L, 32, generator=g)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i in range(B):
        mask[i, : 2 + 3 * i] = 1
    kw = dict(fps=torch.full((B,), 24.0), height=torch.full((B,), H * 8.0), width=torch.full((B,), W * 8.0))
    x_mask = torch.ones(B, T, dtype=torch.bool)
    x_mask[:, 0] = False  # first frame clean (conditioning), the others generated
    return x, t, y, mask, x_mask, kw


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def assert_close(a, b, what):
    err = rel_err(a, b)
    assert err <= RTOL, f"{what}: relative error {err:.2e} > {RTOL:g}"


def train_step(model, x, t, y, mask, x_mask, kw, weight, seed):
    """Forward + backward of a fixed linear loss; returns (output, grad of x, {name: grad})."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # same caption-dropout draw on the reference and on rank 0
    out = model(x, t, y, mask=mask, x_mask=x_mask, **kw)
    (out * weight).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check_grads(sp_grads, ref_grads, what):
    assert set(sp_grads) == set(ref_grads), f"{what}: parameters with gradients differ"
    for name, ref in ref_grads.items():
        assert_close(sp_grads[name], ref, f"{what}: grad of {name}")


def check_sp_group(group, tag, full=True):
    """Forward (eval) and a training step (caption dropout on) through `group` equal one process."""
    rank = dist.get_rank(group)
    cases = [
        # (heads, latent H, W, with x_mask): 9 tokens a frame (odd, padded) / 4 tokens (no padding)
        (3, 5, 5, True),
        (3, 5, 5, False),
        (2, 4, 4, True),
    ]
    if not full:
        cases = cases[1:]
    for heads, H, W, use_x_mask in cases:
        what = f"{tag} heads={heads} HxW={H}x{W} x_mask={use_x_mask}"
        model = tiny_model(heads=heads).eval()
        x, t, y, mask, x_mask, kw = inputs(H=H, W=W)
        x_mask = x_mask if use_x_mask else None
        with torch.no_grad():
            ref = model(x, t, y, mask=mask, x_mask=x_mask, **kw)
            model.set_sequence_parallel(group)
            out = model(x, t, y, mask=mask, x_mask=x_mask, **kw)
            assert_close(out, ref, f"{what}: forward")
            if full:
                model.set_sequence_parallel(group, cross_attn_all_to_all=False)
                assert_close(model(x, t, y, mask=mask, x_mask=x_mask, **kw), ref, f"{what}: forward, local cross-attn")

        # training: caption dropout drawn on rank 0 of the group, gradients averaged over the group
        model = tiny_model(heads=heads, class_dropout_prob=0.5).train()
        weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5))
        # seed 0 drops the caption of sample 0 only; seeds 51-53 (other ranks' own draws) drop none
        ref_out, ref_dx, ref_grads = train_step(model, x, t, y, mask, x_mask, kw, weight, seed=0)
        model.set_sequence_parallel(group)
        out, dx, grads = train_step(model, x, t, y, mask, x_mask, kw, weight, seed=0 if rank == 0 else 50 + rank)
        assert_close(out, ref_out, f"{what}: training forward")
        assert_close(dx, ref_dx, f"{what}: input gradient")
        for g in grads.values():
            dist.all_reduce(g, group=group)
            g.div_(dist.get_world_size(group))
        check_grads(grads, ref_grads, what)
    if not full:
        return

    # gradient checkpointing recomputes the blocks (and their all-to-alls) in backward
    model = tiny_model(heads=3, class_dropout_prob=0.0, grad_checkpoint=True).train()
    x, t, y, mask, x_mask, kw = inputs(H=5, W=7)
    weight = torch.randn(2, 8, 3, 5, 7, generator=torch.Generator().manual_seed(6))
    _, _, ref_grads = train_step(model, x, t, y, mask, x_mask, kw, weight, seed=0)
    model.set_sequence_parallel(group)
    _, _, grads = train_step(model, x, t, y, mask, x_mask, kw, weight, seed=0)
    spm.average_gradients(model, group)
    check_grads({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, ref_grads,
                f"{tag} grad_checkpoint")


def check_collectives(world):
    rank = dist.get_rank()
    g = dist.group.WORLD
    # all-to-all with uneven head chunks (3 heads, possibly 0 on a rank) and its inverse
    full = torch.randn(2, 4 * world, 3, 5, generator=torch.Generator().manual_seed(0))
    local = full[:, 4 * rank : 4 * rank + 4]
    sizes = spm.even_split_sizes(3, world)
    heads = spm.all_to_all(local, g, scatter_dim=2, gather_dim=1, scatter_sizes=sizes)
    start = sum(sizes[:rank])
    assert torch.equal(heads, full[:, :, start : start + sizes[rank]])
    assert torch.equal(spm.all_to_all(heads, g, scatter_dim=1, gather_dim=2, gather_sizes=sizes), local)
    # autograd: the adjoint of the exchange is the inverse exchange
    leaf = local.clone().requires_grad_(True)
    w = torch.randn(heads.shape, generator=torch.Generator().manual_seed(rank))
    (spm.all_to_all(leaf, g, 2, 1, scatter_sizes=sizes) * w).sum().backward()
    assert torch.equal(leaf.grad, spm.all_to_all(w, g, 1, 2, gather_sizes=sizes))
    # split / gather, uneven sizes
    xs = torch.arange(2.0 * (2 * world + 1)).view(2, -1).requires_grad_(True)
    part = spm.split_forward_gather_backward(xs, g, dim=1, grad_scale=0.5)
    n = spm.even_split_sizes(2 * world + 1, world)
    assert part.shape == (2, n[rank])
    whole = spm.gather_forward_split_backward(part, g, dim=1, sizes=n)
    assert torch.equal(whole, xs.detach())
    (whole * 2.0).sum().backward()  # each rank: its slice gets 2, all-gathered, times 0.5
    assert torch.equal(xs.grad, torch.ones_like(xs))


def worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        check_collectives(world)
        check_sp_group(dist.group.WORLD, f"sp={world}", full=world == 2)
        if world == 4:
            check_dp_times_sp()
    finally:
        dist.destroy_process_group()


def check_dp_times_sp():
    """4 ranks = 2 data-parallel groups x SP 2: world-averaged gradients = mean of the two batches'."""
    state = spm.build_parallel_groups(sp_size=2)
    assert (state.sp_size, state.dp_size, state.sp_rank, state.dp_rank) == (2, 2, state.rank % 2, state.rank // 2)
    assert spm.get_sequence_parallel_group() is state.sp_group
    model = tiny_model(heads=3, class_dropout_prob=0.0).train()
    weight = torch.randn(2, 8, 3, 5, 5, generator=torch.Generator().manual_seed(7))
    batches = [inputs(seed=s) for s in (1, 2)]
    ref = [train_step(model, *batch[:5], batch[5], weight, seed=0)[2] for batch in batches]
    mean_ref = {n: (ref[0][n] + ref[1][n]) / 2 for n in ref[0]}
    sp_model = tiny_model(heads=3, class_dropout_prob=0.0, enable_sequence_parallelism=True).train()
    assert sp_model.sequence_parallel_group is state.sp_group
    _, _, _ = train_step(sp_model, *batches[state.dp_rank][:5], batches[state.dp_rank][5], weight, seed=0)
    spm.average_gradients(sp_model)  # over the world, as DDP would
    check_grads({n: p.grad for n, p in sp_model.named_parameters() if p.grad is not None}, mean_ref, "dp2 x sp2")
    spm.set_sequence_parallel_group(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_spawned(world):
    mp.spawn(worker, args=(world, free_port()), nprocs=world, join=True)


# --- multi-process ------------------------------------------------------------------------------


def test_sp2_forward_and_gradients_equal_single_process():
    run_spawned(2)


@pytest.mark.slow
def test_sp4_forward_gradients_and_dp_times_sp():
    run_spawned(4)


# --- single process -----------------------------------------------------------------------------


def test_even_split_sizes():
    assert spm.even_split_sizes(7, 3) == [3, 2, 2]
    assert spm.even_split_sizes(3, 4) == [1, 1, 1, 0]
    assert spm.even_split_sizes(8, 4) == [2, 2, 2, 2]


def test_without_group_the_model_is_unchanged_and_copyable():
    model = tiny_model().eval()
    x, t, y, mask, x_mask, kw = inputs()
    with torch.no_grad():
        ref = model(x, t, y, mask=mask, x_mask=x_mask, **kw)
        sp_model = tiny_model(enable_sequence_parallelism=True).eval()  # nothing registered: one process
        assert sp_model.sequence_parallel_group is None
        assert torch.equal(sp_model(x, t, y, mask=mask, x_mask=x_mask, **kw), ref)
    assert "enable_sequence_parallelism" not in sp_model.config
    marker = object()
    sp_model.set_sequence_parallel(marker)
    ema = copy.deepcopy(sp_model)  # an EMA copy shares the (uncopyable) group
    assert ema._sp.group is marker
    assert sp_model.sequence_parallel_group is None  # torch.distributed not initialised: size 1
    assert pickle.loads(pickle.dumps(sp_model))._sp.group is None  # a pickled model forgets the group
    registered = pickle.loads(pickle.dumps(tiny_model(enable_sequence_parallelism=True)))
    assert registered._sp.group == "registered"  # ... but keeps "use the registered group"


def test_init_distributed_without_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    state = spm.init_distributed(sp_size=1)
    assert (state.world_size, state.sp_size, state.sp_group) == (1, 1, None)
    with pytest.raises(ValueError, match="torchrun"):
        spm.init_distributed(sp_size=2)


# --- the benchmark worker and its table ----------------------------------------------------------

TINY_ARGS = dict(depth=1, hidden=48, heads=3, latent=(2, 5, 6), pixels=(40, 48), batch=2, repeats=1, warmup=0,
                 text_tokens=4)


def test_latent_shape_and_predicted_communication():
    assert bench_sp.latent_shape(51, 240, 426) == (15, 30, 53)
    assert bench_sp.latent_shape(1, 240, 426) == (1, 30, 53)
    assert bench_sp.latent_shape(20, 64, 64) == (6, 8, 8)
    # by hand: B=1, T=1, 4 tokens, C=8, depth 1, p=2 -> local 2 tokens; 6 tensors of 1*1*2*8 floats, half sent,
    # plus the 32-feature output of 2 tokens to the other rank: (6*64*1/2 + 2*32*4) bytes
    assert bench_sp.predicted_comm_mib(1, 1, 4, 8, 1, 2) * 2**20 == 6 * 64 / 2 + 2 * 32 * 4
    assert bench_sp.predicted_comm_mib(1, 1, 4, 8, 1, 1) == 0.0


def test_worker_in_one_process_and_table(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = bench_sp.worker_args(**TINY_ARGS)
    one = bench_sp.main(args)
    train = bench_sp.main(bench_sp.worker_args(**{**TINY_ARGS, "mode": "train"}))
    assert one["processes"] == 1 and not one["sp"] and one["tokens"] == 2 * 3 * 3
    assert train["mode"] == "train" and train["step_s"] > 0
    fake_two = {**one, "processes": 2, "sp": True, "step_s": one["step_s"] / 1.5,
                "cpu_s_per_step_per_rank": [c / 2 for c in one["cpu_s_per_step_per_rank"]] * 2,
                "comm_s_per_step_per_rank": [0.1, 0.1], "comm_mib_sent_per_step_per_rank": [1.0, 1.0],
                "peak_mib_per_rank": [1.0, 2.0]}
    rows = bench_sp.sp_table([one, fake_two, train], "tiny", 5, 0.2)
    assert rows[0]["speedup"] == 1.0 and rows[2]["speedup"] == 1.0  # each mode against its own 1-process run
    assert rows[1]["speedup"] == pytest.approx(1.5, abs=1e-3)
    assert rows[1]["speedup_per_process_pct"] == pytest.approx(-25.0, abs=0.1)
    assert rows[1]["cpu_speedup"] == pytest.approx(2.0, abs=1e-3) and rows[1]["peak_mib_per_process"] == 2.0


@pytest.mark.slow
def test_torchrun_launch_two_processes_is_exact(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = bench_sp.worker_args(**TINY_ARGS)
    one = bench_sp.main(args + ["--save-output", str(tmp_path / "one.pt")])  # in this process
    two = bench_sp.launch(2, args, save_output=str(tmp_path / "two.pt"))
    assert two["sp"] and two["processes"] == 2 and len(two["step_s_per_rank"]) == 2
    assert two["comm_mib_sent_per_step_per_rank"][0] == pytest.approx(
        bench_sp.predicted_comm_mib(2, 2, 9, 48, 1, 2), abs=0.01)
    assert_close(torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt"), "torchrun 2 processes")
    assert one["step_s"] > 0
