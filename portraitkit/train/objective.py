"""What one training step optimises: which pixels of the prediction count, and on which caption.

- **Masked loss** (`train --masked-loss`): the denoising error is weighted per latent pixel by the
  person's face-and-hair mask (`prep.masks`), so the LoRA learns the face and not the kitchen
  behind it; the background counts `background_weight` (0: not at all). The VAE turns each 8 x 8
  block of pixels into one latent pixel and its receptive field reaches further, so the mask is
  brought to latent resolution by "any face pixel in the block" and then dilated by one latent
  pixel: the face's edge is never cut off. kohya sd-scripts, OneTrainer and SimpleTuner offer
  the same lever.
- **Caption dropout** (`train --caption-dropout P`): with probability P a step's image is trained
  on its bare trigger caption ("a photo of sks person") instead of its full caption, so the token
  alone also carries the person (ai-toolkit's default is 0.05).

- **Output preservation** (`train --output-preservation`): the class caption (the trigger phrase
  replaced by the class prompt: "a photo of a person, warm light") goes through the UNet on the
  same noisy latents with the LoRA and without it, and the distance between the two predictions
  is added to the loss (`preservation_loss`): the LoRA learns the person where the caption names
  them and leaves every other person as the base model draws them. kohya sd-scripts ("differential
  output preservation"), ai-toolkit and OneTrainer ("prior-model preservation") do the same; unlike
  DreamBooth's prior preservation it needs no class images, only one more forward pass per step.

Both sit in `step_loss`, the loss of one draw of noise and timesteps: the family says what is
predicted and against what (`Family.predict`: Stable Diffusion the noise, FLUX.2 [klein] the flow's
velocity) and how the noise levels weigh (min-SNR for SD, Hang et al., ICCV 2023; none for flow
matching); the same masked loss scores both. `loss_of_draw` is Stable Diffusion's step as plain
functions of tensors, which notebook 04 checks its by-hand step against.
"""

from __future__ import annotations

import contextlib

from portraitkit.models import families
# Stable Diffusion's prediction and min-SNR weights, re-exported: notebook 04 and the tests read them here
from portraitkit.models.families.sd import min_snr_weights as snr_weights, noise_prediction  # noqa: F401

# Every caption prep writes starts with the trigger phrase, then ", " and the measured words.
CAPTION_SEPARATOR = ", "
DROPOUT_SALT = 7_919  # the dropout draw has its own generator: runs without dropout draw as before


def latent_mask(masks, size: int, dilation: int = 1):
    """Pixel masks (N, 1, H, W) in [0, 1] at latent resolution `size`: a latent pixel counts as
    the person when any pixel of its block does, then the mask grows by `dilation` latent pixels."""
    import torch.nn.functional as F

    small = F.adaptive_max_pool2d(masks.float(), size)
    if dilation:
        small = F.max_pool2d(small, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    return small


def masked_loss(prediction, target, mask=None, background_weight: float = 0.0):
    """The denoising MSE of each sample (shape (N,)), weighted per latent pixel by `mask`
    ((N, 1, h, w) at the latents' resolution, e.g. from `latent_mask`); None: the plain MSE.

    Each sample's weighted error is divided by its total weight, so a small face and a large one
    train at the same strength and the loss keeps the plain MSE's scale (the learning rate means
    the same with and without a mask). With `background_weight` 0 the prediction outside the
    mask has no effect at all, on the loss or on its gradient.
    """
    error = (prediction.float() - target.float()).pow(2)
    if mask is None:
        return error.mean(dim=(1, 2, 3))
    weights = background_weight + (1.0 - background_weight) * mask.to(error.device, error.dtype)
    weights = weights.expand_as(error)
    return (error * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp(min=1e-8)


def dropped_captions(seed: int, micro_index: int, count: int, probability: float) -> list[bool]:
    """Which of the `count` images of micro-batch `micro_index` train on the bare caption: each
    with `probability`, drawn from a generator seeded by (seed, micro_index) like every other
    draw of the step, so a resumed run drops the same captions."""
    if probability <= 0:
        return [False] * count
    import torch

    generator = torch.Generator().manual_seed((seed * 1_000_003 + micro_index) * DROPOUT_SALT % 2**63)
    return (torch.rand(count, generator=generator) < probability).tolist()


def bare_caption(caption: str) -> str:
    """The trigger phrase a caption begins with: "a photo of sks person, warm light" -> "a photo of sks person"."""
    return caption.split(CAPTION_SEPARATOR, 1)[0].strip()


def class_caption(caption: str, class_prompt: str) -> str:
    """The caption with its trigger phrase replaced by the class prompt: "a photo of sks person,
    warm light" -> "a photo of a person, warm light" (output preservation's caption)."""
    parts = caption.split(CAPTION_SEPARATOR, 1)
    return CAPTION_SEPARATOR.join([class_prompt, *parts[1:]])


@contextlib.contextmanager
def adapters_off(*modules):
    """The base model inside the block: every peft adapter layer in `modules` disabled, and enabled
    again after it. This is what diffusers' `unet.disable_adapters()` / `enable_adapters()` do
    (they are methods, not a context manager), here for the text encoders too, whose adapters
    peft injected directly. Enabling makes the adapters trainable again, as they were."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [layer for module in modules for layer in module.modules() if isinstance(layer, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def preservation_loss(unet, noise_scheduler, latents, noise, timesteps, conditioning: dict, base_conditioning: dict,
                      snr_gamma: float | None, dtype=None):
    """Output preservation, per sample: the class caption's prediction with the LoRA against the
    base model's on the same noisy latents (the base pass first, without gradients, its adapters
    off), by mean squared error over the whole picture (no mask: the prior is all of it), min-SNR
    weighted like the training loss so the two keep their balance at every timestep.
    `base_conditioning` is the class caption encoded without the LoRA (it differs from
    `conditioning` only when the text encoders train)."""
    import torch

    noisy = noise_scheduler.add_noise(latents, noise, timesteps).to(dtype or latents.dtype)
    with torch.no_grad(), adapters_off(unet):
        base = unet(noisy, timesteps, **base_conditioning).sample.float()
    prediction = unet(noisy, timesteps, **conditioning).sample.float()
    return masked_loss(prediction, base) * snr_weights(noise_scheduler, timesteps, snr_gamma)


def loss_of_draw(unet, noise_scheduler, latents, noise, timesteps, conditioning: dict, snr_gamma: float | None, dtype=None,
                 mask=None, background_weight: float = 0.0):
    """The training loss of one draw, per sample: what every training step minimises.

    Noise the clean latents to step t (x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, a_t the
    scheduler's `alphas_cumprod[t]`), let the UNet predict from x_t, t and the caption's
    `conditioning`, and score the prediction against the noise (or, for v-prediction bases, the
    velocity sqrt(a_t) eps - sqrt(1 - a_t) x_0) by mean squared error, min-SNR weighted; with a
    `mask` (latent resolution) the error counts the person, the background by `background_weight`
    (`objective.masked_loss`). Notebook 04 does the same by hand and checks it equals this.
    """
    prediction, target = noise_prediction(unet, noise_scheduler, latents, noise, timesteps, conditioning, dtype)
    return masked_loss(prediction, target, mask, background_weight) * snr_weights(noise_scheduler, timesteps, snr_gamma)


def training_scheduler(pipe):
    """The noise schedule a run draws its timesteps from: SD's DDPM schedule, or FLUX.2's flow matching."""
    return families.of(pipe).training_scheduler(pipe)


def step_loss(pipe, noise_scheduler, latents, noise, timesteps, cond: dict, resolution: int, snr_gamma: float | None,
              dtype=None, mask=None, background_weight: float = 0.0):
    """The per-sample loss of one draw for the pipeline's family; `timesteps` are the draw's
    integers below the schedule's length (`draws.draw`): the family's prediction and target
    (`Family.predict`), scored by the masked MSE and weighted by the family's noise-level weights;
    the family's guard then stops a run whose loss is no longer finite (FLUX.2 in fp16)."""
    family = families.of(pipe)
    prediction, target = family.predict(pipe, noise_scheduler, latents, noise, timesteps, cond, resolution, dtype)
    loss = masked_loss(prediction, target, mask, background_weight) * family.loss_weights(noise_scheduler, timesteps, snr_gamma)
    family.check_loss(loss)
    return loss
