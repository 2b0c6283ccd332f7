"""Opening any photo a user might have, safely: one RGB image, the right way up, a sane size.

Photos arrive straight from phones and social media: JPEG, PNG, WEBP, iPhone HEIC, greyscale
scans, CMYK exports from print tools, 16-bit PNGs from raw converters, PNGs with transparency,
and now and then a truncated download or a file that is not an image at all. `open_photo`
turns all of those into the one thing every later stage wants, an 8-bit RGB `PIL.Image` that is
upright as the camera held it, or raises `PortraitkitError` with one sentence saying what to do.

Memory: a 12 MP photo is 36 MB as RGB, but a "decompression bomb" (a tiny file declaring a huge
canvas) or a 100 MP panorama could take gigabytes. The header is read before any pixels, JPEGs
are decoded directly at a reduced scale (`Image.draft`: the decoder skips the detail it would
throw away), and files that would still need too much memory are refused before decoding.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from portraitkit.core.errors import PortraitkitError

# Largest image returned by default. A 12 MP phone photo passes untouched; anything bigger is
# downscaled, which no later stage notices: training crops are 512-1024 px.
DEFAULT_MAX_PIXELS = 16_000_000

# Largest canvas we agree to decode at all (after a JPEG's draft reduction). 100 MP of 16-bit
# RGBA is 800 MB at worst; more than that is not a photo of a person but a panorama or a bomb.
DECODE_LIMIT_PIXELS = 100_000_000

# File suffixes that prep looks at when it scans a folder. HEIC/HEIF come from iPhones.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".heic", ".heif", ".avif", ".bmp", ".tif", ".tiff", ".gif")

# Pillow refuses canvases over twice this many pixels as it opens them (decompression bombs).
# A JPEG is decoded at reduced size (`draft`), so a 200 MP phone photo is fine: the limit is
# raised to let such photos through, and DECODE_LIMIT_PIXELS guards what is really decoded.
CANVAS_LIMIT_PIXELS = 256_000_000

# Pillow calls a JPEG with a multi-picture block (iPhone gain maps, many Android phones) "MPO".
JPEG_FORMATS = ("JPEG", "MPO")

# Pillow's own errors for files it cannot parse. `SyntaxError` and `struct.error`-like
# `ValueError`s come out of some plugins on corrupt headers.
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@functools.cache
def _register_heif() -> None:
    """Teach Pillow to open HEIC/HEIF once per process (pillow-heif is a plugin, not built in)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # the rest of the formats still work; a HEIC file then reads as unreadable
        return
    # No embedded thumbnails: we always want the full picture, then downscale it ourselves.
    register_heif_opener(thumbnails=False)


def open_photo(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `path` as an 8-bit RGB image, rotated upright by its EXIF orientation.

    Images larger than `max_pixels` are downscaled (aspect ratio kept). Transparent pixels are
    composited on white, as a photo viewer shows them. Raises `PortraitkitError` for a missing,
    empty, truncated or non-image file, or one too large to decode safely.
    """
    path = Path(path)
    if not path.is_file():
        raise PortraitkitError(f"{path} does not exist or is not a file: check the path.")
    if path.stat().st_size == 0:
        raise PortraitkitError(f"{path.name} is empty (0 bytes): copy the photo again from its source.")
    _register_heif()
    try:
        with warnings.catch_warnings():
            # We apply our own pixel limit below, so Pillow's bomb warning is only noise here;
            # its hard error (twice the warning size) still stops absurd headers.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _canvas_limit(CANVAS_LIMIT_PIXELS), Image.open(path) as opened:
                image = _decode(opened, path.name, max_pixels)
                if image is opened:  # closing the file would also discard the pixels
                    image = opened.copy()
    except PortraitkitError:
        raise
    except Image.DecompressionBombError as error:
        raise PortraitkitError(
            f"{path.name} declares an absurdly large canvas (a 'decompression bomb' or a corrupt header): remove it."
        ) from error
    except _READ_ERRORS as error:
        raise PortraitkitError(
            f"{path.name} could not be read as an image ({_short(error)}): "
            "it may be truncated or not a photo; copy it again or remove it."
        ) from error
    except MemoryError as error:
        raise PortraitkitError(f"{path.name} is too large to open in the memory available: resize it first.") from error
    return image


def pixels_key(*images: Image.Image | np.ndarray) -> str:
    """A key for what `images` show (their sizes and RGB pixels; an array as it is): work on the
    same pictures in one process (detection, embeddings, fingerprints of the training crops each
    validation meets again, the photos a notebook prepares again) is done once."""
    import hashlib

    key = hashlib.sha1()
    for image in images:
        if isinstance(image, np.ndarray):
            key.update(repr((image.shape, image.dtype.str)).encode())
            key.update(memoryview(np.ascontiguousarray(image)).cast("B"))  # no copy of a 12 MP photo's 36 MB
        else:
            key.update(repr(image.size).encode())
            key.update(image.convert("RGB").tobytes())
    return key.hexdigest()


class PixelMemo:
    """What was worked out from pictures, by `pixels_key`, the least recently asked forgotten past
    `size` entries (a long notebook session keeps a bounded amount)."""

    def __init__(self, size: int):
        from collections import OrderedDict

        self.size = size
        self.found: OrderedDict = OrderedDict()

    def get(self, key: str, make):
        if key in self.found:
            self.found.move_to_end(key)
            return self.found[key]
        value = self.found[key] = make()
        if len(self.found) > self.size:
            self.found.popitem(last=False)
        return value


@contextlib.contextmanager
def _canvas_limit(pixels: int):
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(previous or 0, pixels)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _decode(image: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """Decode an opened (header-only) image into an upright RGB image of at most `max_pixels`."""
    width, height = image.size
    if width < 1 or height < 1:
        raise PortraitkitError(f"{name} has no pixels ({width}x{height}): remove it.")
    if image.format in JPEG_FORMATS:
        # Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale, the smallest that still gives at
        # least `max_pixels`: a 48 MP photo then costs what a 12 MP one does.
        scale = min(1.0, (max_pixels / (width * height)) ** 0.5)
        image.draft(image.mode, (max(1, int(width * scale)), max(1, int(height * scale))))
    if image.size[0] * image.size[1] > DECODE_LIMIT_PIXELS:
        raise PortraitkitError(
            f"{name} is {width}x{height} pixels, more than the {DECODE_LIMIT_PIXELS // 1_000_000} MP "
            "that can be opened safely: resize it or export it as JPEG."
        )
    image.load()
    icc = image.info.get("icc_profile")
    # EXIF orientation first, while the EXIF is still attached: phones store pixels as the sensor
    # saw them and only a tag says "rotate 90 degrees" (HEIC rotation is applied by libheif).
    ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of a 90 MP canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _high_bit_depth_to_l(image)
    elif image.mode in ("P", "PA", "1"):
        # Palette images may carry transparency in `info`; RGBA makes it an ordinary alpha channel.
        image = image.convert("RGBA")
    if image.width * image.height > max_pixels:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        # `thumbnail` keeps the aspect ratio and reduces in integer steps before the LANCZOS
        # pass (`reducing_gap`), which is both fast and free of aliasing. Downscaling before the
        # colour conversion below keeps that conversion cheap.
        image.thumbnail((max(1, int(image.width * scale)), max(1, int(image.height * scale))), Image.LANCZOS, reducing_gap=3.0)
    return _to_rgb(image, icc)


def _to_rgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """8-bit L/LA/RGB/RGBA/CMYK/YCbCr to RGB: alpha composited on white, colour through the ICC profile."""
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    if icc and image.mode in ("RGB", "CMYK"):
        converted = _icc_to_srgb(image, icc)
        if converted is not None:
            return converted
    return image if image.mode == "RGB" else image.convert("RGB")


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit or 32-bit greyscale to 8-bit by scaling its range, so bright pixels stay bright.

    Pillow's own `convert("L")` clips values above 255, which turns a 16-bit photo almost white.
    """
    values = np.asarray(image, dtype=np.float32)
    if image.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 65535.0
    else:
        top = 65535.0 if values.max(initial=0.0) > 255 else 255.0
    return Image.fromarray(np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), mode="L")


def _icc_to_srgb(image: Image.Image, icc: bytes) -> Image.Image | None:
    """Convert through the embedded colour profile (CMYK print files, Display P3 iPhone photos).

    Returns None when the profile is unusable; the caller then falls back to Pillow's plain conversion.
    """
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if image.mode == "RGB" and "srgb" in (ImageCms.getProfileDescription(source) or "").lower():
            return image  # already sRGB: nothing to convert
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def _short(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 80 else text[:77] + "..."
