"""Every setting of a training run (`TrainConfig`, one field = one `portraitkit train` flag with
its help) and `check_config`, which finds every mistake in them before a folder is written or a
model loaded."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import check_writable
from portraitkit.core.settings import check_at_least, check_positive, check_resolution, setting
from portraitkit.models.bases import PRESETS, TINY_PRESETS


@dataclass
class TrainConfig:
    """Every setting of a training run; each field's help is also its `portraitkit train` help."""

    dataset_dir: str = setting("prepared dataset: images plus metadata.jsonl with file_name and text")
    out_dir: str = setting("run folder: LoRA, config, log, checkpoints, validation images")
    base: str = setting(f"base model: {', '.join(PRESETS)}, a Hugging Face id or a diffusers folder; {', '.join(TINY_PRESETS)} "
                        "are offline toys for a CPU whose images are noise", "sd15")
    steps: int = setting("optimizer steps; person LoRAs usually need 500-1500 (about 100 per photo)", 1000)
    rank: int = setting("LoRA rank, 1-256; 16 keeps a face's detail while the file stays ~6.4 MB for SD1.5 (fp16; file, "
                        "memory and time grow with the rank; person LoRAs use 4-32)", 16)
    alpha: float | None = setting("LoRA alpha; default = rank, so the LoRA scale is 1 whatever the rank", None)
    lr: float = setting("learning rate for the UNet LoRA (1e-4 is the usual person-LoRA rate)", 1e-4)
    text_encoder_lr: float = setting("learning rate for text-encoder LoRA, lower as it overfits faster", 5e-5)
    train_text_encoder: bool = setting("also train LoRA on the text encoder(s): more likeness, more memory", False)
    resolution: int | None = setting("training size in pixels; default: the base's own (512 SD1.5, 1024 SDXL)", None)
    batch_size: int = setting("images per micro-batch; 1 fits a T4 for SDXL", 1)
    grad_accum: int = setting("micro-batches per optimizer step (a larger effective batch without memory)", 1)
    seed: int = setting("seed for the LoRA init and every random draw of the run", 0)
    optimizer: str = setting("adamw8bit (bitsandbytes, 2 bytes of state per parameter) or adamw (8 bytes)", "adamw8bit",
                           choices=("adamw8bit", "adamw"))
    mixed_precision: str = setting("auto (fp16 on a T4, bf16 where supported, fp32 on CPU), no, fp16 or bf16", "auto",
                                 choices=("auto", "no", "fp16", "bf16"))
    quantize: str = setting("FLUX.2 bases on a GPU: the frozen transformer in fp16 (none), in 4-bit NF4 (nf4, needs bitsandbytes), "
                            "or auto: fp16 where the planner finds it fits the GPU and the RAM, else NF4 (a free T4)", "auto",
                            choices=("auto", "none", "nf4"))
    gradient_checkpointing: bool | None = setting(
        "recompute activations in the backward pass: far less memory, about a third more compute per step; "
        "default: off only where the planner finds the run fits the GPU with room to spare without it, on elsewhere and on a CPU", None)
    snr_gamma: float | None = setting("min-SNR loss weighting gamma (Hang et al. 2023 use 5); None turns it off", 5.0)
    noise_offset: float = setting("noise offset, e.g. 0.05, lets the model learn darker and brighter images", 0.0)
    warmup_steps: int = setting("learning-rate warm-up steps", 0)
    max_grad_norm: float = setting("gradient clipping norm", 1.0)
    class_dir: str | None = setting("prior preservation: folder of class images (missing ones are generated)", None)
    class_prompt: str = setting("caption of the class images; with --output-preservation, what replaces the trigger phrase",
                                "a photo of a person")
    num_class_images: int = setting("class images to use for prior preservation", 50)
    prior_loss_weight: float = setting("weight of the class-image loss", 1.0)
    masked_loss: bool = setting("count the person's face and hair (prep's masks/) in the loss, not the background", False)
    background_weight: float = setting("with --masked-loss, how much the background counts: 0 not at all, 1 as without a mask", 0.0)
    caption_dropout: float = setting("probability of training an image on its bare trigger caption (a photo of sks person); "
                                     "ai-toolkit uses 0.05", 0.0)
    save_precision: str = setting("precision of the saved LoRA files: fp16 (kohya's default, half the size of fp32), bf16 or fp32",
                                  "fp16", choices=("fp32", "fp16", "bf16"))
    targets: str = setting("FLUX.2 [klein]: the layers that learn: attention (the attention projections: the smallest file) or "
                           "attention+mlp (also the double blocks' feed-forward layers, as ai-toolkit adapts: more file, "
                           "memory and time, see `portraitkit plan --targets`)", "attention", choices=("attention", "attention+mlp"))
    dora: bool = setting("DoRA (weight-decomposed LoRA, peft's use_dora): a learned magnitude per output beside the "
                         "low-rank direction; a little more memory and time per step", False)
    checkpoint_every: int = setting("save a resumable checkpoint every N steps (0 = never)", 100)
    keep_checkpoints: int = setting("how many recent checkpoints to keep", 3)
    validate: bool = setting("render and score validation images (identity.json, best/); --no-validate trains only", True)
    validate_every: int | None = setting("render validation images every N steps, and at the end (0 = never, as "
                                         "--no-validate); default: every tenth of the run, at least 50 steps apart", None)
    validation_styles: tuple[str, ...] = setting("sample's styles the validation draws, with sample's recipe (DPM++ 2M Karras, "
                                                 "the style's guidance and negative prompt)", ("studio", "outdoor"))
    validation_seeds: tuple[int, ...] = setting("seeds for validation images: styles x seeds renders per validated step", (0, 1, 2, 3))
    validation_steps: int | None = setting("denoising steps per validation image; default: the style's own (30), as sample draws", None)
    holdout: int = setting("keep N accepted photos out of training (the most varied ones): the validation loss and the likeness "
                           "are measured on photos the LoRA never saw", 0)
    output_preservation: bool = setting("output preservation: each step also pulls the LoRA's prediction for the class caption "
                                        "(the trigger phrase replaced by --class-prompt) toward the base model's, so the person "
                                        "does not leak into every face; one more UNet pass per step, no class images", False)
    preservation_weight: float = setting("weight of the output-preservation loss", 1.0)
    resume: bool = setting("continue from the newest complete checkpoint in out_dir", False)
    vae: str | None = setting("a diffusers VAE folder or hub id replacing the base's, e.g. madebyollin/sdxl-vae-fp16-fix "
                              "(SDXL's own VAE gives NaN/black images in fp16)", None)

    @property
    def validating(self) -> bool:
        """Whether the run validates at all (not with --no-validate, nor with --validate-every 0)."""
        return self.validate and self.validate_every != 0

    def validated_steps(self) -> list[int]:
        """The steps whose LoRA is validated: every --validate-every steps (default: every tenth of
        the run, at least MIN_STEPS_APART apart, since each validation costs as many renders as a
        short run's training), and always the last; none with --no-validate or --validate-every 0
        (0 means never, as --checkpoint-every 0 does)."""
        if not self.validating:
            return []
        gap = self.validate_every
        if gap is None:
            gap = max(MIN_STEPS_APART, math.ceil(self.steps / VALIDATIONS_PER_RUN))
        return sorted({*range(gap, self.steps, gap), self.steps})


VALIDATIONS_PER_RUN = 10
MIN_STEPS_APART = 50

# Person LoRAs use ranks 4-32; at 256 a LoRA file already holds 51M parameters for SD1.5 and 372M
# for SDXL (~0.2 and ~1.5 GB in fp32: FACTS.md's 797,184 and 5,806,080 per rank 4). Above that a
# typo (100000) would fill the disk and RAM before anyone noticed.
MAX_RANK = 256

# Settings that may change when a run is resumed; everything else must match the saved config.
RESUMABLE_CHANGES = {"steps", "resume", "checkpoint_every", "keep_checkpoints", "validate", "validate_every",
                     "validation_styles", "validation_seeds", "validation_steps", "dataset_dir", "out_dir"}


def check_config(config: TrainConfig) -> TrainConfig:
    """Every mistake a user can make in the settings, the base or the dataset, found before a
    folder is written or a model loaded; returns the config with its paths made absolute, so the
    run's config.json leads `sample` to the dataset from any working folder."""
    from portraitkit.models.bases import check_available
    from portraitkit.train.cache import check_dataset

    check_at_least({"steps": config.steps, "rank": config.rank, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
                    "keep_checkpoints": config.keep_checkpoints, "num_class_images": config.num_class_images,
                    "validation_steps": config.validation_steps}, 1)
    check_at_least({"warmup_steps": config.warmup_steps, "checkpoint_every": config.checkpoint_every,
                    "validate_every": config.validate_every, "noise_offset": config.noise_offset,
                    "prior_loss_weight": config.prior_loss_weight, "seed": config.seed, "holdout": config.holdout,
                    "preservation_weight": config.preservation_weight}, 0)
    check_positive({"lr": config.lr, "text_encoder_lr": config.text_encoder_lr, "alpha": config.alpha,
                    "max_grad_norm": config.max_grad_norm, "snr_gamma": config.snr_gamma})
    check_resolution(config.resolution)
    if config.rank > MAX_RANK:
        raise PortraitkitError(f"--rank {config.rank} is above {MAX_RANK}: person LoRAs use 4-32, and the file, memory and time "
                               f"grow with the rank (at {MAX_RANK} an SDXL LoRA file is already ~1.5 GB)")
    for name in ("background_weight", "caption_dropout"):
        if not 0 <= getattr(config, name) <= 1:
            raise PortraitkitError(f"--{name.replace('_', '-')} {getattr(config, name)} is not a fraction: choose between 0 and 1")
    check_writable(config.out_dir)
    if config.class_dir is not None:  # missing class images are generated into it
        check_writable(config.class_dir, "--class-dir")
    check_dataset(config.dataset_dir)
    check_available(config.base)
    absolute = {name: str(Path(value).expanduser().resolve()) for name in ("dataset_dir", "out_dir", "class_dir")
                if (value := getattr(config, name)) is not None}
    return dataclasses.replace(config, **absolute)
