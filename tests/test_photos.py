"""open_photo on every kind of file a user's photo folder holds, good and bad."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portraitkit.core.errors import PortraitkitError
from portraitkit.faces.photos import DECODE_LIMIT_PIXELS, open_photo


@pytest.fixture(scope="module")
def portrait(portrait_path) -> Image.Image:
    return Image.open(portrait_path).convert("RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: Path, width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> Path:
    """A PNG written byte by byte, for what Pillow cannot write: 48-bit RGB, or a header with no pixels."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = _png_chunk(b"IHDR", header)
    if rows is not None:
        body += _png_chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + _png_chunk(b"IEND", b""))
    return path


def test_jpeg_opens_as_rgb(portrait_path, portrait):
    image = open_photo(portrait_path)
    assert image.mode == "RGB" and image.size == portrait.size == (512, 600)


def test_exif_orientation_is_applied(tmp_path, portrait):
    # A phone held upright stores the pixels sideways and the tag 6 ("rotate 90 clockwise to view").
    sideways = portrait.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    sideways.save(path, quality=95, exif=exif)
    upright = open_photo(path)
    assert upright.size == portrait.size
    difference = np.abs(np.asarray(upright, dtype=np.int16) - np.asarray(portrait, dtype=np.int16)).mean()
    assert difference < 4  # only JPEG noise: same orientation as the original


def test_alpha_is_composited_on_white(tmp_path, portrait):
    rgba = portrait.convert("RGBA")
    alpha = np.full(portrait.size[::-1], 255, np.uint8)
    alpha[:50] = 0  # top band fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "cutout.png")
    image = open_photo(tmp_path / "cutout.png")
    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert (pixels[:50] == 255).all()
    assert np.array_equal(pixels[100:], np.asarray(portrait)[100:])


def test_greyscale_and_palette(tmp_path, portrait):
    portrait.convert("L").save(tmp_path / "grey.jpg")
    portrait.convert("P").save(tmp_path / "palette.gif")
    grey = np.asarray(open_photo(tmp_path / "grey.jpg"))
    assert grey.shape == (600, 512, 3) and (grey[..., 0] == grey[..., 2]).all()
    assert open_photo(tmp_path / "palette.gif").mode == "RGB"


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.full((40, 60), 32768, np.uint16)  # mid-grey in 16 bits
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    pixels = np.asarray(open_photo(tmp_path / "grey16.png"))
    assert np.all(np.abs(pixels.astype(int) - 128) <= 1)


def test_16_bit_rgb_png(tmp_path):
    # 48-bit RGB: rows of (filter byte 0, then big-endian R, G, B samples).
    height, width = 30, 20
    sample = np.zeros((height, width, 3), ">u2")
    sample[..., 0] = 60000  # strong red
    sample[..., 2] = 16000
    rows = b"".join(b"\x00" + sample[y].tobytes() for y in range(height))
    path = write_png(tmp_path / "rgb48.png", width, height, 16, 2, rows)
    pixels = np.asarray(open_photo(path)).astype(int)
    assert pixels.shape == (height, width, 3)
    assert abs(pixels[..., 0].mean() - 60000 / 257) <= 2 and pixels[..., 1].max() <= 1


def test_cmyk_jpeg_keeps_its_colours(tmp_path, portrait):
    tinted = Image.merge("RGB", (portrait.getchannel(0), portrait.getchannel(1).point(lambda v: v // 2), portrait.getchannel(2)))
    tinted.convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    image = open_photo(tmp_path / "print.jpg")
    assert image.mode == "RGB"
    means = np.asarray(image, dtype=float).mean(axis=(0, 1))
    expected = np.asarray(tinted, dtype=float).mean(axis=(0, 1))
    assert np.abs(means - expected).max() < 6


@pytest.mark.parametrize("suffix, save_args", [(".webp", {"quality": 90}), (".heic", {"quality": 80})])
def test_webp_and_heic(tmp_path, portrait, suffix, save_args):
    if suffix == ".heic":
        pytest.importorskip("pillow_heif").register_heif_opener()
    path = tmp_path / f"photo{suffix}"
    portrait.save(path, **save_args)
    image = open_photo(path)
    assert image.size == portrait.size and image.mode == "RGB"
    assert np.abs(np.asarray(image, dtype=float) - np.asarray(portrait, dtype=float)).mean() < 6


def test_large_jpeg_is_downscaled_to_max_pixels(tmp_path):
    # A 27 MP photo; JPEG draft mode decodes it at 1/2 scale straight away.
    gradient = np.linspace(0, 255, 6000, dtype=np.uint8)[None, :, None].repeat(4500, 0).repeat(3, 2)
    Image.fromarray(gradient).save(tmp_path / "big.jpg", quality=80)
    image = open_photo(tmp_path / "big.jpg", max_pixels=4_000_000)
    assert image.width * image.height <= 4_000_000
    assert abs(image.width / image.height - 6000 / 4500) < 0.01


def test_canvas_over_the_decode_limit_is_refused_before_decoding(tmp_path):
    # Only a header: 12000 x 9000 = 108 MP declared, no pixel data. Refusal must come from the header.
    path = write_png(tmp_path / "huge.png", 12000, 9000, 8, 2, rows=None)
    assert 12000 * 9000 > DECODE_LIMIT_PIXELS
    with pytest.raises(PortraitkitError, match="MP"):
        open_photo(path)


def test_decompression_bomb_is_refused(tmp_path):
    path = write_png(tmp_path / "bomb.png", 60000, 60000, 8, 2, rows=None)
    with pytest.raises(PortraitkitError, match="large"):
        open_photo(path)


def test_unreadable_files_raise_portraitkit_error(tmp_path, portrait_path):
    data = Path(portrait_path).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is not a photo\n")
    for name in ("truncated.jpg", "empty.jpg", "notes.jpg", "missing.jpg"):
        with pytest.raises(PortraitkitError):
            open_photo(tmp_path / name)


def test_photos_over_pillows_canvas_limit_open_when_jpeg_draft_shrinks_them(tmp_path, monkeypatch):
    # Pillow refuses canvases over 2 x MAX_IMAGE_PIXELS (179 MP by default) before decoding; a
    # 200 MP phone JPEG must still open, decoded at reduced size. Here the limit is scaled down.
    gradient = np.linspace(0, 255, 3000, dtype=np.uint8)[None, :, None].repeat(1500, 0).repeat(3, 2)
    Image.fromarray(gradient).save(tmp_path / "phone.jpg", quality=85)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    image = open_photo(tmp_path / "phone.jpg", max_pixels=1_000_000)
    assert image.width * image.height <= 1_000_000 and abs(image.width / image.height - 2) < 0.01
    assert Image.MAX_IMAGE_PIXELS == 1_000_000  # Pillow's own setting is left as it was


def test_multi_picture_jpeg_is_read_as_the_jpeg_it_is(tmp_path, portrait_path):
    photo = Image.open(portrait_path).convert("RGB")
    photo.save(tmp_path / "iphone.jpg", format="MPO", save_all=True, append_images=[photo.resize((64, 75))])
    assert Image.open(tmp_path / "iphone.jpg").format == "MPO"  # what Pillow calls a JPEG with an MPF block
    image = open_photo(tmp_path / "iphone.jpg", max_pixels=40_000)
    assert image.size[0] * image.size[1] <= 40_000 and image.mode == "RGB"
