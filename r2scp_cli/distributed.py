"""Training under ``torchrun --nproc-per-node N``: the process group, ranks, shares of a batch, reductions.

A plain call is one process (a world of one) and every helper here is then the identity: the whole
batch, sums unchanged, the model unwrapped. Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK set),
:func:`training_stage` joins the process group (gloo on CPU, nccl with ``--device cuda``, each process
on the GPU of its LOCAL_RANK) around a stage, and the loops use the helpers below:

- every rank draws the same epoch order and the same per-sample random choices (one seed) for the
  *global* batch, and :func:`batch_share` gives each its contiguous slice, so N processes see the
  samples a single process would see, with the same simulated missing modalities;
- :func:`wrap` puts the model in DistributedDataParallel, which averages the ranks' gradients;
- :func:`all_reduce_sum` adds the ranks' counts (losses, correct answers), so every rank takes the
  same early-stopping decision;
- rank 0 alone writes artifacts and prints (:func:`on_main`, and a silent console elsewhere).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from .console import console
from .errors import UserError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched() -> bool:
    """True in a process started by torchrun."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def describe() -> dict:
    """What a run records in its meta: how many processes trained it, over which backend."""
    return {"world_size": world_size(), "backend": dist.get_backend() if dist.is_initialized() else None}


# --------------------------------------------------------------------------- the process group


def training_stage(stage: Callable) -> Callable:
    """Run ``stage(config, ...)`` as one process of torchrun's group when launched by torchrun with
    more than one process; otherwise (or inside a group already joined) call it as it is.

    ``config.batch_size`` is the global batch: it must split evenly over the processes (checked
    before anything is written). Ranks other than 0 print nothing from here on; rank 0 reports."""

    @functools.wraps(stage)
    def wrapper(config, *args, **kwargs):
        if not launched() or dist.is_initialized():
            return stage(config, *args, **kwargs)
        world, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        if world == 1:
            return stage(config, *args, **kwargs)
        if int(os.environ["RANK"]) != 0:
            console.quiet = True
        check_global_batch(config.batch_size, world)
        backend = "gloo"
        if config.device.startswith("cuda"):
            if config.device != "cuda":
                raise UserError(f"--device {config.device}: under torchrun use --device cuda "
                                f"(each process takes the GPU of its LOCAL_RANK)")  # fmt: skip
            if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
                raise UserError(f"--device cuda: process {local_rank} of this node has no GPU "
                                f"({torch.cuda.device_count()} visible)")  # fmt: skip
            torch.cuda.set_device(local_rank)  # "cuda" now means this process's GPU
            backend = "nccl"
        dist.init_process_group(backend)
        try:
            result = stage(config, *args, **kwargs)
            dist.barrier()  # rank 0 has written the meta before any process leaves
            return result
        finally:
            dist.destroy_process_group()

    return wrapper


def check_global_batch(batch_size: int, world: int) -> None:
    if batch_size % world:
        lower, upper = max(world, batch_size - batch_size % world), batch_size + world - batch_size % world
        raise UserError(f"--batch-size {batch_size} is the global batch and must split evenly over the {world} "
                        f"processes (each takes batch_size / {world}): use a multiple of {world}, "
                        f"e.g. {lower} or {upper}")  # fmt: skip


def wrap(model: torch.nn.Module, find_unused_parameters: bool) -> torch.nn.Module:
    """The model in DistributedDataParallel (gradients averaged over the ranks), or itself alone.
    The wrap copies rank 0's parameters and buffers to every rank."""
    if world_size() == 1:
        return model
    device_ids = [torch.cuda.current_device()] if dist.get_backend() == "nccl" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                     find_unused_parameters=find_unused_parameters)  # fmt: skip


# --------------------------------------------------------------------------- shares and reductions


def share(n: int) -> slice:
    """This rank's contiguous share of n rows (the ranks' shares are disjoint and cover the n rows)."""
    r, world = rank(), world_size()
    return slice(r * n // world, (r + 1) * n // world)


def batch_share(n: int) -> tuple[slice, float]:
    """This rank's rows of a global batch of n rows, and their fraction of the batch.

    DDP averages the ranks' gradients, so a rank scales its mean loss by ``fraction * world_size``
    (1 when the batch splits evenly): the average is then the global batch's mean, as in one process.
    A rank left without rows (a last batch smaller than the world) takes one row with fraction 0, so
    that it still joins the gradient all-reduce and changes nothing."""
    rows = share(n)
    if rows.stop == rows.start:
        return slice(0, 1), 0.0
    return rows, (rows.stop - rows.start) / n


def _reduction_device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def all_reduce_sum(values: list[float]) -> list[float]:
    """The sums over the ranks of ``values`` (float64), the same on every rank."""
    if world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_reduction_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather(value: Any) -> list:
    """Every rank's ``value`` (a picklable object), in rank order, on every rank."""
    if world_size() == 1:
        return [value]
    values: list = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def on_main(fn: Callable, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` run by rank 0 alone (it may write), its result (or its error) handed to
    every rank."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    message: list = [None]
    if is_main():
        try:
            message = [(True, fn(*args, **kwargs))]
        except Exception as error:
            message = [(False, error)]
    dist.broadcast_object_list(message, src=0)
    ok, value = message[0]
    if not ok:
        raise value
    return value
