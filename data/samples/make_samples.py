"""Regenerate the sample photos in this folder from public-domain images that ship in packages.

    python data/samples/make_samples.py   # the astronaut and coffee photos come with scikit-image

Sources (both public domain or CC0, see README.md):
- matplotlib's `grace_hopper.jpg` (US Navy photo of Grace Hopper), `matplotlib.cbook.get_sample_data`;
- scikit-image's `astronaut` (NASA photo of Eileen Collins) and `coffee` (CC0, Rachel Michetti).

Every Grace Hopper variant is one photograph altered to stand in for the varied, imperfect
photos a real user has: each differs in framing (crop, rotation, mirroring) so that it is not
the same shot twice, and most also in light, colour, format or focus. Degradations come from
`portraitkit.teach.degrade`, the same simulations notebook 02 teaches with. The output is
deterministic: running the script twice writes identical pixels.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.cbook
from PIL import Image, ImageDraw, ImageFilter

from portraitkit.teach import degrade

HERE = Path(__file__).resolve().parent


def _skimage_data():
    try:
        import skimage.data
    except ImportError as error:
        raise SystemExit("Regenerating the samples needs scikit-image: pip install scikit-image") from error
    return skimage.data


def _save_jpeg(image: Image.Image, name: str, quality: int = 90, **kwargs) -> None:
    image.save(HERE / name, quality=quality, optimize=True, **kwargs)


def _rotate_and_crop(image: Image.Image, degrees: float, box: tuple[int, int, int, int]) -> Image.Image:
    """Rotate about the centre, then crop inside the rotated frame so no empty corner shows."""
    return image.rotate(degrees, resample=Image.BICUBIC).crop(box)


def main() -> None:
    skdata = _skimage_data()
    original_path = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    hopper = Image.open(original_path).convert("RGB")  # 512 x 600, face about 215 px wide
    assert hopper.size == (512, 600), "matplotlib's grace_hopper.jpg has changed; check the crops below"

    # 1. The original file, byte for byte.
    (HERE / "hopper.jpg").write_bytes(original_path.read_bytes())

    # 2. Closer framing under a ceiling bulb: tungsten light only partly white-balanced.
    _save_jpeg(degrade.add_color_cast(hopper.crop((60, 70, 470, 480)), 0.6, "tungsten"), "hopper_warm_closeup.jpg")

    # 3. Head tilted (camera rolled 8 degrees), a little overexposed on a sunny day.
    tilted = _rotate_and_crop(hopper, 8, (30, 40, 490, 580))
    _save_jpeg(degrade.change_exposure(tilted, 0.5), "hopper_tilted_bright.jpg")

    # 4. Mirrored (a front camera's preview), a shade darker, saved as WEBP by a messaging app.
    mirrored = hopper.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((0, 20, 470, 600))
    degrade.change_exposure(mirrored, -0.6).save(HERE / "hopper_mirrored_dim.webp", quality=85)

    # 5. A phone held upright: pixels stored sideways, EXIF orientation 6 says "rotate to view".
    #    Framed with the face off-centre and more of the body.
    offset = hopper.crop((60, 90, 512, 600))
    exif = Image.Exif()
    exif[0x0112] = 6
    _save_jpeg(offset.transpose(Image.Transpose.ROTATE_90), "hopper_phone_sideways.jpg", exif=exif)

    # 6. Black and white, as an old scan or a filter would give.
    hopper.convert("L").crop((0, 0, 440, 520)).save(HERE / "hopper_greyscale.png", optimize=True)

    # 7. A cut-out with a transparent background (a "remove background" app), tilted the other way.
    cutout = _rotate_and_crop(hopper, -5, (36, 36, 476, 576)).convert("RGBA")
    mask = Image.new("L", cutout.size, 0)
    ImageDraw.Draw(mask).ellipse((20, 0, cutout.width - 20, cutout.height + 200), fill=255)
    cutout.putalpha(mask.filter(ImageFilter.GaussianBlur(6)))
    # Fewer colours keep the PNG small; 256 adaptive colours plus alpha look the same at this size.
    cutout.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(HERE / "hopper_cutout.png", optimize=True)

    # 8. An iPhone photo (HEIC) under an overhead light: dark eye sockets, shadow under the nose.
    overhead = degrade.add_overhead_light(hopper.crop((40, 60, 512, 520)), 0.9)
    try:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        overhead.save(HERE / "hopper_overhead.heic", quality=80)
    except (ImportError, OSError, KeyError) as error:  # no HEIF encoder in this build
        print(f"HEIC not written ({error}); saving the overhead-light sample as JPEG instead")
        _save_jpeg(overhead, "hopper_overhead.jpg")

    # 9. Slightly soft focus, framed lower: still fine to train on.
    _save_jpeg(degrade.blur(hopper.crop((50, 70, 470, 600)), 0.8), "hopper_soft.jpg")

    # --- photos prep should reject -------------------------------------------------------------

    # 10. Clearly blurry (missed focus), framed like the original so only the blur is wrong.
    _save_jpeg(degrade.blur(hopper.crop((20, 20, 500, 590)), 4.0), "hopper_blurry.jpg")

    # 11. Underexposed: three stops too dark, as indoors at night without flash.
    _save_jpeg(degrade.change_exposure(hopper.crop((0, 60, 460, 600)), -3.0), "hopper_underexposed.jpg")

    # 12. Overexposed: two and a half stops too bright, the face washed out.
    _save_jpeg(degrade.change_exposure(hopper.crop((30, 0, 512, 580)), 2.5), "hopper_overexposed.jpg")

    # 13. A duplicate of hopper.jpg: the same shot downscaled and re-saved, as a social-media copy.
    duplicate = Image.open(HERE / "hopper.jpg").convert("RGB").resize((435, 510), Image.LANCZOS)
    _save_jpeg(duplicate, "hopper_duplicate.jpg", quality=70)

    # 14. Too small a face: the photo shrunk to a quarter, as in a group shot's thumbnail.
    small = hopper.resize((160, 188), Image.LANCZOS)
    canvas = Image.new("RGB", (320, 300), (180, 190, 200))
    canvas.paste(small, (80, 60))
    _save_jpeg(canvas, "hopper_tiny_face.jpg")

    # 15. Two people, neither dominant: Grace Hopper and the astronaut side by side.
    astronaut = Image.fromarray(skdata.astronaut())  # 512 x 512, face about 110 px wide
    pair = Image.new("RGB", (800, 440), (200, 200, 200))
    pair.paste(hopper.resize((256, 300), Image.LANCZOS), (0, 70))
    pair.paste(astronaut.crop((80, 0, 380, 340)).resize((300, 340), Image.LANCZOS), (470, 50))
    _save_jpeg(pair, "two_people.jpg")

    # 16. A different person: Eileen Collins (NASA).
    _save_jpeg(astronaut, "astronaut.jpg")

    # 17. No face at all: a cup of coffee.
    _save_jpeg(Image.fromarray(skdata.coffee()), "coffee.jpg")

    samples = [p for p in HERE.iterdir() if p.suffix not in (".py", ".md")]
    print(f"wrote {len(samples)} samples, {sum(p.stat().st_size for p in samples) / 1e6:.2f} MB in {HERE}")


if __name__ == "__main__":
    main()
