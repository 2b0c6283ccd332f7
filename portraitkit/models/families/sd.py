"""Stable Diffusion 1.x/2.x and SDXL: a UNet predicting the noise (or v) of a DDPM schedule,
conditioned on CLIP text embeddings (SDXL: two encoders, a pooled embedding and size ids)."""

from __future__ import annotations

from portraitkit.models.families.family import Family

# The attention projections: what person-LoRA recipes (diffusers, kohya) adapt by default.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class StableDiffusion(Family):
    name = "sd"
    label = "Stable Diffusion"
    pipeline = "StableDiffusionPipeline"
    preset = "sd15"
    native_size = 512
    base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1/lora"
    kohya_prefixes = {"unet": "lora_unet", "text_encoder": "lora_te"}

    def load_arguments(self) -> dict:
        # portraits of the user: no safety checker (and none to download)
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def add_lora(self, pipe, rank: int, alpha: float | None, train_text_encoder: bool, use_dora: bool = False,
                 targets: str = "attention") -> dict:
        from portraitkit.models import adapters

        self.check_targets(targets)
        adapters.add_adapters(pipe.unet, rank, UNET_TARGETS, alpha, use_dora)
        modules = {"unet": pipe.unet}
        if train_text_encoder:
            for name, encoder in zip(self.trainable_text_encoders, self.text_encoders_of(pipe)):
                targets = adapters.text_encoder_targets(encoder, skip_last_layer=self.unused_last_layer(name))
                adapters.add_adapters(encoder, rank, targets, alpha, use_dora)
                modules[name] = encoder
        return modules

    # --- latents and text -------------------------------------------------------------------------

    def encode_latents(self, vae, pixels):
        """Pixels in [-1, 1] -> the latent distribution's mean, scaled as the UNet reads it."""
        return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor

    def encode_text(self, pipe, captions: list[str], device) -> dict:
        embeds, _ = pipe.encode_prompt(captions, device, 1, False)
        return {"embeds": embeds}

    def prompt_embeddings(self, pipe, prompt: str, negative_prompt: str, device) -> dict:
        """A prompt and its negative prompt as the embeddings the pipeline's call takes, so the
        text encoders need not stay on the GPU while it denoises and decodes."""
        embeds, negative = pipe.encode_prompt(prompt, device, 1, True, negative_prompt=negative_prompt)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}

    # --- the objective ------------------------------------------------------------------------------

    def training_scheduler(self, pipe):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(pipe.scheduler.config)

    def predict(self, pipe, noise_scheduler, latents, noise, timesteps, cond: dict, resolution: int, dtype=None):
        """(prediction, target) of one draw: the latents noised to `timesteps`, the UNet's
        prediction from them and the caption, against the noise (or v for v-prediction bases)."""
        from portraitkit.models.conditioning import unet_conditioning

        return noise_prediction(pipe.unet, noise_scheduler, latents, noise, timesteps,
                                unet_conditioning(cond, resolution, dtype or latents.dtype), dtype)

    def loss_weights(self, noise_scheduler, timesteps, snr_gamma: float | None):
        return min_snr_weights(noise_scheduler, timesteps, snr_gamma)

    def check_loss(self, loss) -> None:
        """Nothing: SD's fp16 overflow shows in the VAE's decode, which validation and sample check."""

    # --- files --------------------------------------------------------------------------------------

    def kohya_state_dict(self, layers: dict, rank: int, modules: dict, dtype) -> dict:
        from portraitkit.models import kohya

        return kohya.state_dict(layers, self.kohya_prefixes, rank, modules, dtype)


class StableDiffusionXL(StableDiffusion):
    name = "sdxl"
    label = "SDXL"
    pipeline = "StableDiffusionXLPipeline"
    preset = "sdxl"
    native_size = 1024
    text_encoders = ("text_encoder", "text_encoder_2")
    trainable_text_encoders = ("text_encoder", "text_encoder_2")
    size_ids = True
    vae_upcasts = True
    smaller_base = "sd15"
    base_model_version = "sdxl_base_v1-0"
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    kohya_prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}

    def load_arguments(self) -> dict:
        return {}

    def unused_last_layer(self, name: str) -> bool:
        # SDXL conditions on encoder 1's penultimate hidden state and pools from encoder 2
        return name == "text_encoder"

    def encode_text(self, pipe, captions: list[str], device) -> dict:
        embeds, _, pooled, _ = pipe.encode_prompt(captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        return {"embeds": embeds, "pooled": pooled}

    def prompt_embeddings(self, pipe, prompt: str, negative_prompt: str, device) -> dict:
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negative_prompt)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative,
                "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}

    def sampling_arguments(self, resolution: int) -> dict:
        from portraitkit.models.conditioning import sampling_sizes

        return sampling_sizes(resolution)

    def prepare_for_sampling(self, pipe) -> None:
        # SDXL's VAE overflows in fp16, so diffusers decodes in fp32: several GB at 1024 px.
        # Slicing decodes a batch one image at a time; tiling decodes in overlapping tiles for
        # sizes above the VAE's tile size. Attention needs no slicing: PyTorch 2's fused
        # attention already avoids the quadratic memory (and slicing would slow it down).
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()


def noise_prediction(unet, noise_scheduler, latents, noise, timesteps, conditioning: dict, dtype=None):
    """(prediction, target) in fp32: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (the scheduler's
    `alphas_cumprod[t]`), the UNet's prediction from x_t, t and `conditioning` (UNet keyword
    arguments), and the noise, or for v-prediction bases the velocity sqrt(a_t) eps - sqrt(1 - a_t) x_0."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy.to(dtype or latents.dtype), timesteps, **conditioning).sample.float()
    velocity = noise_scheduler.config.prediction_type == "v_prediction"
    return prediction, noise_scheduler.get_velocity(latents, noise, timesteps) if velocity else noise


def min_snr_weights(noise_scheduler, timesteps, gamma: float | None):
    """Min-SNR weighting (Hang et al., ICCV 2023): easy, low-noise steps stop dominating the loss."""
    import torch

    if gamma is None:
        return torch.ones(timesteps.shape, device=timesteps.device)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if noise_scheduler.config.prediction_type == "v_prediction" else clipped / snr


SD = StableDiffusion()
SDXL = StableDiffusionXL()
