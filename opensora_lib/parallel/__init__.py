"""Parallelism for STDiT3: Ulysses sequence parallelism over the spatial tokens."""

from .sequence_parallel import (
    ParallelState,
    SPContext,
    all_to_all,
    average_gradients,
    broadcast_from_group_rank0,
    build_parallel_groups,
    even_split_sizes,
    gather_forward_split_backward,
    get_sequence_parallel_group,
    group_rank,
    group_size,
    init_distributed,
    set_sequence_parallel_group,
    split_forward_gather_backward,
)

__all__ = [
    "ParallelState",
    "SPContext",
    "all_to_all",
    "average_gradients",
    "broadcast_from_group_rank0",
    "build_parallel_groups",
    "even_split_sizes",
    "gather_forward_split_backward",
    "get_sequence_parallel_group",
    "group_rank",
    "group_size",
    "init_distributed",
    "set_sequence_parallel_group",
    "split_forward_gather_backward",
]
