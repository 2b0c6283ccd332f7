"""LoRA training on Stable Diffusion 1.5 / SDXL, sized for a free Colab T4.

The story of a run (`train`):
1. check the run folder (a new run, or --resume from its newest checkpoint) and, on a GPU,
   whether the run fits, before minutes of loading;
2. read the prepared dataset and load the base; freeze it and add LoRA adapters to the UNet's
   attention projections (and optionally to the text encoders), trained in fp32 (`lora`);
3. encode every image to latents and every caption to text embeddings once (`examples`), with
   only the VAE and text encoders on the GPU; from then on the loop runs only the UNet
   (`placement` says which models sit on the GPU in each phase);
4. loop: noise the latents at a random timestep, predict the noise, min-SNR-weighted MSE (on the
   face and hair only with --masked-loss; `objective`), 8-bit AdamW step; log, validate
   (`validate`) and checkpoint (`checkpoints`) along the way;
5. save the LoRA in the diffusers format and in the kohya format that AUTOMATIC1111 and ComfyUI read.

Every random draw of step k (which images, which noise, which timesteps, which captions are
dropped) comes from a generator seeded by (seed, k), so a run killed at step k and resumed from
its checkpoint ends with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from portraitkit.train import checkpoints

from portraitkit.models import lora

from portraitkit.train import objective

from portraitkit import plan

from portraitkit.train import validate
from portraitkit.core.errors import PortraitkitError
from portraitkit.train.cache import class_examples, encode_examples, encode_text, load_examples, require_masks
from portraitkit.models.conditioning import unet_conditioning
from portraitkit.core.files import atomic_path, read_jsonl, write_json, write_jsonl
from portraitkit.train.phases import PhaseClock
from portraitkit.train.placement import Placement
from portraitkit.core.settings import check_at_least, check_positive, check_resolution, setting


@dataclass
class TrainConfig:
    """Every setting of a training run; each field's help is also its `portraitkit train` help."""

    dataset_dir: str = setting("prepared dataset: images plus metadata.jsonl with file_name and text")
    out_dir: str = setting("run folder: LoRA, config, log, checkpoints, validation images")
    base: str = setting("base model: sd15, sdxl, tiny-sd, tiny-sdxl, a Hugging Face id or a diffusers folder", "tiny-sd")
    steps: int = setting("optimizer steps; person LoRAs usually need 500-1500 (about 100 per photo)", 1000)
    rank: int = setting("LoRA rank; 16 keeps a face's detail while the file stays ~13 MB for SD1.5", 16)
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
    gradient_checkpointing: bool | None = setting(
        "recompute activations in the backward pass: far less memory, about a third more compute per step; "
        "default: off only where the planner finds the run fits the GPU with room to spare without it, on elsewhere and on a CPU", None)
    snr_gamma: float | None = setting("min-SNR loss weighting gamma (Hang et al. 2023 use 5); None turns it off", 5.0)
    noise_offset: float = setting("noise offset, e.g. 0.05, lets the model learn darker and brighter images", 0.0)
    warmup_steps: int = setting("learning-rate warm-up steps", 0)
    max_grad_norm: float = setting("gradient clipping norm", 1.0)
    class_dir: str | None = setting("prior preservation: folder of class images (missing ones are generated)", None)
    class_prompt: str = setting("caption of the class images", "a photo of a person")
    num_class_images: int = setting("class images to use for prior preservation", 50)
    prior_loss_weight: float = setting("weight of the class-image loss", 1.0)
    masked_loss: bool = setting("count the person's face and hair (prep's masks/) in the loss, not the background", False)
    background_weight: float = setting("with --masked-loss, how much the background counts: 0 not at all, 1 as without a mask", 0.0)
    caption_dropout: float = setting("probability of training an image on its bare trigger caption (a photo of sks person); "
                                     "ai-toolkit uses 0.05", 0.0)
    dora: bool = setting("DoRA (weight-decomposed LoRA, peft's use_dora): a learned magnitude per output beside the "
                         "low-rank direction; a little more memory and time per step", False)
    checkpoint_every: int = setting("save a resumable checkpoint every N steps (0 = never)", 100)
    keep_checkpoints: int = setting("how many recent checkpoints to keep", 3)
    validate: bool = setting("render and score validation images (identity.json, best/); --no-validate trains only", True)
    validate_every: int = setting("render validation images every N steps (0 = only at the end)", 0)
    validation_prompts: list[str] | None = setting("prompts for validation; default: the first two captions", None)
    validation_seeds: tuple[int, ...] = setting("seeds for validation images", (0, 1))
    validation_steps: int = setting("denoising steps per validation image", 25)
    resume: bool = setting("continue from the newest complete checkpoint in out_dir", False)
    vae: str | None = setting("a diffusers VAE folder or hub id replacing the base's, e.g. madebyollin/sdxl-vae-fp16-fix "
                              "(SDXL's own VAE gives NaN/black images in fp16)", None)
    save_precision: str = setting("precision of the saved LoRA files: fp16 (kohya's default, half the size of fp32), bf16 or fp32",
                                  "fp16", choices=("fp32", "fp16", "bf16"))


# Settings that may change when a run is resumed; everything else must match the saved config.
RESUMABLE_CHANGES = {"steps", "resume", "checkpoint_every", "keep_checkpoints", "validate", "validate_every",
                     "validation_prompts", "validation_seeds", "validation_steps", "dataset_dir", "out_dir"}


def train(config: TrainConfig, on_step: Callable[[dict], None] | None = None) -> Path:
    """Train a LoRA as `config` says and return the run folder.

    `on_step` is called after every optimizer step with that step's log row (notebooks draw a
    live loss curve with it).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import parse_flag_from_env
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    clock = PhaseClock()
    config = check_config(config)
    # `accelerate launch --cpu` trains on the CPU even where there is a GPU
    gpu = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
    if gpu:  # stop now, with advice, rather than out of memory after minutes of loading
        # Each process on this machine holds its own copy of the models in RAM and on its own GPU.
        checkpointing = check_training_fits(config, device_index=int(os.environ.get("LOCAL_RANK", "0")),
                                            processes_here=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    else:
        checkpointing = config.gradient_checkpointing
        if checkpointing is None:
            checkpointing = plan.cpu_checkpointing(config)

    # Under `accelerate launch --num_processes N` every process trains on its own share of each
    # batch; the main process alone writes the run folder.
    # cpu=True without a GPU: processes started by torchrun (`accelerate launch --multi_gpu`) then
    # join over gloo instead of each training alone.
    accelerator = Accelerator(mixed_precision=_mixed_precision(config, gpu), gradient_accumulation_steps=config.grad_accum,
                              cpu=not gpu)
    main = accelerator.is_main_process
    run_dir = Path(config.out_dir)
    if main:
        _prepare_run_folder(config, run_dir, accelerator.num_processes)
    accelerator.wait_for_everyone()
    start_step, resume_from = checkpoints.latest_checkpoint(run_dir) or (0, None)
    if start_step >= config.steps and _finished(run_dir, config.steps, config.validate):
        if main:
            print(f"{run_dir} already finished {start_step} steps; raise --steps to train further.")
        return run_dir
    device = accelerator.device
    share = (accelerator.process_index, accelerator.num_processes)
    # Frozen weights in half precision on a GPU: SD1.5's UNet goes from 3.4 GB to 1.7 GB.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    with clock("load"):
        examples = load_examples(config.dataset_dir)
        if config.masked_loss:  # before minutes of loading, not after
            require_masks(examples)
        resolution = training_resolution(config, examples)
        pipe, lora_modules = load_for_training(config, weight_dtype)
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            for encoder in lora.text_encoders(pipe):
                # Non-reentrant: transformers 4's default (reentrant) checkpointing passes no gradient
                # to the LoRA inside a layer whose inputs (frozen embeddings) need none.
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # Caching runs only the VAE and the text encoders, so the UNet joins the GPU after them: SDXL's
    # 4.8 GiB UNet never sits beside the VAE encoding 1024 px images.
    placement = Placement(pipe, device)
    with_text = not config.train_text_encoder
    with clock("cache"), placement.on("vae", "text_encoder", "text_encoder_2"):
        classes = class_examples(pipe, placement, config.class_dir, config.class_prompt, config.num_class_images, config.seed,
                                 config.validation_steps, resolution) if config.class_dir else []
        cache = encode_examples(pipe, examples, resolution, with_text=with_text, bare=config.caption_dropout > 0,
                                masks=config.masked_loss)
        class_cache = encode_examples(pipe, classes, resolution, with_text=with_text) if classes else None
    # From here on only the UNet (and the text encoders it trains) run; the VAE waits in RAM.
    placement.keep(*lora_modules)

    trainable = {f"{prefix}.{name}": parameter for prefix, module in lora_modules.items()
                 for name, parameter in module.named_parameters() if parameter.requires_grad}
    param_groups = [{"params": [p for n, p in trainable.items() if n.startswith("unet.")], "lr": config.lr}]
    if config.train_text_encoder:
        param_groups.append({"params": [p for n, p in trainable.items() if not n.startswith("unet.")], "lr": config.text_encoder_lr})
    optimizer = make_optimizer(param_groups, config)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps)
    if resume_from is not None:
        state = checkpoints.load_checkpoint(resume_from, trainable, optimizer)
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state.get("scaler") and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        print(f"Resumed from {resume_from.name}.")
    # The UNet is not wrapped for DistributedDataParallel: the text encoders, when they train, are
    # called by the pipeline's own encode_prompt, outside any wrapper. Instead the LoRA's gradients,
    # a few MB, are averaged across processes below; mixed precision comes from accelerator.autocast().
    unet = pipe.unet
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    step_fn = functools.partial(
        _micro_step, pipe=pipe, unet=unet, noise_scheduler=noise_scheduler, config=config, cache=cache,
        class_cache=class_cache, examples=examples, resolution=resolution, device=device, dtype=weight_dtype,
        share=share, autocast=accelerator.autocast,
    )
    log_path = run_dir / "train_log.jsonl"
    clock.start("steps")
    progress = tqdm(total=config.steps, initial=start_step, desc="training LoRA", unit="step",
                    **({} if main else {"disable": True}))  # one bar, the main process's; TQDM_DISABLE still works
    for step in range(start_step + 1, config.steps + 1):
        began = time.perf_counter()
        losses = []
        for micro in range(config.grad_accum):
            with accelerator.accumulate(unet):
                loss = step_fn(micro_index=(step - 1) * config.grad_accum + micro)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    _average_gradients(accelerator, trainable.values())
                    accelerator.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().item())
        row = {"step": step, "loss": sum(losses) / len(losses), "lr": lr_scheduler.get_last_lr()[0],
               "seconds": round(time.perf_counter() - began, 4)}
        if not main:
            continue
        with log_path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(row) + "\n")
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.4f}")
        if on_step is not None:
            on_step(row)
        if config.validate and config.validate_every and step % config.validate_every == 0 and step < config.steps:
            progress.set_description("rendering validation images")  # the bar stands still meanwhile: say why
            with clock.pause("steps"):
                validate.run_validation(pipe, placement, config, examples, resolution, run_dir, step, clock)
            progress.set_description("training LoRA")
        if config.checkpoint_every and step % config.checkpoint_every == 0:
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
        if config.validate:
            validate.run_validation(pipe, placement, config, examples, resolution, run_dir, config.steps, clock)
        with clock("plots"):
            plot_loss(run_dir)
        _record_phases(run_dir, clock.seconds)
    accelerator.wait_for_everyone()
    return run_dir


def _record_phases(run_dir: Path, seconds: dict) -> None:
    record = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    record["seconds_by_phase"] = seconds  # this invocation's: a resumed run records its own
    write_json(run_dir / "config.json", record)


def _average_gradients(accelerator, parameters) -> None:
    """Data-parallel training: each process's gradients replaced by their mean over all processes."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    for grad, mean in zip(grads, accelerator.reduce(grads, reduction="mean")):
        grad.copy_(mean)


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
                    "prior_loss_weight": config.prior_loss_weight, "seed": config.seed}, 0)
    check_positive({"lr": config.lr, "text_encoder_lr": config.text_encoder_lr, "alpha": config.alpha,
                    "max_grad_norm": config.max_grad_norm, "snr_gamma": config.snr_gamma})
    check_resolution(config.resolution)
    for name in ("background_weight", "caption_dropout"):
        if not 0 <= getattr(config, name) <= 1:
            raise PortraitkitError(f"--{name.replace('_', '-')} {getattr(config, name)} is not a fraction: choose between 0 and 1")
    check_dataset(config.dataset_dir)
    check_available(config.base)
    absolute = {name: str(Path(value).expanduser().resolve()) for name in ("dataset_dir", "out_dir", "class_dir")
                if (value := getattr(config, name)) is not None}
    return dataclasses.replace(config, **absolute)


def check_training_fits(config, device_index: int = 0, processes_here: int = 1) -> bool:
    """Stop a GPU run that will not fit, before minutes of loading end in an out-of-memory crash,
    and return whether the run uses gradient checkpointing (decided here when it is left to us).

    A planner failure never blocks training: it prints a warning and the run goes on, with
    checkpointing unless the user turned it off. Setting PORTRAITKIT_SKIP_PLAN=1 skips the check
    (the estimate may be wrong for an unusual setup).
    """
    safe_choice = config.gradient_checkpointing is not False
    if os.environ.get("PORTRAITKIT_SKIP_PLAN") == "1":
        return safe_choice
    if config.mixed_precision == "no":  # the planner knows half-precision GPU runs only
        print("portraitkit: memory is estimated for fp16/bf16 runs, not --mixed-precision no; training without a check.")
        return safe_choice
    try:
        estimate = plan.plan_for_training(config, plan.local_cuda_device(device_index, processes_here))
    except PortraitkitError:
        raise
    except Exception as error:  # a bug or an unusual base must not stop a run that may well fit
        print(f"portraitkit: could not estimate memory ({type(error).__name__}: {error}); training anyway.")
        return safe_choice
    if estimate.fits:
        where = f"{estimate.peak_gpu_mem_gb:.1f} GiB of GPU memory, " if estimate.peak_gpu_mem_gb is not None else ""
        chosen = "" if config.gradient_checkpointing is not None else (
            "; gradient checkpointing on, as it would not fit with room to spare without" if estimate.config.gradient_checkpointing
            else "; gradient checkpointing off: it fits with room to spare without, and steps are faster")
        print(f"Estimated peak: {where}{estimate.peak_host_ram_gb:.1f} GiB of RAM; it fits this {estimate.device.name}{chosen}.")
        return estimate.config.gradient_checkpointing
    needs = (f"about {estimate.peak_gpu_mem_gb:.1f} GiB of GPU memory and this {estimate.device.name} has {estimate.device.gpu_memory_gb} GiB"
             if estimate.fits_gpu is False else
             f"about {estimate.peak_host_ram_gb:.1f} GiB of RAM and this machine has {estimate.device.host_ram_gb:.1f} GiB")
    raise PortraitkitError(f"this run would need {needs} (an estimate): {estimate.advice}; "
                           "or set PORTRAITKIT_SKIP_PLAN=1 to try anyway")


# --- the run folder ---------------------------------------------------------------------------


def _finished(run_dir: Path, steps: int, validated: bool = True) -> bool:
    """Every final output is there: a run killed while saving them is finished on --resume."""
    outputs = [run_dir / lora.LORA_FILE, lora.kohya_file(run_dir)]
    if validated:
        outputs.append(run_dir / "validation" / f"step_{steps:06d}.png")
    return all(path.is_file() for path in outputs)


def _prepare_run_folder(config: TrainConfig, run_dir: Path, processes: int = 1) -> tuple[int, Path | None]:
    """Check the folder against --resume, write config.json, return (start step, checkpoint)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.remove_partial_writes(run_dir)
    latest = checkpoints.latest_checkpoint(run_dir)
    saved = run_dir / "config.json"
    if not config.resume:
        if latest is not None or (run_dir / lora.LORA_FILE).exists():
            raise PortraitkitError(f"{run_dir} already holds a training run; pass --resume to continue it, or choose another --out folder")
        (run_dir / "train_log.jsonl").unlink(missing_ok=True)
        write_json(saved, run_config(config, processes))
        return 0, None
    if saved.is_file():
        record = json.loads(saved.read_text())
        previous = record["settings"]
        changed = sorted(k for k, v in dataclasses.asdict(config).items()
                         if k not in RESUMABLE_CHANGES and k in previous and previous[k] != v)
        # Another number of processes may continue a run that sees the same batches: 2 x 1 = 1 x 2.
        if "batch_size" in changed and config.batch_size * processes == previous["batch_size"] * record.get("processes", 1):
            changed.remove("batch_size")
        if changed:
            raise PortraitkitError(f"cannot resume {run_dir}: these settings differ from the saved run: {', '.join(changed)}")
    step, folder = latest if latest is not None else (0, None)
    if folder is None:
        print(f"No complete checkpoint in {run_dir}; starting from step 0.")
    # Log rows after the checkpoint belong to work that is about to be redone.
    log_path = run_dir / "train_log.jsonl"
    if log_path.exists():
        write_jsonl(log_path, [row for row in read_jsonl(log_path) if row["step"] <= step])
    write_json(saved, run_config(config, processes))
    return step, folder


def run_config(config: TrainConfig, processes: int = 1) -> dict:
    """config.json: the settings plus what they resolved to, the number of training processes
    (each sees `batch_size` images per micro-batch) and the software that ran them."""
    import importlib.metadata as metadata

    versions = {}
    for package in ["portraitkit", "torch", "diffusers", "peft", "transformers", "accelerate", "bitsandbytes", "datasets"]:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    from portraitkit.models.bases import resolve_base

    spec = resolve_base(config.base)
    return {"settings": dataclasses.asdict(config), "processes": processes,
            "base": {"name": spec.name, "source": spec.source, "family": spec.family},
            "lora_alpha": config.alpha or config.rank, "versions": versions}


def plot_loss(run_dir: Path) -> Path | None:
    """loss.png: every step's loss and a moving average (single steps are very noisy)."""
    from matplotlib.figure import Figure

    rows = read_jsonl(run_dir / "train_log.jsonl") if (run_dir / "train_log.jsonl").exists() else []
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1]) for i in range(len(losses))]
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.subplots()
    axes.plot(steps, losses, alpha=0.3, label="loss per step")
    axes.plot(steps, smooth, label=f"moving average ({window} steps)")
    axes.set(xlabel="step", ylabel="denoising loss", title="LoRA training loss")
    axes.legend()
    figure.tight_layout()
    with atomic_path(run_dir / "loss.png") as tmp:
        figure.savefig(tmp)
    return run_dir / "loss.png"


# --- model set-up -----------------------------------------------------------------------------


def _mixed_precision(config: TrainConfig, gpu: bool) -> str:
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


def load_for_training(config: TrainConfig, weight_dtype) -> tuple:
    """The base in `weight_dtype` with LoRA layers (fp32, training mode) added, all still in RAM:
    what `train` holds before its first move to the GPU. Returns (pipeline, {name: module that trains})."""
    from accelerate.utils import set_seed

    from portraitkit.models.bases import load_pipeline

    pipe = load_pipeline(config.base, dtype=weight_dtype, vae=config.vae)
    set_seed(config.seed)  # the LoRA's random initialisation
    lora_modules = lora.add_to_pipeline(pipe, config.rank, config.alpha, config.train_text_encoder, use_dora=config.dora)
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


# --- one micro-batch --------------------------------------------------------------------------


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


def _micro_step(*, micro_index, pipe, unet, noise_scheduler, config, cache, class_cache, examples, resolution, device, dtype,
                share=(0, 1), autocast=contextlib.nullcontext):
    """One micro-batch's loss. With N processes (`share` = (this one, N)) the draws are made for the
    whole N-process batch and each process takes its own slice, so N processes at --batch-size B
    train like one at N x B."""
    import torch

    rank, world = share
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + micro_index)
    torch.manual_seed(config.seed * 1_000_003 + micro_index)  # LoRA dropout, if any, stays reproducible
    mine = slice(rank * config.batch_size, (rank + 1) * config.batch_size)
    picks = batch_indices(config.seed, micro_index, config.batch_size * world, len(examples))[mine]
    dropped = objective.dropped_captions(config.seed, micro_index, config.batch_size * world, config.caption_dropout)[mine]
    captions = [objective.bare_caption(examples[i]["text"]) if drop else examples[i]["text"] for i, drop in zip(picks, dropped)]
    latents, cond = _select(pipe, cache, picks, captions, config, device, dropped)
    if class_cache is not None:
        class_picks = batch_indices(config.seed + 1, micro_index, config.batch_size * world, len(class_cache["latents"]))[mine]
        class_latents, class_cond = _select(pipe, class_cache, class_picks, [config.class_prompt] * len(class_picks), config, device)
        latents = torch.cat([latents, class_latents])
        cond = {key: torch.cat([cond[key], class_cond[key]]) for key in cond}

    n = len(latents)  # this process's share; the draws cover every process's, in order
    ours = slice(rank * n, (rank + 1) * n)
    noise = torch.randn((world * n, *latents.shape[1:]), generator=generator)
    if config.noise_offset:
        noise += config.noise_offset * torch.randn((world * n, latents.shape[1], 1, 1), generator=generator)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (world * n,), generator=generator)
    noise, timesteps = noise[ours].to(device), timesteps[ours].to(device)
    mask = cache["masks"][picks].to(device) if config.masked_loss else None
    if mask is not None and class_cache is not None:  # class images keep the whole picture: the prior is all of it
        mask = torch.cat([mask, torch.ones_like(mask)])
    with autocast():
        per_sample = objective.loss_of_draw(unet, noise_scheduler, latents, noise, timesteps, unet_conditioning(cond, resolution, dtype),
                                  config.snr_gamma, dtype, mask, config.background_weight)
    if class_cache is None:
        return per_sample.mean()
    instance, prior = per_sample.chunk(2)
    return instance.mean() + config.prior_loss_weight * prior.mean()


def _select(pipe, cache, picks, captions, config, device, dropped=None):
    """The micro-batch's latents and conditioning: cached text (a dropped caption's bare trigger
    phrase was cached beside it), SDXL's size ids, or, when the text encoder trains, the captions
    encoded now, with gradients."""
    import torch

    dropped = dropped or [False] * len(picks)
    latents = cache["latents"][picks].to(device)
    cond = {}
    for key in cache:
        if key in ("latents", "masks") or key.startswith("bare_"):
            continue
        cond[key] = torch.stack([cache[f"bare_{key}" if drop and f"bare_{key}" in cache else key][i]
                                 for i, drop in zip(picks, dropped)]).to(device)
    if "embeds" not in cache:  # the text encoder trains: encode with gradients
        cond.update(encode_text(pipe, captions, device))
    return latents, cond
