"""The `Family` interface: a model family's defaults, which `sd` and `flux2` fill in (see the package's docstring)."""

from __future__ import annotations

from portraitkit.core.errors import PortraitkitError


class Family:
    """A model family's defaults; `families.sd` and `families.flux2` fill in the rest."""

    name: str  # as config.json and the architectures record it: "sd", "sdxl", "flux2"
    label: str  # for people
    pipeline: str  # the diffusers pipeline class (model_index.json's `_class_name`)
    preset: str  # the preset whose published architecture stands in for an unreadable base of this family
    native_size: int  # the training and sampling size the base was made for
    denoiser: str = "unet"  # the pipeline component that predicts
    text_encoders: tuple[str, ...] = ("text_encoder",)
    trainable_text_encoders: tuple[str, ...] = ("text_encoder",)  # those a LoRA may adapt
    objective: str = "ddpm"  # "ddpm": predict the noise (or v) of a DDPM schedule; "flow": the flow's velocity
    quantizable: bool = False  # the frozen denoiser can load in 4-bit NF4 on a GPU (bitsandbytes)
    target_choices: tuple[str, ...] = ("attention",)  # what --targets may name: the layers a LoRA adapts
    size_ids: bool = False  # SDXL's size and crop conditioning
    vae_upcasts: bool = False  # the pipeline decodes in fp32 (SDXL's VAE overflows in fp16)
    prompts_from: str | None = None  # the family whose style prompt a style without one for this family takes
    own_sampler: str | None = None  # the only sampler this family draws with (sample.recipe's key), if any
    runs_in_a1111: bool = True  # AUTOMATIC1111 can load this family's models and LoRAs
    smaller_base: str | None = None  # a preset to suggest when a run does not fit
    text_tokens: int = 77  # the prompt length the text encoder reads
    base_model_version: str  # kohya's `ss_base_model_version`
    modelspec_architecture: str  # the SAI model spec's architecture id
    kohya_prefixes: dict  # {component: kohya key prefix}

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # --- the pipeline ---------------------------------------------------------------------------

    def require_libraries(self) -> None:
        """One sentence where the installed libraries predate this family (nothing to check by default)."""

    def pipeline_class(self):
        import diffusers

        from portraitkit.core.quiet import quiet

        self.require_libraries()
        with quiet():  # import-time notices: image processors without torchvision, optional kernels
            return getattr(diffusers, self.pipeline)

    def load_arguments(self) -> dict:
        """Extra `from_pretrained` arguments of this family's pipeline."""
        return {}

    def denoiser_of(self, pipe):
        return getattr(pipe, self.denoiser)

    def text_encoders_of(self, pipe) -> list:
        return [m for m in (getattr(pipe, name, None) for name in self.text_encoders) if m is not None]

    def unused_last_layer(self, name: str) -> bool:
        """Whether text encoder `name`'s last layer never reaches the denoiser (SDXL's first encoder)."""
        return False

    def adaptable(self, pipe) -> dict:
        """{component: model} of the models that can carry adapters."""
        models = {self.denoiser: self.denoiser_of(pipe)}
        models.update({name: getattr(pipe, name) for name in self.trainable_text_encoders if getattr(pipe, name, None) is not None})
        return models

    # --- what a run may ask -------------------------------------------------------------------------

    def refuse(self, config) -> None:
        """One sentence, before loading, for a setting this family does not do (a TrainConfig)."""
        if config.quantize == "nf4" and not self.quantizable:
            raise PortraitkitError(f"--quantize nf4 is for FLUX.2 [klein] bases; {self.label} trains with fp16 weights: leave it out")
        self.check_targets(config.targets)

    def check_targets(self, targets: str) -> None:
        if targets not in self.target_choices:
            raise PortraitkitError(f"--targets {targets} is for FLUX.2 [klein] bases; {self.label}'s LoRA adapts the "
                                   f"{self.denoiser}'s {' or '.join(self.target_choices)}: leave --targets out")

    # --- sampling ------------------------------------------------------------------------------------

    def sampling_arguments(self, resolution: int) -> dict:
        """Extra arguments of the pipeline call for a `resolution` portrait."""
        return {}

    def prepare_for_sampling(self, pipe) -> None:
        """Set the pipeline up for a T4 (nothing by default)."""
