"""Every random choice of one micro-batch, drawn from its index alone.

Which photos it sees, which of their captions are dropped to the bare trigger phrase, which noise
and which timesteps: each comes from a generator seeded by (seed, micro-batch index), never from
state carried between steps. So a run killed at step k and resumed from its checkpoint draws
exactly what the uninterrupted run would have drawn, and ends with the same weights.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from portraitkit.train import objective, parallel


@dataclass
class Draw:
    picks: list[int]  # which examples (indices into the dataset)
    dropped: list[bool]  # which of them train on the bare trigger caption
    class_picks: list[int] | None  # prior preservation: which class images
    noise: object  # torch.Tensor (n, C, H, W), n = len(picks) + len(class_picks or [])
    timesteps: object  # torch.Tensor (n,)


@functools.lru_cache(maxsize=64)
def _epoch_order(seed: int, epoch: int, size: int) -> tuple[int, ...]:
    import torch

    return tuple(torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist())


def batch_indices(seed: int, micro_index: int, batch_size: int, size: int) -> list[int]:
    """Which examples micro-batch `micro_index` sees: a fresh shuffle per epoch, no state."""
    out = []
    for flat in range(micro_index * batch_size, (micro_index + 1) * batch_size):
        epoch, position = divmod(flat, size)
        out.append(_epoch_order(seed, epoch, size)[position])
    return out


def draw(config, micro_index: int, examples: int, classes: int, latent_shape: tuple, timesteps: int,
         share: tuple[int, int] = (0, 1)) -> Draw:
    """The draws of micro-batch `micro_index`: `examples` training images and `classes` class images
    to choose from, noise of `latent_shape` (C, H, W), timesteps below `timesteps`.

    With several processes (`share`) everything is drawn for the whole batch of all processes and
    each takes its own part, so N processes at --batch-size B train as one at N x B."""
    import torch

    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + micro_index)
    torch.manual_seed(config.seed * 1_000_003 + micro_index)  # LoRA dropout, if any, stays reproducible
    whole = parallel.whole_batch(config.batch_size, share)
    picks = parallel.own_part(batch_indices(config.seed, micro_index, whole, examples), share)
    dropped = parallel.own_part(objective.dropped_captions(config.seed, micro_index, whole, config.caption_dropout), share)
    class_picks = parallel.own_part(batch_indices(config.seed + 1, micro_index, whole, classes), share) if classes else None

    n = len(picks) + len(class_picks or [])
    noise = torch.randn((parallel.whole_batch(n, share), *latent_shape), generator=generator)
    if config.noise_offset:  # a per-image, per-channel shift: lets the model learn darker and brighter pictures
        noise += config.noise_offset * torch.randn((len(noise), latent_shape[0], 1, 1), generator=generator)
    drawn_timesteps = torch.randint(0, timesteps, (len(noise),), generator=generator)
    return Draw(picks, dropped, class_picks, parallel.own_part(noise, share), parallel.own_part(drawn_timesteps, share))
