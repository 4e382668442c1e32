"""Ulysses-style sequence parallelism (SP) for STDiT3, on torch.distributed (gloo on CPU, NCCL on GPU).

The idea (DeepSpeed-Ulysses, used by Open-Sora 1.2 for inference): every rank of an SP group holds
the same weights and the same inputs, but only a slice of the spatial tokens. Everything that acts
on one token at a time (norms, modulation, MLP, cross-attention, the temporal blocks, which mix the
frames of ONE spatial position) runs on the local slice without communication. Only the spatial
self-attention mixes tokens of different ranks; around it one all-to-all turns "all heads of my
tokens" into "my heads of all tokens", and a second one turns it back.

This file has four parts:

1. process groups: a registry for the SP group, `init_distributed(sp_size)` for `torchrun`
   launches (SP groups of consecutive ranks, data-parallel groups across them);
2. plain collectives on tensors (split, all-gather, all-to-all), uneven sizes allowed;
3. the same collectives as autograd functions, each with its adjoint as backward;
4. `SPContext`, the per-forward bookkeeping STDiT3 uses (token padding, head split, key mask).

Gradient convention (see `SPContext.shard` / `unshard`): with the model's loss computed identically
on every rank of the group, the parameter gradients AVERAGED over the group (what DDP does) equal the
single-process gradients; the gradient of the model's input is already the full one on every rank.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

# ==================================================================================================
# 1. Process groups
# ==================================================================================================

_SEQUENCE_PARALLEL_GROUP = None


def set_sequence_parallel_group(group) -> None:
    """Register the SP group that models built with `enable_sequence_parallelism=True` use."""
    global _SEQUENCE_PARALLEL_GROUP
    _SEQUENCE_PARALLEL_GROUP = group


def get_sequence_parallel_group():
    """The registered SP group (None when none was registered)."""
    return _SEQUENCE_PARALLEL_GROUP


def group_size(group) -> int:
    """Number of ranks in `group` (1 for None or when torch.distributed is not initialised)."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def group_rank(group) -> int:
    """This process's rank inside `group` (0 for None or when not initialised)."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 0
    return dist.get_rank(group)


@dataclass
class ParallelState:
    """Where this process sits: the world, its SP group and its data-parallel (DP) group.

    Ranks [k*sp_size, (k+1)*sp_size) form SP group k; ranks with the same `sp_rank` form a DP
    group. The ranks of one SP group must see the same batch AND the same random draws (noise,
    timesteps): sample data with `dp_rank`/`dp_size` and seed with `seed + dp_rank` (or broadcast
    with `broadcast_from_group_rank0`). Averaging gradients over the whole world (DDP) then gives
    the data-parallel mean of single-process gradients.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    sp_size: int = 1
    sp_rank: int = 0
    sp_group: object = None
    dp_size: int = 1
    dp_rank: int = 0
    dp_group: object = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def build_parallel_groups(sp_size: int) -> ParallelState:
    """Split the initialised world into SP groups of `sp_size` consecutive ranks (and DP groups).

    Every rank must call this (group creation is collective). The SP group is also registered with
    `set_sequence_parallel_group`.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    if sp_size < 1 or world % sp_size:
        raise ValueError(f"sp_size {sp_size} must be >= 1 and divide the world size {world}")
    dp_size = world // sp_size
    sp_group = dp_group = None
    if sp_size == world:
        sp_group = dist.group.WORLD
    else:
        for k in range(dp_size):  # every rank creates every group, in the same order
            g = dist.new_group(list(range(k * sp_size, (k + 1) * sp_size)))
            if rank // sp_size == k:
                sp_group = g
    if dp_size == world:
        dp_group = dist.group.WORLD
    elif dp_size > 1:
        for i in range(sp_size):
            g = dist.new_group(list(range(i, world, sp_size)))
            if rank % sp_size == i:
                dp_group = g
    set_sequence_parallel_group(sp_group if sp_size > 1 else None)
    return ParallelState(
        world_size=world,
        rank=rank,
        local_rank=int(os.environ.get("LOCAL_RANK", rank)),
        sp_size=sp_size,
        sp_rank=rank % sp_size,
        sp_group=sp_group if sp_size > 1 else None,
        dp_size=dp_size,
        dp_rank=rank // sp_size,
        dp_group=dp_group,
    )


def init_distributed(sp_size: int = 1, backend: str | None = None) -> ParallelState:
    """Start torch.distributed from the `torchrun` environment and build the SP/DP groups.

    Without WORLD_SIZE in the environment (a plain `python` run) nothing is initialised and a
    single-process state is returned (sp_size must then be 1). `backend` defaults to NCCL when CUDA
    is available, else gloo. On CUDA the device is cuda:LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        if sp_size != 1:
            raise ValueError(f"sp_size={sp_size} needs a distributed launch (torchrun --nproc_per_node N)")
        return ParallelState()
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), world_size=world)
    state = build_parallel_groups(sp_size)
    if cuda:
        torch.cuda.set_device(state.local_rank)
        state.device = torch.device("cuda", state.local_rank)
    return state


def broadcast_from_group_rank0(tensor: torch.Tensor, group) -> torch.Tensor:
    """Overwrite `tensor` (in place) on every rank of `group` with rank 0's copy; returns it."""
    if group_size(group) > 1:
        dist.broadcast(tensor, src=dist.get_global_rank(group, 0), group=group)
    return tensor


def average_gradients(module: torch.nn.Module, group=None) -> None:
    """All-reduce-average every parameter gradient over `group` (default: the world), as DDP does.

    Under SP this turns each rank's partial gradients into the single-process gradients. The
    gradients travel in one flat buffer per dtype and device (one collective, not one per tensor).
    """
    p = group_size(group) if group is not None else (dist.get_world_size() if dist.is_initialized() else 1)
    if p == 1:
        return
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for param in module.parameters():
        if param.grad is not None:
            buckets.setdefault((param.grad.dtype, param.grad.device), []).append(param.grad)
    for grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        start = time.perf_counter() if CommStats.enabled else 0.0
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        if CommStats.enabled:
            CommStats.add(flat.numel() * flat.element_size(), time.perf_counter() - start)
        flat.div_(p)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


# ==================================================================================================
# 2. Plain collectives (uneven sizes allowed)
# ==================================================================================================


def even_split_sizes(n: int, parts: int) -> list[int]:
    """Sizes of `parts` chunks of n, as even as possible, larger chunks first: (7, 3) -> [3, 2, 2]."""
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class CommStats:
    """Optional accounting of the collectives (calls, bytes sent, seconds); off unless enabled.

    Seconds are wall time inside the call, waiting for slower ranks included (gloo is synchronous;
    with NCCL the call returns once the work is queued, so seconds mean little there).
    """

    enabled = False
    calls = 0
    bytes = 0
    seconds = 0.0

    @classmethod
    def reset(cls, enabled: bool = True) -> None:
        cls.enabled, cls.calls, cls.bytes, cls.seconds = enabled, 0, 0, 0.0

    @classmethod
    def add(cls, nbytes: int, seconds: float) -> None:
        cls.calls += 1
        cls.bytes += nbytes
        cls.seconds += seconds


def _sizes_or_equal(sizes, n_local: int, p: int) -> list[int]:
    return [n_local] * p if sizes is None else list(sizes)


def _split(x: torch.Tensor, group, dim: int, sizes=None) -> torch.Tensor:
    """This rank's chunk of x along dim (chunks `sizes`, default as even as possible)."""
    p, r = group_size(group), group_rank(group)
    if p == 1:
        return x
    sizes = even_split_sizes(x.shape[dim], p) if sizes is None else list(sizes)
    return x.narrow(dim, sum(sizes[:r]), sizes[r]).contiguous()


def _all_gather(x: torch.Tensor, group, dim: int, sizes=None) -> torch.Tensor:
    """Concatenate every rank's x along dim (rank order). `sizes[j]` = rank j's size along dim
    (default: all equal to the local one); uneven pieces travel padded to the largest."""
    p = group_size(group)
    if p == 1:
        return x
    sizes = _sizes_or_equal(sizes, x.shape[dim], p)
    big = max(sizes)
    x = x.contiguous()
    if x.shape[dim] < big:
        pad = [0, 0] * (x.ndim - 1 - (dim % x.ndim)) + [0, big - x.shape[dim]]
        x = F.pad(x, pad)
    start = time.perf_counter() if CommStats.enabled else 0.0
    pieces = [torch.empty_like(x) for _ in range(p)]
    dist.all_gather(pieces, x, group=group)
    if CommStats.enabled:
        CommStats.add(x.numel() * x.element_size() * (p - 1), time.perf_counter() - start)
    pieces = [piece.narrow(dim, 0, n) if n < big else piece for piece, n in zip(pieces, sizes)]
    return torch.cat(pieces, dim=dim)


def _all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int, scatter_sizes=None, gather_sizes=None):
    """Scatter x along scatter_dim (chunk j to rank j) and concatenate the pieces received along
    gather_dim (rank order).

    scatter_sizes: chunk sizes along scatter_dim (default: equal, the dim must divide evenly);
    gather_sizes[j]: rank j's size along gather_dim (default: all equal to the local one).
    The piece received from rank j has scatter_sizes[me] along scatter_dim and gather_sizes[j] along
    gather_dim. Runs as one `all_to_all_single` on flat buffers (any shapes, gloo and NCCL).
    """
    p, r = group_size(group), group_rank(group)
    if p == 1:
        return x
    nd = x.ndim
    scatter_dim, gather_dim = scatter_dim % nd, gather_dim % nd
    if scatter_sizes is None:
        if x.shape[scatter_dim] % p:
            raise ValueError(f"dim {scatter_dim} of size {x.shape[scatter_dim]} does not split evenly in {p}")
        scatter_sizes = [x.shape[scatter_dim] // p] * p
    scatter_sizes = list(scatter_sizes)
    gather_sizes = _sizes_or_equal(gather_sizes, x.shape[gather_dim], p)

    # send buffer: chunk for rank 0, chunk for rank 1, ... (each flattened)
    if len(set(scatter_sizes)) == 1:
        send = x.unflatten(scatter_dim, (p, scatter_sizes[0])).movedim(scatter_dim, 0).reshape(-1)
    else:
        send = torch.cat([c.reshape(-1) for c in torch.split(x, scatter_sizes, dim=scatter_dim)])
    chunk_numel = x.numel() // max(x.shape[scatter_dim], 1)  # elements per unit of scatter_dim
    send_counts = [n * chunk_numel for n in scatter_sizes]

    # receive buffer: piece from rank 0, piece from rank 1, ...
    shapes = []
    for j in range(p):
        shape = list(x.shape)
        shape[scatter_dim] = scatter_sizes[r]
        shape[gather_dim] = gather_sizes[j]
        shapes.append(shape)
    recv_counts = [math.prod(s) for s in shapes]
    recv = x.new_empty(sum(recv_counts))
    start = time.perf_counter() if CommStats.enabled else 0.0
    dist.all_to_all_single(recv, send, output_split_sizes=recv_counts, input_split_sizes=send_counts, group=group)
    if CommStats.enabled:
        CommStats.add((sum(send_counts) - send_counts[r]) * x.element_size(), time.perf_counter() - start)

    if len(set(gather_sizes)) == 1:
        out = recv.view(p, *shapes[0]).movedim(0, gather_dim)  # [..., p, n, ...] at gather_dim
        return out.flatten(gather_dim, gather_dim + 1)
    pieces = [t.view(s) for t, s in zip(torch.split(recv, recv_counts), shapes)]
    return torch.cat(pieces, dim=gather_dim)


# ==================================================================================================
# 3. Autograd-aware collectives
# ==================================================================================================


class _SplitForwardGatherBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim, grad_scale, sizes):
        ctx.group, ctx.dim, ctx.grad_scale = group, dim, grad_scale
        ctx.sizes = even_split_sizes(x.shape[dim], group_size(group)) if sizes is None else list(sizes)
        return _split(x, group, dim, ctx.sizes)

    @staticmethod
    def backward(ctx, grad):
        grad = _all_gather(grad, ctx.group, ctx.dim, ctx.sizes)
        if ctx.grad_scale != 1.0:
            grad = grad * ctx.grad_scale
        return grad, None, None, None, None


class _GatherForwardSplitBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim, grad_scale, sizes):
        ctx.group, ctx.dim, ctx.grad_scale = group, dim, grad_scale
        ctx.sizes = _sizes_or_equal(sizes, x.shape[dim], group_size(group))
        return _all_gather(x, group, dim, ctx.sizes)

    @staticmethod
    def backward(ctx, grad):
        grad = _split(grad, ctx.group, ctx.dim, ctx.sizes)
        if ctx.grad_scale != 1.0:
            grad = grad * ctx.grad_scale
        return grad, None, None, None, None


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, scatter_dim, gather_dim, scatter_sizes, gather_sizes):
        p = group_size(group)
        if scatter_sizes is None:
            if x.shape[scatter_dim] % p:
                raise ValueError(f"dim {scatter_dim} of size {x.shape[scatter_dim]} does not split evenly in {p}")
            scatter_sizes = [x.shape[scatter_dim] // p] * p
        gather_sizes = _sizes_or_equal(gather_sizes, x.shape[gather_dim], p)
        ctx.args = (group, gather_dim, scatter_dim, gather_sizes, scatter_sizes)  # the inverse exchange
        return _all_to_all(x, group, scatter_dim, gather_dim, scatter_sizes, gather_sizes)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad.contiguous(), *ctx.args), None, None, None, None, None


def split_forward_gather_backward(x: torch.Tensor, group, dim: int, grad_scale: float = 1.0, sizes=None):
    """Keep this rank's chunk of x along dim; backward: all-gather the gradient (times grad_scale)."""
    if group_size(group) == 1:
        return x
    return _SplitForwardGatherBackward.apply(x, group, dim, grad_scale, sizes)


def gather_forward_split_backward(x: torch.Tensor, group, dim: int, grad_scale: float = 1.0, sizes=None):
    """All-gather x along dim; backward: keep this rank's chunk of the gradient (times grad_scale)."""
    if group_size(group) == 1:
        return x
    return _GatherForwardSplitBackward.apply(x, group, dim, grad_scale, sizes)


def all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int, scatter_sizes=None, gather_sizes=None):
    """Differentiable all-to-all (see `_all_to_all`); backward is the inverse exchange."""
    if group_size(group) == 1:
        return x
    return _AllToAll.apply(x, group, scatter_dim, gather_dim, scatter_sizes, gather_sizes)


# ==================================================================================================
# 4. What STDiT3 needs during one forward
# ==================================================================================================


@dataclass
class SPContext:
    """Bookkeeping for one SP forward over a [B, T, S, C] token grid.

    Tokens: S is padded with zero tokens to S_pad = p * ceil(S / p); rank r holds tokens
    [r * S_local, (r + 1) * S_local). Padded tokens are excluded as keys from the spatial
    self-attention (`key_mask`) and cropped after the final gather; every other operation is per
    token (or per spatial position), so they never reach a real token.
    Heads: split unevenly when p does not divide them (`head_sizes`, larger first), so every rank
    computes only real heads; a rank may get 0 heads when there are fewer heads than ranks.
    """

    group: object
    size: int
    rank: int
    tokens: int  # S (real tokens per frame)
    local_tokens: int  # S_local
    head_sizes: list[int]
    key_mask: torch.Tensor | None  # [1, S_pad] bool, True = real token; None when S_pad == S
    cross_attn_all_to_all: bool = True

    @classmethod
    def build(cls, group, tokens: int, num_heads: int, device, cross_attn_all_to_all: bool = True) -> "SPContext":
        p, r = group_size(group), group_rank(group)
        local = -(-tokens // p)
        padded = local * p
        key_mask = None
        if padded != tokens:
            key_mask = (torch.arange(padded, device=device) < tokens)[None]  # [1, S_pad]: every query
        return cls(group, p, r, tokens, local, even_split_sizes(num_heads, p), key_mask, cross_attn_all_to_all)

    @property
    def padded_tokens(self) -> int:
        return self.local_tokens * self.size

    @property
    def head_slice(self) -> slice:
        start = sum(self.head_sizes[: self.rank])
        return slice(start, start + self.head_sizes[self.rank])

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, S, C] (same on every rank) -> this rank's [B, T, S_local, C] (zero-padded).

        Backward all-gathers the gradient and divides it by p: paired with `unshard` (which
        multiplies by p) the input gradient is the full one on every rank and parameter gradients
        averaged over the group are the single-process ones.
        """
        x = F.pad(x, (0, 0, 0, self.padded_tokens - self.tokens))
        return split_forward_gather_backward(x, self.group, dim=2, grad_scale=1.0 / self.size)

    def unshard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's [B, T, S_local, C'] -> the full [B, T, S, C'] on every rank (padding cropped).

        Backward keeps this rank's slice of the gradient times p: the loss after the gather is the
        same on every rank, so p times one rank's slice is the sum over ranks (the exact adjoint).
        """
        x = gather_forward_split_backward(x, self.group, dim=2, grad_scale=float(self.size))
        return x[:, :, : self.tokens]

    def seq_to_heads(self, x: torch.Tensor, seq_dim: int, head_dim: int) -> torch.Tensor:
        """[... S_local ... heads ...] -> [... S_pad ... my heads ...] (gather tokens, scatter heads)."""
        return all_to_all(x, self.group, scatter_dim=head_dim, gather_dim=seq_dim, scatter_sizes=self.head_sizes)

    def heads_to_seq(self, x: torch.Tensor, seq_dim: int, head_dim: int) -> torch.Tensor:
        """[... S_pad ... my heads ...] -> [... S_local ... heads ...] (the inverse of seq_to_heads)."""
        return all_to_all(x, self.group, scatter_dim=seq_dim, gather_dim=head_dim, gather_sizes=self.head_sizes)
