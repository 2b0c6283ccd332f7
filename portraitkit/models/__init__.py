"""What train, sample and plan all load: base-model presets and the offline toy bases (`bases`),
the real-size architectures as configs (`architectures`), the UNet's conditioning
(`conditioning`) and the LoRA adapter with its files (`lora`)."""

from portraitkit.models.bases import load_pipeline, resolve_base

__all__ = ["load_pipeline", "resolve_base"]
