"""FLUX.2 [klein]: a diffusion transformer predicting a rectified flow's velocity, conditioned on
Qwen3's hidden states; the details of its latents, text and objective live in `models.klein`."""

from __future__ import annotations

from portraitkit.core.errors import PortraitkitError
from portraitkit.models.families.family import Family


class Flux2(Family):
    name = "flux2"
    label = "FLUX.2 [klein]"
    pipeline = "Flux2KleinPipeline"
    preset = "klein4b"
    native_size = 1024
    denoiser = "transformer"
    trainable_text_encoders = ()  # Qwen3's embeddings are cached once: never trained
    objective = "flow"
    quantizable = True
    target_choices = ("attention", "attention+mlp")  # `klein.lora_targets`
    prompts_from = "sdxl"  # Qwen3 reads whole sentences, as SDXL's encoders do (klein's defaults have no negative words)
    own_sampler = "flow_euler"  # its own flow-matching Euler (sample.recipe.FLOW_SAMPLER)
    runs_in_a1111 = False
    text_tokens = 512
    # kohya's sd-scripts name no FLUX.2 version (found none in their docs or source): the klein 4B
    # base is named here in their style; A1111 does not run FLUX.2 at all, so no Lora tab reads it.
    base_model_version = "flux2_klein_4b_base"
    modelspec_architecture = "flux-2-klein-4b-base/lora"
    # `lora_unet_` + the module's name in Black Forest Labs' own checkpoint, dots as underscores:
    # ComfyUI's loader makes that key for every weight of every model it loads (comfy/lora.py,
    # model_lora_keys_unet), and diffusers' Flux2 loader reads the same names (`kohya.flux2_state_dict`).
    kohya_prefixes = {"transformer": "lora_unet"}

    def require_libraries(self) -> None:
        from portraitkit.models import klein

        klein.require_libraries()

    def refuse(self, config) -> None:
        """Not for FLUX.2 yet: its Qwen3 encoder is never trained (its embeddings are cached once),
        and prior or output preservation and DoRA are not written for its transformer."""
        unsupported = [flag for flag, on in (("--train-text-encoder", config.train_text_encoder), ("--dora", config.dora),
                                             ("--class-dir", config.class_dir is not None),
                                             ("--output-preservation", config.output_preservation)) if on]
        if unsupported:
            raise PortraitkitError(f"{', '.join(unsupported)}: not available for FLUX.2 [klein] bases yet; train without "
                                   f"{'it' if len(unsupported) == 1 else 'them'}")
        self.check_targets(config.targets)

    def add_lora(self, pipe, rank: int, alpha: float | None, train_text_encoder: bool, use_dora: bool = False,
                 targets: str = "attention") -> dict:
        from portraitkit.models import adapters, klein

        if use_dora:
            raise PortraitkitError("DoRA is not written for FLUX.2 [klein] yet: train without --dora")
        if train_text_encoder:
            raise PortraitkitError("FLUX.2 [klein]'s Qwen3 text encoder is not trained (its embeddings are cached once): "
                                   "train without --train-text-encoder")
        adapters.add_adapters(pipe.transformer, rank, klein.lora_targets(pipe.transformer, targets), alpha, use_dora)
        return {"transformer": pipe.transformer}

    def encode_latents(self, vae, pixels):
        from portraitkit.models import klein

        return klein.encode_images(vae, pixels)

    def encode_text(self, pipe, captions: list[str], device) -> dict:
        from portraitkit.models import klein

        return {"embeds": klein.encode_prompts(pipe, captions, device)}

    def prompt_embeddings(self, pipe, prompt: str, negative_prompt: str, device) -> dict:
        from portraitkit.models import klein

        # klein's pipeline guides against the empty prompt when it is given no negative embeddings
        return {"prompt_embeds": klein.encode_prompts(pipe, [prompt], device),
                "negative_prompt_embeds": klein.encode_prompts(pipe, [negative_prompt], device)}

    def training_scheduler(self, pipe):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)

    def predict(self, pipe, noise_scheduler, latents, noise, timesteps, cond: dict, resolution: int, dtype=None):
        """The draw's integer t becomes the uniform u = (t + 1) / 1000, then the noise level shifted
        for the resolution (`klein.shifted_sigmas`); (predicted velocity, true velocity)."""
        from portraitkit.models import klein

        sigmas = klein.shifted_sigmas((timesteps.float() + 1) / noise_scheduler.config.num_train_timesteps, resolution)
        return klein.velocity_prediction(pipe.transformer, latents, noise, sigmas, cond["embeds"], dtype or latents.dtype)

    def loss_weights(self, noise_scheduler, timesteps, snr_gamma: float | None):
        """Every noise level alike: min-SNR is an epsilon-prediction remedy, flow-matching trainers weigh none."""
        import torch

        return torch.ones(timesteps.shape, device=timesteps.device)

    def check_loss(self, loss) -> None:
        from portraitkit.models import klein

        klein.finite_or_stop(loss)  # fp16 on a T4: stop at the first overflow, never train on NaN

    def kohya_state_dict(self, layers: dict, rank: int, modules: dict, dtype) -> dict:
        from portraitkit.models import kohya

        return kohya.flux2_state_dict(layers["transformer"], dtype)


FLUX2 = Flux2()
