"""What only a data-parallel run needs (`accelerate launch --num_processes N`): each process takes
its own part of draws made for all of them, and the LoRA's gradients are averaged across the
processes. With one process both are the identity, and are skipped."""

from __future__ import annotations


def whole_batch(per_process: int, share: tuple[int, int]) -> int:
    """How many items the draws cover: every process's, in order."""
    return per_process * share[1]


def own_part(items, share: tuple[int, int]):
    """This process's part of `items` drawn for all processes (a list or a tensor)."""
    rank, world = share
    if world == 1:
        return items
    size = len(items) // world
    return items[rank * size: (rank + 1) * size]


def average_gradients(accelerator, parameters) -> None:
    """Each process's gradients replaced by their mean over all processes. The UNet is not wrapped
    in DistributedDataParallel (the pipeline's own encode_prompt calls the text encoders outside
    any wrapper); averaging the LoRA's gradients, a few MB, does the same job."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    for grad, mean in zip(grads, accelerator.reduce(grads, reduction="mean")):
        grad.copy_(mean)
