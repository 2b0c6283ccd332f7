"""Pixels as light: the conversions diagnose's measures and degrade's simulations share.

A photo's 8-bit values are gamma-encoded (sRGB): light from two lamps adds, and an exposure
change multiplies, only after the transfer curve is undone (`srgb_to_linear`). JPEG and a
learner's eye work on the encoded values, whose brightness is luma (`luma`, Rec. 601); the light
in the scene is the relative luminance of the linear values (`LUMINANCE`, Rec. 709 primaries).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_array(image: Image.Image) -> np.ndarray:
    """RGB float array in 0-1, shape (H, W, 3)."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def to_image(array: np.ndarray) -> Image.Image:
    """Inverse of `to_array`, clipping to the displayable range."""
    return Image.fromarray((np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "RGB")


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """The sRGB transfer curve undone (IEC 61966-2-1): light adds and multiplies in linear values."""
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, None)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of gamma-encoded RGB, the brightness JPEG itself works on."""
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=rgb.dtype)


# Relative luminance Y of linear sRGB (IEC 61966-2-1, the Rec. 709 primaries): light in the photo.
LUMINANCE = np.array([0.2126, 0.7152, 0.0722])
