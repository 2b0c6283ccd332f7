"""LoRA training on Stable Diffusion 1.5 / SDXL, sized for a free Colab T4.

The story of a run (`train`):
1. read the prepared dataset (an `imagefolder` with captions) and load the base model;
2. freeze the base, put LoRA adapters on the UNet's attention projections (and optionally on
   the text encoders) and keep only those in fp32;
3. encode every image to latents and every caption to text embeddings once, then move the VAE
   and text encoders off the GPU: the loop below only ever runs the UNet;
4. loop: noise the latents at a random timestep, predict the noise, min-SNR-weighted MSE,
   8-bit AdamW step; log, validate and checkpoint along the way;
5. save the LoRA in the diffusers format and in the kohya format that AUTOMATIC1111 and ComfyUI read.

Every random draw of step k (which images, which noise, which timesteps) comes from a generator
seeded by (seed, k), so a run killed at step k and resumed from its checkpoint ends with the same
weights as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from portraitkit import checkpoints
from portraitkit.errors import PortraitkitError
from portraitkit.files import atomic_path, read_jsonl, save_image, write_json, write_jsonl
from portraitkit.settings import setting

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


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
    checkpoint_every: int = setting("save a resumable checkpoint every N steps (0 = never)", 100)
    keep_checkpoints: int = setting("how many recent checkpoints to keep", 3)
    validate_every: int = setting("render validation images every N steps (0 = only at the end)", 0)
    validation_prompts: list[str] | None = setting("prompts for validation; default: the first two captions", None)
    validation_seeds: tuple[int, ...] = setting("seeds for validation images", (0, 1))
    validation_steps: int = setting("denoising steps per validation image", 25)
    resume: bool = setting("continue from the newest complete checkpoint in out_dir", False)


# Settings that may change when a run is resumed; everything else must match the saved config.
RESUMABLE_CHANGES = {"steps", "resume", "checkpoint_every", "keep_checkpoints", "validate_every",
                     "validation_prompts", "validation_seeds", "validation_steps", "dataset_dir", "out_dir"}


def train(config: TrainConfig, on_step: Callable[[dict], None] | None = None) -> Path:
    """Train a LoRA as `config` says and return the run folder.

    `on_step` is called after every optimizer step with that step's log row (notebooks draw a
    live loss curve with it).
    """
    import torch
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    if config.keep_checkpoints < 1:
        raise PortraitkitError("--keep-checkpoints must be at least 1 (--checkpoint-every 0 writes no checkpoints)")
    run_dir = Path(config.out_dir)
    start_step, resume_from = _prepare_run_folder(config, run_dir)
    if start_step >= config.steps and _finished(run_dir, config.steps):
        print(f"{run_dir} already finished {start_step} steps; raise --steps to train further.")
        return run_dir
    checkpointing = config.gradient_checkpointing is not False
    if torch.cuda.is_available():  # stop now, with advice, rather than out of memory after minutes of loading
        from portraitkit.plan import check_training_fits

        checkpointing = check_training_fits(config)

    accelerator = Accelerator(mixed_precision=_mixed_precision(config), gradient_accumulation_steps=config.grad_accum)
    device = accelerator.device
    # Frozen weights in half precision on a GPU: SD1.5's UNet goes from 3.4 GB to 1.7 GB.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    examples = load_examples(config.dataset_dir)
    pipe, lora_modules = load_for_training(config, weight_dtype)
    resolution = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            for encoder in _text_encoders(pipe):
                encoder.gradient_checkpointing_enable()

    # Caching runs only the VAE and the text encoders, so the UNet joins the GPU after them: SDXL's
    # 4.8 GiB UNet never sits beside the VAE encoding 1024 px images.
    _move(pipe.vae, *_text_encoders(pipe), to=device)
    class_examples = _class_examples(config, pipe, resolution) if config.class_dir else []
    cache = encode_examples(pipe, examples, resolution, with_text=not config.train_text_encoder)
    class_cache = encode_examples(pipe, class_examples, resolution, with_text=not config.train_text_encoder) if class_examples else None
    # Only the UNet (and trained text encoders) run from here on; the VAE waits on the CPU.
    _move(pipe.vae, *([] if config.train_text_encoder else _text_encoders(pipe)), to="cpu")
    pipe.unet.to(device)

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
    unet = accelerator.prepare(pipe.unet)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)

    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    step_fn = functools.partial(
        _micro_step, pipe=pipe, unet=unet, noise_scheduler=noise_scheduler, config=config, cache=cache,
        class_cache=class_cache, examples=examples, resolution=resolution, device=device, dtype=weight_dtype,
    )
    log_path = run_dir / "train_log.jsonl"
    progress = tqdm(total=config.steps, initial=start_step, desc="training LoRA", unit="step")
    for step in range(start_step + 1, config.steps + 1):
        began = time.perf_counter()
        losses = []
        for micro in range(config.grad_accum):
            with accelerator.accumulate(unet):
                loss = step_fn(micro_index=(step - 1) * config.grad_accum + micro)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().item())
        row = {"step": step, "loss": sum(losses) / len(losses), "lr": lr_scheduler.get_last_lr()[0],
               "seconds": round(time.perf_counter() - began, 4)}
        with log_path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(row) + "\n")
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.4f}")
        if on_step is not None:
            on_step(row)
        if config.validate_every and step % config.validate_every == 0 and step < config.steps:
            run_validation(pipe, config, examples, resolution, run_dir, step)
        if config.checkpoint_every and step % config.checkpoint_every == 0:
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            checkpoints.save_checkpoint(run_dir, step, trainable, optimizer,
                                        {"lr_scheduler": lr_scheduler.state_dict(), "scaler": scaler}, keep=config.keep_checkpoints)
            plot_loss(run_dir)
    progress.close()

    save_lora(pipe, config, run_dir)
    run_validation(pipe, config, examples, resolution, run_dir, config.steps)
    plot_loss(run_dir)
    return run_dir


# --- the run folder ---------------------------------------------------------------------------


def _finished(run_dir: Path, steps: int) -> bool:
    """Every final output is there: a run killed while saving them is finished on --resume."""
    return all(path.is_file() for path in (run_dir / LORA_FILE, run_dir / KOHYA_FILE,
                                            run_dir / "validation" / f"step_{steps:06d}.png"))


def _prepare_run_folder(config: TrainConfig, run_dir: Path) -> tuple[int, Path | None]:
    """Check the folder against --resume, write config.json, return (start step, checkpoint)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.remove_partial_writes(run_dir)
    latest = checkpoints.latest_checkpoint(run_dir)
    saved = run_dir / "config.json"
    if not config.resume:
        if latest is not None or (run_dir / LORA_FILE).exists():
            raise PortraitkitError(f"{run_dir} already holds a training run; pass --resume to continue it, or choose another --out folder")
        (run_dir / "train_log.jsonl").unlink(missing_ok=True)
        write_json(saved, run_config(config))
        return 0, None
    if saved.is_file():
        previous = json.loads(saved.read_text())["settings"]
        changed = sorted(k for k, v in dataclasses.asdict(config).items()
                         if k not in RESUMABLE_CHANGES and k in previous and previous[k] != v)
        if changed:
            raise PortraitkitError(f"cannot resume {run_dir}: these settings differ from the saved run: {', '.join(changed)}")
    step, folder = latest if latest is not None else (0, None)
    if folder is None:
        print(f"No complete checkpoint in {run_dir}; starting from step 0.")
    # Log rows after the checkpoint belong to work that is about to be redone.
    log_path = run_dir / "train_log.jsonl"
    if log_path.exists():
        write_jsonl(log_path, [row for row in read_jsonl(log_path) if row["step"] <= step])
    write_json(saved, run_config(config))
    return step, folder


def run_config(config: TrainConfig) -> dict:
    """config.json: the settings plus what they resolved to and the software that ran them."""
    import importlib.metadata as metadata

    versions = {}
    for package in ["portraitkit", "torch", "diffusers", "peft", "transformers", "accelerate", "bitsandbytes", "datasets"]:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    from portraitkit.bases import resolve_base

    spec = resolve_base(config.base)
    return {"settings": dataclasses.asdict(config), "base": {"name": spec.name, "source": spec.source, "family": spec.family},
            "lora_alpha": config.alpha or config.rank, "versions": versions}


def load_examples(dataset_dir: str) -> list[dict]:
    """The dataset as a list of {"image": PIL image, "text": caption}, read by `datasets`' imagefolder."""
    folder = Path(dataset_dir)
    if not (folder / "metadata.jsonl").is_file():
        raise PortraitkitError(f"{folder} has no metadata.jsonl; prepare your photos first with `portraitkit prep PHOTOS --out {folder}`")
    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(folder), split="train")
    if "text" not in dataset.column_names:
        raise PortraitkitError(f"{folder}/metadata.jsonl must give each image a `text` caption (portraitkit prep writes them)")
    if len(dataset) == 0:
        raise PortraitkitError(f"{folder} holds no images")
    return [{"image": row["image"].convert("RGB"), "text": row["text"]} for row in dataset]


# --- model set-up -----------------------------------------------------------------------------


def _mixed_precision(config: TrainConfig) -> str:
    import torch

    if config.mixed_precision != "auto":
        return config.mixed_precision
    if not torch.cuda.is_available():
        return "no"
    try:
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 has no such argument and counts native support only
        native_bf16 = torch.cuda.is_bf16_supported()
    return "bf16" if native_bf16 else "fp16"


def _text_encoders(pipe) -> list:
    return [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]


def _move(*modules, to) -> None:
    """Move modules between the GPU and the CPU, handing freed GPU memory back at once."""
    import torch

    for module in modules:
        module.to(to)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_for_training(config: TrainConfig, weight_dtype) -> tuple:
    """The base in `weight_dtype` with LoRA layers (fp32, training mode) added, all still in RAM:
    what `train` holds before its first move to the GPU. Returns (pipeline, {name: module that trains})."""
    from accelerate.utils import set_seed

    from portraitkit.bases import load_pipeline

    pipe = load_pipeline(config.base, dtype=weight_dtype)
    set_seed(config.seed)  # the LoRA's random initialisation
    lora_modules = _add_lora(pipe, config)
    for module in lora_modules.values():
        _cast_trainable_to_fp32(module)
        # Training mode: older diffusers and transformers checkpoint only modules in training mode
        # (their dropout is 0, so nothing else changes).
        module.train()
    return pipe, lora_modules


def _add_lora(pipe, config: TrainConfig) -> dict:
    """Freeze the base and attach LoRA adapters; return {name: module} of what trains."""
    from peft import LoraConfig

    alpha = config.alpha or config.rank
    for module in [pipe.unet, pipe.vae, *_text_encoders(pipe)]:
        module.requires_grad_(False)
    # Gaussian init (B = 0) makes the LoRA a no-op at step 0: training starts from the base model.
    pipe.unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    modules = {"unet": pipe.unet}
    if config.train_text_encoder:
        from peft import inject_adapter_in_model

        for name, encoder in zip(["text_encoder", "text_encoder_2"], _text_encoders(pipe)):
            # peft directly: transformers 5's own `add_adapter` demands a newer peft than exists.
            config_te = LoraConfig(r=config.rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TEXT_ENCODER_TARGETS)
            modules[name] = inject_adapter_in_model(config_te, encoder)
    return modules


def _cast_trainable_to_fp32(module) -> None:
    # fp16 master weights lose small updates (lr 1e-4 x grad underflows): train LoRA in fp32.
    import torch

    for parameter in module.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.to(torch.float32)


def make_optimizer(param_groups: list[dict], config: TrainConfig):
    import torch

    if config.optimizer == "adamw":
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


# --- encoding once ----------------------------------------------------------------------------


def image_to_tensor(image, resolution: int):
    """Resize the short side to `resolution` (Lanczos), centre-crop square, scale to [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    scale = resolution / min(image.size)
    if scale != 1:
        image = image.resize((max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))), Image.LANCZOS)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def encode_images(pipe, images: list, resolution: int):
    """VAE latents (the distribution's mean, scaled), one image at a time to bound memory."""
    import torch

    vae = pipe.vae
    # SDXL's VAE overflows to NaN in fp16 (its config says force_upcast): encode in fp32, once.
    upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
    dtype = torch.float32 if upcast else vae.dtype
    vae.to(dtype=dtype)
    latents = []
    with torch.no_grad():
        for image in images:
            pixels = image_to_tensor(image, resolution)[None].to(vae.device, dtype)
            latents.append(vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor)
    if upcast:
        vae.to(dtype=torch.float16)
    return torch.cat(latents).float()


def encode_text(pipe, captions: list[str], device) -> dict:
    """Prompt embeddings the UNet is conditioned on (plus SDXL's pooled embedding)."""
    if hasattr(pipe, "text_encoder_2"):
        embeds, _, pooled, _ = pipe.encode_prompt(captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        return {"embeds": embeds, "pooled": pooled}
    embeds, _ = pipe.encode_prompt(captions, device, 1, False)
    return {"embeds": embeds}


def encode_examples(pipe, examples: list[dict], resolution: int, with_text: bool) -> dict:
    import torch

    cache = {"latents": encode_images(pipe, [e["image"] for e in examples], resolution)}
    if with_text:
        with torch.no_grad():
            text = encode_text(pipe, [e["text"] for e in examples], pipe.text_encoder.device)
        cache.update({key: value.float() for key, value in text.items()})
    return cache


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


def _micro_step(*, micro_index, pipe, unet, noise_scheduler, config, cache, class_cache, examples, resolution, device, dtype):
    import torch

    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + micro_index)
    torch.manual_seed(config.seed * 1_000_003 + micro_index)  # LoRA dropout, if any, stays reproducible
    picks = batch_indices(config.seed, micro_index, config.batch_size, len(examples))
    latents, cond = _select(pipe, cache, picks, [examples[i]["text"] for i in picks], config, device)
    if class_cache is not None:
        class_picks = batch_indices(config.seed + 1, micro_index, config.batch_size, len(class_cache["latents"]))
        class_latents, class_cond = _select(pipe, class_cache, class_picks, [config.class_prompt] * len(class_picks), config, device)
        latents = torch.cat([latents, class_latents])
        cond = {key: torch.cat([cond[key], class_cond[key]]) for key in cond}

    noise = torch.randn(latents.shape, generator=generator)
    if config.noise_offset:
        noise += config.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    noise, timesteps = noise.to(device), timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)

    prediction = unet(noisy.to(dtype), timesteps, **unet_conditioning(cond, resolution, dtype)).sample.float()

    target = noise_scheduler.get_velocity(latents, noise, timesteps) if noise_scheduler.config.prediction_type == "v_prediction" else noise
    per_sample = (prediction - target).pow(2).mean(dim=(1, 2, 3)) * _snr_weights(noise_scheduler, timesteps, config.snr_gamma)
    if class_cache is None:
        return per_sample.mean()
    instance, prior = per_sample.chunk(2)
    return instance.mean() + config.prior_loss_weight * prior.mean()


def unet_conditioning(cond: dict, resolution: int, dtype) -> dict:
    """UNet keyword arguments from text embeddings; SDXL adds its pooled text and size/crop ids."""
    import torch

    kwargs = {"encoder_hidden_states": cond["embeds"].to(dtype)}
    if "pooled" in cond:  # original size, crop corner and target size: square crops, uncropped
        pooled = cond["pooled"].to(dtype)
        time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], device=pooled.device, dtype=dtype)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.repeat(len(pooled), 1)}
    return kwargs


def _select(pipe, cache, picks, captions, config, device):
    latents = cache["latents"][picks].to(device)
    if "embeds" in cache:
        return latents, {key: cache[key][picks].to(device) for key in cache if key != "latents"}
    return latents, encode_text(pipe, captions, device)  # text encoder trains: encode with gradients


def _snr_weights(noise_scheduler, timesteps, gamma: float | None):
    """Min-SNR weighting (Hang et al., ICCV 2023): easy, low-noise steps stop dominating the loss."""
    import torch

    if gamma is None:
        return torch.ones(timesteps.shape, device=timesteps.device)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if noise_scheduler.config.prediction_type == "v_prediction" else clipped / snr


# --- prior preservation -----------------------------------------------------------------------


def _class_examples(config: TrainConfig, pipe, resolution: int) -> list[dict]:
    """Class images for prior preservation; generate the missing ones with the base model."""
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    folder = Path(config.class_dir)
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    missing = range(len(existing), config.num_class_images)
    if missing:  # generating runs the whole pipeline; the UNet leaves again before caching
        pipe.unet.to(pipe.vae.device)
    for index in tqdm(missing, desc="class images", unit="img"):
        generator = torch.Generator().manual_seed(config.seed + index)
        image = pipe(config.class_prompt, height=resolution, width=resolution, num_inference_steps=config.validation_steps, generator=generator).images[0]
        existing.append(save_image(folder / f"class_{index:04d}.png", image))
    if missing:
        _move(pipe.unet, to="cpu")
    return [{"image": Image.open(p).convert("RGB"), "text": config.class_prompt} for p in existing[: config.num_class_images]]


# --- outputs ----------------------------------------------------------------------------------


def save_lora(pipe, config: TrainConfig, run_dir: Path) -> Path:
    """Write the LoRA in the diffusers format, then the same weights in the kohya format."""
    import tempfile

    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    # The diffusers format stores no alpha (loaders take alpha = rank), so the scale alpha / rank
    # is folded into the B ("up") matrices: both files then apply exactly the trained update.
    scale = (config.alpha or config.rank) / config.rank

    def lora_layers(module) -> dict:
        state = {k: (v * scale if "lora_B" in k else v) for k, v in get_peft_model_state_dict(module).items()}
        return convert_state_dict_to_diffusers(state)

    layers = {"unet_lora_layers": lora_layers(pipe.unet)}
    if config.train_text_encoder:
        for key, encoder in zip(["text_encoder_lora_layers", "text_encoder_2_lora_layers"], _text_encoders(pipe)):
            layers[key] = lora_layers(encoder)
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".lora-") as tmp:
        type(pipe).save_lora_weights(tmp, **layers, safe_serialization=True)
        Path(tmp, LORA_FILE).replace(run_dir / LORA_FILE)

    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(load_file(run_dir / LORA_FILE)))
    alpha = float(config.rank)  # the scale is in the weights already
    kohya = {key: (_torch_tensor(alpha) if key.endswith(".alpha") else value) for key, value in kohya.items()}
    if not hasattr(pipe, "text_encoder_2"):  # SD1.x tools name the single text encoder lora_te_
        kohya = {key.replace("lora_te1_", "lora_te_"): value for key, value in kohya.items()}
    with atomic_path(run_dir / KOHYA_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in kohya.items()}, tmp, metadata={"ss_network_dim": str(config.rank), "ss_network_alpha": str(alpha)})
    return run_dir / LORA_FILE


def _torch_tensor(value: float):
    import torch

    return torch.tensor(value)


def validation_prompts(config: TrainConfig, examples: list[dict]) -> list[str]:
    if config.validation_prompts:
        return list(config.validation_prompts)
    return list(dict.fromkeys(e["text"] for e in examples))[:2]


def run_validation(pipe, config: TrainConfig, examples: list[dict], resolution: int, run_dir: Path, step: int) -> Path:
    """Render fixed prompts x fixed seeds; save each image and a grid under validation/."""
    import torch

    from portraitkit.grids import image_grid

    device = pipe.unet.device
    training = [module for module in (pipe.unet, *_text_encoders(pipe)) if module.training]
    for module in training:  # inference mode for the pictures; back to training at the end
        module.eval()
    prompts = validation_prompts(config, examples)
    # The prompts are encoded first and the encoders leave the GPU before the VAE comes: the
    # decode at full size (SDXL's VAE in fp32) is the run's largest graph.
    _move(*_text_encoders(pipe), to=device)
    with torch.no_grad():
        embeddings = [prompt_embeddings(pipe, prompt, device) for prompt in prompts]
    _move(*([] if config.train_text_encoder else _text_encoders(pipe)), to="cpu")
    _move(pipe.vae, to=device)
    denoiser = _without_text_encoders(pipe)
    folder = run_dir / "validation" / f"step_{step:06d}"
    images = []
    autocast = torch.autocast(device.type, dtype=pipe.vae.dtype) if device.type == "cuda" else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        for p, embedding in enumerate(embeddings):
            for seed in config.validation_seeds:
                generator = torch.Generator().manual_seed(seed)
                image = denoiser(**embedding, height=resolution, width=resolution,
                                 num_inference_steps=config.validation_steps, generator=generator).images[0]
                images.append(image)
                save_image(folder / f"prompt{p}_seed{seed}.png", image)
    grid = save_image(folder.with_suffix(".png"), image_grid(images, columns=len(config.validation_seeds)))
    # identity.json: how much each step's images look like the person; best/ keeps the likeliest LoRA.
    from portraitkit.rank import score_validation_step

    score_validation_step(run_dir, step, images, [e["image"] for e in examples], config.steps,
                          save_best=lambda folder: save_lora(pipe, config, folder))
    _move(pipe.vae, to="cpu")
    for module in training:
        module.train()
    return grid


def _without_text_encoders(pipe):
    """The same pipeline (shared modules, nothing copied) without its text encoders, for a call
    given prompt embeddings. Diffusers releases before late 2026 take a pipeline's device from
    its alphabetically first model, the text encoder: left on the CPU, it would pull the whole
    call there. Without it, that is the UNet's device in every release."""
    drop = {name: None for name in ("text_encoder", "text_encoder_2") if name in pipe.components}
    if "safety_checker" in pipe.components:  # SD1.x: portraits of the user, as load_pipeline says
        drop["requires_safety_checker"] = False
    denoiser = type(pipe)(**{**pipe.components, **drop})
    denoiser.set_progress_bar_config(disable=True)
    return denoiser


def prompt_embeddings(pipe, prompt: str, device) -> dict:
    """A prompt and the empty negative prompt as the embeddings the pipeline's call takes, so the
    text encoders need not stay on the GPU while it denoises and decodes."""
    if hasattr(pipe, "text_encoder_2"):
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative,
                "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    embeds, negative = pipe.encode_prompt(prompt, device, 1, True)
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}


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


# --- measuring what the LoRA learned ----------------------------------------------------------


def denoising_loss(base: str, dataset_dir: str, lora_dir: str | None = None, resolution: int | None = None,
                   seed: int = 1234, draws: int = 8) -> float:
    """Mean denoising loss of a base (plus LoRA) on a dataset, with fixed noise and timesteps.

    The same draws are used for any LoRA, so two calls compare like with like: a LoRA that
    learned the person has a lower loss on that person's photos than the base model.
    """
    import torch
    from diffusers import DDPMScheduler

    from portraitkit.bases import load_pipeline

    pipe = load_pipeline(base)
    if lora_dir is not None:
        pipe.load_lora_weights(lora_dir)
    examples = load_examples(dataset_dir)
    resolution = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    cache = encode_examples(pipe, examples, resolution, with_text=True)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            latents = cache["latents"]
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            prediction = pipe.unet(noisy, timesteps, **unet_conditioning(cache, resolution, torch.float32)).sample
            target = scheduler.get_velocity(latents, noise, timesteps) if scheduler.config.prediction_type == "v_prediction" else noise
            total += torch.nn.functional.mse_loss(prediction, target).item()
    return total / draws
