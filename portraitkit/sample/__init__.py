"""The sampling stage: portraits in chosen styles (`render`; the styles in `styles`), each PNG
carrying its recipe in AUTOMATIC1111's infotext (`infotext`)."""

from portraitkit.sample.render import SampleConfig, compare_dials, sample
from portraitkit.sample.styles import load_styles

__all__ = ["SampleConfig", "compare_dials", "load_styles", "sample"]
