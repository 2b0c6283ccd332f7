"""The estimate for Stable Diffusion 1.x/2.x and SDXL bases: every phase of `train`'s run (the
cache with the VAE and text encoders, the UNet's training step, validation's prompts and renders),
from the real UNet, VAE and text encoders traced on the meta device, and `sample`'s load."""

from __future__ import annotations

from portraitkit.core.errors import PortraitkitError
from portraitkit.models import families
from portraitkit.models.architectures import arch_key
from portraitkit.plan.devices import Device
from portraitkit.plan.plans import (ALLOCATOR_OVERHEAD, CAPTIONS_ENCODED_AT_ONCE, CPU_EXTRA_CAP_GB, CPU_EXTRA_RATIO, CPU_STEP_EXTRA_GB,
                                    CPU_STEP_EXTRA_PER_GB, CUDA_CONTEXT_GB, HOST_BASELINE_GB, HOST_CUDA_GB, SD_SAMPLING_STEPS, Plan,
                                    PlanConfig, Recipe, optimizer_state_bytes, recipe_for, rounded, training_slowdown, validations_of)
from portraitkit.plan.tracing import GIB, component_parameters, text_encoder_step, trace_pass, training_step


def sd_plan(config: PlanConfig, device: Device, arch: dict) -> Plan:
    """A Stable Diffusion run's Plan on `device` with `config`'s settings as given (`estimate.plan_run` decides the defaults)."""
    key = arch_key(arch)
    vae_factor = 2 ** (len(arch["vae"]["block_out_channels"]) - 1)
    resolution = config.resolution or arch["unet"]["sample_size"] * vae_factor
    if resolution < 8 * vae_factor or resolution % vae_factor:
        raise PortraitkitError(f"resolution {resolution} px does not work: use a multiple of {vae_factor} of at least {8 * vae_factor}")
    recipe = recipe_for(config, device)
    on_gpu = device.gpu_memory_gb is not None
    params = component_parameters(key)
    encoder_names = [name for name in params if name.startswith("text_encoder")]
    weights = {name: count * recipe.weight_bytes for name, count in params.items()}
    encoders = sum(weights[name] for name in encoder_names)

    def graph(name: str, mode: str, batch: int, weight_bytes: int = recipe.weight_bytes) -> dict:
        return trace_pass(key, name, mode, batch, resolution, weight_bytes, recipe.autocast)

    # Output preservation runs the class caption through the UNet with the LoRA beside the training
    # image's pass (both graphs held until the backward pass: a step at twice the batch), plus one
    # forward pass without the LoRA and without gradients.
    graphs = 2 if config.output_preservation else 1
    step = training_step(key, resolution, config.batch_size * graphs, config.rank, recipe.checkpointing,
                          recipe.weight_bytes, recipe.autocast, config.dora)
    lora_numels = list(step["lora_numels"])
    if config.train_text_encoder:  # the encoders run with gradients in every step
        for name in encoder_names:
            encoder = text_encoder_step(key, name, config.batch_size, config.rank, recipe.weight_bytes, recipe.autocast,
                                        config.dora)
            lora_numels += encoder["lora_numels"]
            step = {**step, "peak": step["peak"] + encoder["peak"], "flops": step["flops"] + encoder["flops"]}
    lora_bytes = 4 * sum(lora_numels)  # LoRA weights train in fp32 whatever the base's dtype
    optimizer_bytes = optimizer_state_bytes(lora_numels, recipe.optimizer)
    vae_encode = graph("vae", "encode", 1)
    flops = step["flops"]
    if config.output_preservation:
        flops += graph("unet", "infer", config.batch_size)["flops"]

    if recipe.cached:
        # `train` moves the models so that each phase has on the GPU only what it runs: the VAE and
        # text encoders while caching (one image, all captions at once), then the UNet (and trained
        # encoders); the final validation encodes its prompts, sends the encoders back and brings
        # the VAE, which SDXL's pipeline upcasts to fp32 (as caching does).
        captions = max(graph(name, "encode", CAPTIONS_ENCODED_AT_ONCE)["peak"] for name in encoder_names)
        upcast = _vae_upcasts(arch, recipe)
        vae = weights["vae"] * (2 if upcast else 1)
        trained_encoders = encoders if config.train_text_encoder else 0
        trainer = lora_bytes + optimizer_bytes
        denoise_and_decode = max(graph("unet", "infer", 2)["peak"], graph("vae", "decode", 1, 4 if upcast else recipe.weight_bytes)["peak"])
        phases = {  # (weights on the device, LoRA and optimizer state, peak of the graph run in that phase)
            "load_and_cache": (vae + encoders, lora_bytes, max(vae_encode["peak"], captions)),
            "train_step": (weights["unet"] + trained_encoders, trainer, step["peak"]),
            "validation_prompts": (weights["unet"] + encoders, trainer, captions),
            "validation": (weights["unet"] + trained_encoders + vae, trainer, denoise_and_decode),
        }
    else:  # the plain loop: every model on the GPU, the VAE and text encoders run in every step
        per_step = [graph("vae", "encode", config.batch_size)] + [graph(n, "encode", config.batch_size) for n in encoder_names]
        flops += sum(g["flops"] for g in per_step)
        phases = {"train_step": (sum(weights.values()), lora_bytes + optimizer_bytes,
                                 max([step["peak"]] + [g["peak"] for g in per_step]))}

    tflops = device.achieved_tflops()
    seconds = flops / (tflops * 1e12) * training_slowdown(device)
    if on_gpu:
        phases = {name: on_device + trainer + peak for name, (on_device, trainer, peak) in phases.items()}
        allocated = max(phases.values()) / GIB
        reserved = allocated * (1 + ALLOCATOR_OVERHEAD)
        gpu_total = reserved + CUDA_CONTEXT_GB
        # RAM: every component sits in RAM between from_pretrained and .to("cuda"); during training the
        # VAE and text encoders wait there.
        loaded = sum(weights.values()) if recipe.weight_bytes == 2 else sum(weights.values()) + max(params.values()) * 2
        resting = (weights["vae"] + (0 if config.train_text_encoder else encoders)) if recipe.cached else 0
        # Before anything moves to the GPU, the same on any machine (benchmarks' `load` recipe measures it).
        host_loading = HOST_BASELINE_GB + (loaded + lora_bytes) / GIB
        host = HOST_BASELINE_GB + HOST_CUDA_GB + (max(loaded, resting) + lora_bytes) / GIB
    else:  # on a CPU every model is in RAM all the time, whatever "moving it to the CPU" says
        allocated = reserved = gpu_total = None
        everything = sum(weights.values())
        host_loading = HOST_BASELINE_GB + (everything + lora_bytes) / GIB
        forward = training_step(key, resolution, config.batch_size, config.rank, False, recipe.weight_bytes,
                                 recipe.autocast, config.dora)["peak"]  # what the step's forward pass allocates
        extra = {name: min(CPU_EXTRA_RATIO * peak, CPU_EXTRA_CAP_GB * GIB) for name, (_, _, peak) in phases.items()}
        extra["train_step"] = max(extra["train_step"], CPU_STEP_EXTRA_GB * GIB + CPU_STEP_EXTRA_PER_GB * forward)
        for before, name in zip(phases, list(phases)[1:]):  # what the process kept, it keeps in the next phase
            extra[name] = max(extra[name], extra[before])
        phases = {name: everything + trainer + peak + extra[name] for name, (_, trainer, peak) in phases.items()}
        host = HOST_BASELINE_GB + max(phases.values()) / GIB
    fits_gpu = None if gpu_total is None else gpu_total <= device.gpu_memory_gb
    fits_host = None if device.host_ram_gb is None else host <= device.host_ram_gb

    breakdown = {f"weights_{name}": value / GIB for name, value in weights.items()}
    breakdown.update(host_ram_loading=host_loading, lora_params=lora_bytes / GIB, optimizer_state=optimizer_bytes / GIB,
                     training_activations_and_grads=step["peak"] / GIB, vae_encode_activations=vae_encode["peak"] / GIB)
    return Plan(
        config=config, family=arch["family"], architecture_source=arch["source"], resolution=resolution, device=device,
        peak_gpu_mem_gb=gpu_total, peak_gpu_allocated_gb=allocated, peak_gpu_reserved_gb=reserved, peak_host_ram_gb=host,
        seconds_per_step=seconds, phases_gb={k: v / GIB for k, v in phases.items()}, breakdown_gb=breakdown,
        parameters={**params, "lora": sum(lora_numels)}, flops_per_step=flops,
        inference=_inference(key, arch, resolution, device, recipe, steps=config.validation_steps or SD_SAMPLING_STEPS),
        fits_gpu=fits_gpu, fits_host=fits_host,
        validation_seconds=validations_of(config) * config.validation_renders
        * _inference(key, arch, resolution, device, recipe, steps=config.validation_steps or SD_SAMPLING_STEPS)["seconds_per_image"],
    )


def _vae_upcasts(arch: dict, recipe: Recipe) -> bool:
    # StableDiffusionXLPipeline decodes in fp32 when the VAE asks for it (SDXL's overflows in fp16)
    return families.named(arch["family"]).vae_upcasts and recipe.weight_bytes == 2 and arch["vae"].get("force_upcast", True)


def _inference(key: str, arch: dict, resolution: int, device: Device, recipe: Recipe, steps: int = SD_SAMPLING_STEPS) -> dict:
    """One image, `steps` denoising steps with classifier-free guidance, then the VAE decode: the
    pipeline in fp16 on a GPU (fp32 on a CPU), no autocast. Its peak counts every model on the
    GPU at once (the text encoders leave before denoising: an upper bound by their few hundred MB)."""
    on_gpu = device.gpu_memory_gb is not None
    weight_bytes = 2 if on_gpu else 4
    params = component_parameters(key)
    upcast = _vae_upcasts(arch, Recipe(weight_bytes, False, False, "adamw", True))
    unet = trace_pass(key, "unet", "infer", 2, resolution, weight_bytes, False)
    decode = trace_pass(key, "vae", "decode", 1, resolution, 4 if upcast else weight_bytes, False)
    peak = sum(params.values()) * weight_bytes + params["vae"] * 4 * upcast + max(unet["peak"], decode["peak"])
    flops = steps * unet["flops"] + decode["flops"]
    return {
        "recipe": "fp16 pipeline, text encoders on the GPU only to encode the prompts" if on_gpu else "fp32 on the CPU",
        "steps": steps,
        "seconds_per_image": round(flops / (device.achieved_tflops() * 1e12), 2),
        "peak_gpu_allocated_gb": rounded(peak / GIB) if on_gpu else None,
        "peak_gpu_mem_gb": rounded(peak / GIB * (1 + ALLOCATOR_OVERHEAD) + CUDA_CONTEXT_GB) if on_gpu else None,
        "peak_host_ram_gb": rounded(HOST_BASELINE_GB + (HOST_CUDA_GB + sum(params.values()) * weight_bytes / GIB
                                                        if on_gpu else peak / GIB)),
    }
