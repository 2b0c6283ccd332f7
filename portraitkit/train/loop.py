"""LoRA training on Stable Diffusion 1.5 / SDXL, sized for a free Colab T4.

The story of a run (`train`), read top to bottom:
1. check the settings and the run folder (a new run, or --resume from its newest checkpoint) and,
   on a GPU, whether the run fits, before minutes of loading;
2. read the prepared dataset and load the base; freeze it and add LoRA adapters to the UNet's
   attention projections (and optionally to the text encoders), trained in fp32 (`models.lora`);
3. encode every image to latents and every caption to text embeddings once (`cache`), with only
   the VAE and text encoders on the GPU; from then on the loop runs only the UNet (`placement`);
4. the loop, one micro-batch at a time: draw (which photos, which noise, which timesteps:
   `draws`), noise the latents, predict the noise, min-SNR-weighted MSE (on the face and hair
   only with --masked-loss: `objective`; with --output-preservation also the class caption with
   and without the LoRA), backward, 8-bit AdamW step; log, validate (`validate`: renders drawn as
   `sample` draws, their likeness, the held-out photos' loss) and checkpoint (`checkpoints`);
5. save the LoRA in the diffusers format and in the kohya format that AUTOMATIC1111 and ComfyUI read.

What only a run on several processes needs (each process's part of the draws, the gradients
averaged) lives in `parallel` and does nothing for one process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable

from portraitkit.plan import estimate as planner
from portraitkit.core.errors import DiskFull, PortraitkitError
from portraitkit.models import families, lora
from portraitkit.models.conditioning import unet_conditioning
from portraitkit.train import checkpoints, objective, parallel, validate
from portraitkit.train.cache import (batch_inputs, class_examples, encode_examples, load_examples, preservation_inputs,
                                     require_masks, split_holdout)
from portraitkit.train.config import TrainConfig, check_config
from portraitkit.train.fitting import check_training_fits, quantize_transformer, session_defaults
from portraitkit.train.draws import draw
from portraitkit.train.phases import PhaseClock
from portraitkit.train.placement import Placement, release
from portraitkit.train.run_folder import finished, finished_steps, plot_loss, prepare_run_folder, record_in_config, record_phases


def train(config: TrainConfig, on_step: Callable[[dict], None] | None = None) -> Path:
    """Train a LoRA as `config` says and return the run folder.

    `on_step` is called after every optimizer step with that step's log row (notebooks draw a
    live loss curve with it). A run that fails or is interrupted hands the GPU back first
    (`placement.release`), so that a retry in the same notebook finds it empty.
    """
    held = {}  # the run's placement of the models, once there is one
    try:
        return _train(config, on_step, held)
    except DiskFull as error:  # the sentence, with how to go on from the checkpoint that was kept
        release(held.pop("placement", None), error)
        raise DiskFull(f"{error} Training goes on from its last checkpoint with `portraitkit train {config.dataset_dir} "
                       f"--out {config.out_dir} --resume`.") from None
    except BaseException as error:
        release(held.pop("placement", None), error)
        raise


def _train(config: TrainConfig, on_step, held: dict) -> Path:
    import torch
    from accelerate.utils import parse_flag_from_env
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    clock = PhaseClock()
    config = check_config(config)
    # `accelerate launch --cpu` trains on the CPU even where there is a GPU
    gpu = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
    if gpu:  # stop now, with advice, rather than out of memory after minutes of loading
        # Each process on this machine holds its own copy of the models in RAM and on its own GPU.
        checkpointing, estimate = check_training_fits(config, device_index=int(os.environ.get("LOCAL_RANK", "0")),
                                                      processes_here=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        config = session_defaults(config, estimate)
    else:
        checkpointing = config.gradient_checkpointing
        if checkpointing is None:
            checkpointing = planner.cpu_checkpointing(config)

    # Under `accelerate launch --num_processes N` every process trains on its own share of each
    # batch; the main process alone writes the run folder.
    accelerator = fresh_accelerator(config, gpu)
    main = accelerator.is_main_process
    run_dir = Path(config.out_dir)
    if main:
        prepare_run_folder(config, run_dir, accelerator.num_processes)
    accelerator.wait_for_everyone()
    start_step, resume_from = checkpoints.latest_checkpoint(run_dir) or (0, None)
    done = max(start_step, finished_steps(run_dir) or 0)
    if done >= config.steps and finished(run_dir, config.steps, config.validating):
        if main:
            print(f"{run_dir} already finished {done} steps; raise --steps to train further.")
        return run_dir
    device = accelerator.device
    share = (accelerator.process_index, accelerator.num_processes)
    # Frozen weights in half precision on a GPU: SD1.5's UNet goes from 3.4 GB to 1.7 GB.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    with clock("load"):
        examples = load_examples(config.dataset_dir)
        if config.masked_loss:  # before minutes of loading, not after
            require_masks(examples)
        # Photos the LoRA never sees: the validation loss and the likeness are measured on them too.
        examples, held_out = split_holdout(examples, config.holdout)
        if main and held_out:
            record_in_config(run_dir, holdout=[e["file_name"] for e in held_out])
        from portraitkit.models.bases import resolve_base
        family = families.named(resolve_base(config.base).family)
        family.refuse(config)  # what this family does not do yet, before minutes of loading
        if config.validating:  # an unknown style or unreadable token fails now, not at the first validation
            validate.validation_recipe(config, family.name)
        resolution = training_resolution(config, examples)
        pipe, lora_modules = load_for_training(config, weight_dtype, quantize_transformer(config, family.name, gpu))
    if checkpointing:
        lora.denoiser(pipe).enable_gradient_checkpointing()
        if config.train_text_encoder:
            for encoder in lora.text_encoders(pipe):
                # Non-reentrant: transformers 4's default (reentrant) checkpointing passes no gradient
                # to the LoRA inside a layer whose inputs (frozen embeddings) need none.
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # Caching runs only the VAE and the text encoders, so the UNet joins the GPU after them: SDXL's
    # 4.8 GiB UNet never sits beside the VAE encoding 1024 px images.
    placement = held["placement"] = Placement(pipe, device)
    encode_captions = not config.train_text_encoder  # a trained text encoder encodes them every step
    with clock("cache"), placement.on("vae", "text_encoder", "text_encoder_2"):
        classes = class_examples(pipe, placement, config.class_dir, config.class_prompt, config.num_class_images, config.seed,
                                 config.validation_steps or 30, resolution) if config.class_dir else []  # 30: the styles' steps
        cache = encode_examples(pipe, examples, resolution, encode_captions=encode_captions, bare=config.caption_dropout > 0,
                                masks=config.masked_loss, class_prompt=config.class_prompt if config.output_preservation else None)
        held_out_cache = encode_examples(pipe, held_out, resolution, encode_captions=encode_captions) if held_out and main else None
        class_cache = encode_examples(pipe, classes, resolution, encode_captions=encode_captions) if classes else None
    # From here on only the UNet (and the text encoders it trains) run; the VAE waits in RAM.
    placement.keep(*lora_modules)

    trainable = {f"{prefix}.{name}": parameter for prefix, module in lora_modules.items()
                 for name, parameter in module.named_parameters() if parameter.requires_grad}
    param_groups = [{"params": [p for n, p in trainable.items() if n.startswith(("unet.", "transformer."))], "lr": config.lr}]
    if config.train_text_encoder:
        param_groups.append({"params": [p for n, p in trainable.items() if not n.startswith(("unet.", "transformer."))],
                             "lr": config.text_encoder_lr})
    optimizer = make_optimizer(param_groups, config)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps)
    if resume_from is not None:
        state = checkpoints.load_checkpoint(resume_from, trainable, optimizer)
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state.get("scaler") and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        print(f"Resumed from {resume_from.name}.")
    # Mixed precision comes from accelerator.autocast(); the denoiser itself is not wrapped (`parallel`).
    denoiser = lora.denoiser(pipe)  # SD's UNet or FLUX.2's transformer
    # The scheduler is not prepared: accelerate would step it once per process at every optimizer
    # step (warm-up N times too fast, and shifted on a resume with another process count).
    optimizer = accelerator.prepare(optimizer)
    noise_scheduler = objective.training_scheduler(pipe)
    cached = Cached(examples, cache, class_cache)

    validated = set(config.validated_steps())
    log_path = run_dir / "train_log.jsonl"
    clock.start("steps")
    progress = tqdm(total=config.steps, initial=start_step, desc="training LoRA", unit="step",
                    **({} if main else {"disable": True}))  # one bar, the main process's; TQDM_DISABLE still works
    for step in range(start_step + 1, config.steps + 1):
        began = time.perf_counter()
        losses = []
        for micro in range(config.grad_accum):
            with accelerator.accumulate(denoiser):
                # 1. draw: which photos and captions, which noise, which timesteps (seeded by the micro-batch)
                drawn = draw(config, (step - 1) * config.grad_accum + micro, len(examples), cached.class_count,
                             cached.latent_shape, noise_scheduler.config.num_train_timesteps, share)
                # 2. the loss of what was drawn
                loss = micro_batch_loss(config, pipe, cached, drawn, noise_scheduler, resolution, weight_dtype, device,
                                        accelerator.autocast)
                # 3. backward and step (accelerate steps only after the last accumulated micro-batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    parallel.average_gradients(accelerator, trainable.values())
                    accelerator.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    lr_scheduler.step()  # once per optimizer step; not when fp16's loss scaler skipped it
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().item())
        row = {"step": step, "loss": sum(losses) / len(losses), "lr": lr_scheduler.get_last_lr()[0],
               "seconds": round(time.perf_counter() - began, 4)}
        if not main:
            continue
        if held_out_cache is not None and step in validated:
            with clock.pause("steps"), clock("validation"), accelerator.autocast():
                row["validation_loss"] = validate.validation_loss(pipe, held_out_cache, [e["text"] for e in held_out],
                                                                  noise_scheduler, resolution, config.snr_gamma, config.seed, weight_dtype)
        with log_path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(row) + "\n")
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.4f}")
        if on_step is not None:
            on_step(row)
        if step in validated and step < config.steps:  # the last step is validated once the LoRA is saved
            progress.set_description("rendering validation images")  # the bar stands still meanwhile: say why
            with clock.pause("steps"):
                validate.run_validation(pipe, placement, config, examples, resolution, run_dir, step, clock, held_out)
            progress.set_description("training LoRA")
        # the last step too, whatever the interval: a finished run can be continued with more steps
        if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == config.steps):
            progress.set_description("saving a checkpoint")
            with clock.pause("steps"), clock("checkpoints"):
                scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
                checkpoints.save_checkpoint(run_dir, step, trainable, optimizer,
                                            {"lr_scheduler": lr_scheduler.state_dict(), "scaler": scaler}, keep=config.keep_checkpoints)
            with clock.pause("steps"), clock("plots"):
                plot_loss(run_dir)
            progress.set_description("training LoRA")
    progress.close()
    clock.stop("steps")

    if main:
        with clock("save"):
            lora.save(pipe, run_dir, config.rank, config.alpha, config.train_text_encoder)
        if config.validating:
            validate.run_validation(pipe, placement, config, examples, resolution, run_dir, config.steps, clock, held_out)
        with clock("plots"):
            plot_loss(run_dir)
        record_phases(run_dir, clock.seconds)
        record_in_config(run_dir, finished_steps=config.steps)  # last: every final output is written
        if advice := validate.proportions_advice(run_dir, Path(config.dataset_dir)):
            print(advice)
    accelerator.wait_for_everyone()
    return run_dir


# --- the step ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cached:
    """What the loop draws from: the photos' examples and cache, and the class images' cache (prior preservation)."""

    examples: list[dict]
    photos: dict
    classes: dict | None

    @property
    def class_count(self) -> int:
        return len(self.classes["latents"]) if self.classes is not None else 0

    @property
    def latent_shape(self) -> tuple:
        return tuple(self.photos["latents"].shape[1:])


def micro_batch_loss(config: TrainConfig, pipe, cached: Cached, drawn, noise_scheduler, resolution: int, weight_dtype, device,
                     autocast):
    """The loss of one micro-batch, the models run under `autocast`: the drawn photos with their
    captions (bare where caption dropout drew it), the class images riding along for prior
    preservation, the family's step loss on the drawn noise and timesteps (SD: the noise, FLUX.2:
    the velocity; masked with --masked-loss), and output preservation's term."""
    import torch

    examples, cache, class_cache = cached.examples, cached.photos, cached.classes
    captions = [objective.bare_caption(examples[i]["text"]) if drop else examples[i]["text"]
                for i, drop in zip(drawn.picks, drawn.dropped)]
    latents, cond = batch_inputs(pipe, cache, drawn.picks, captions, drawn.dropped, device, autocast)
    mask = cache["masks"][drawn.picks].to(device) if config.masked_loss else None
    if class_cache is not None:  # prior preservation: class images ride along in the same batch
        class_latents, class_cond = batch_inputs(pipe, class_cache, drawn.class_picks, [config.class_prompt] * len(drawn.class_picks),
                                                 [False] * len(drawn.class_picks), device, autocast)
        latents = torch.cat([latents, class_latents])
        cond = {key: torch.cat([cond[key], class_cond[key]]) for key in cond}
        if mask is not None:  # class images keep the whole picture: the prior is all of it
            mask = torch.cat([mask, torch.ones_like(mask)])
    if config.output_preservation:  # the class caption, through the UNet with and without the LoRA
        preserve = preservation_inputs(pipe, cache, drawn.picks, [objective.class_caption(examples[i]["text"], config.class_prompt)
                                                                  for i in drawn.picks], device)
    with autocast():
        per_sample = objective.step_loss(pipe, noise_scheduler, latents, drawn.noise.to(device), drawn.timesteps.to(device), cond,
                                         resolution, config.snr_gamma, weight_dtype, mask, config.background_weight)
        if config.output_preservation:
            n = len(drawn.picks)
            preservation = objective.preservation_loss(
                lora.denoiser(pipe), noise_scheduler, latents[:n], drawn.noise[:n].to(device), drawn.timesteps[:n].to(device),
                *(unet_conditioning(c, resolution, weight_dtype) for c in preserve), config.snr_gamma, weight_dtype)
    if class_cache is None:
        loss = per_sample.mean()
    else:
        instance, prior = per_sample.chunk(2)
        loss = instance.mean() + config.prior_loss_weight * prior.mean()
    if config.output_preservation:
        loss = loss + config.preservation_weight * preservation.mean()
    return loss


# --- set-up -----------------------------------------------------------------------------------


def training_resolution(config: TrainConfig, examples: list[dict]) -> int:
    """The size the run trains at (--resolution, else the base's own), refused when it is above the
    dataset's: every image would be upscaled, and the LoRA would learn the blur."""
    from portraitkit.models.bases import native_resolution, resolve_base

    resolution = config.resolution or native_resolution(resolve_base(config.base).source)
    prepared = min(min(example["image"].size) for example in examples)
    if resolution > prepared:
        raise PortraitkitError(
            f"{config.dataset_dir} was prepared at {prepared} px, below the training resolution {resolution} px; "
            f"prepare the photos at that size (`portraitkit prep PHOTOS --out DATASET --resolution {resolution}`), "
            f"or train at --resolution {prepared}")
    return resolution


def fresh_accelerator(config: TrainConfig, gpu: bool):
    """The run's Accelerator, made afresh: accelerate keeps one state per Python process and refuses
    another precision in it ("restart your runtime"), yet a notebook's second run may well change it
    (--mixed-precision no after NaN images). The process group (`PartialState`) stays: the
    processes are the same ones."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate has no public reset; transformers' TrainingArguments and accelerate's own tests call these.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    # cpu=True without a GPU: processes started by torchrun (`accelerate launch --multi_gpu`) then
    # join over gloo instead of each training alone.
    return Accelerator(mixed_precision=resolved_precision(config, gpu), gradient_accumulation_steps=config.grad_accum, cpu=not gpu)


def resolved_precision(config: TrainConfig, gpu: bool) -> str:
    """The precision --mixed-precision asks for: `auto` is fp16 on a GPU without native bf16 (a T4),
    bf16 where it has it, no (fp32) on a CPU."""
    import torch

    if config.mixed_precision != "auto":
        return config.mixed_precision
    if not gpu:
        return "no"
    try:
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 has no such argument and counts native support only
        native_bf16 = torch.cuda.is_bf16_supported()
    return "bf16" if native_bf16 else "fp16"


def load_for_training(config: TrainConfig, weight_dtype, quantized: bool = False) -> tuple:
    """The base in `weight_dtype` with LoRA layers (fp32, training mode) added, all still in RAM
    (a `quantized` FLUX.2 transformer is already on the GPU: bitsandbytes quantises it there while
    loading): what `train` holds before its first move to the GPU. Returns (pipeline, {name: module that trains})."""
    from accelerate.utils import set_seed

    from portraitkit.models.bases import load_pipeline

    pipe = load_pipeline(config.base, dtype=weight_dtype, vae=config.vae, transformer_nf4=quantized)
    set_seed(config.seed)  # the LoRA's random initialisation
    lora_modules = lora.add_to_pipeline(pipe, config.rank, config.alpha, config.train_text_encoder, use_dora=config.dora,
                                        targets=config.targets)
    for module in lora_modules.values():
        # Training mode: older diffusers and transformers checkpoint only modules in training mode
        # (their dropout is 0, so nothing else changes).
        module.train()
    return pipe, lora_modules


def make_optimizer(param_groups: list[dict], config: TrainConfig):
    import torch

    if config.optimizer == "adamw":
        try:  # torch's fused kernel: one pass over every LoRA tensor instead of a dozen Python-level ops each
            return torch.optim.AdamW(param_groups, weight_decay=1e-2, fused=True)
        except RuntimeError:  # torch before 2.4 fuses on CUDA only
            return torch.optim.AdamW(param_groups, weight_decay=1e-2)
    if config.optimizer != "adamw8bit":
        raise PortraitkitError(f"unknown optimizer '{config.optimizer}': use adamw8bit or adamw")
    try:
        import bitsandbytes as bnb
    except Exception as error:  # ImportError, or a CUDA library mismatch raised at import
        raise PortraitkitError(
            f"8-bit AdamW needs bitsandbytes, which could not be loaded ({type(error).__name__}: {error}). "
            "Install it with `pip install -U bitsandbytes` (then restart the runtime in Colab), "
            "or train with --optimizer adamw, which needs about 6 more bytes per LoRA parameter."
        ) from None
    return bnb.optim.AdamW8bit(param_groups, weight_decay=1e-2)
