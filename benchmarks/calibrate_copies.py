"""Calibrate the copy flag (portraitkit/pick/copies.py) on the sample photos: what copies, composites,
other people and differently framed crops measure against the training crops.

    python benchmarks/calibrate_copies.py            # prepares data/samples into a temporary folder
    python benchmarks/calibrate_copies.py --dataset DATASET

Prints one line per case (structural similarity and face layout distance to the closest training
crop, whether it is flagged, the identity distance) and the range of each kind.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter

REPO = Path(__file__).resolve().parents[1]


def reencoded(crop: Image.Image) -> dict[str, Image.Image]:
    """A training crop as a LoRA that memorised it might give it back: re-encoded, resized, shifted in colour."""
    buffer = io.BytesIO()
    crop.save(buffer, "JPEG", quality=70)
    return {
        "jpeg q70": Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"),
        "resized to 768": crop.resize((768, 768), Image.Resampling.BICUBIC),
        "warmer and brighter": ImageEnhance.Brightness(ImageEnhance.Color(crop).enhance(1.3)).enhance(1.1),
        "sharpened": crop.filter(ImageFilter.UnsharpMask(2, 120, 2)),
    }


def composite(crop: Image.Image, mask: Image.Image, scene: Image.Image, scale: float, centre: tuple[float, float]) -> Image.Image:
    """The crop's masked face and hair pasted, at `scale`, with its centre at `centre` (fractions), into `scene`."""
    size = crop.width
    scene = scene.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    box = mask.getbbox()
    face, face_mask = crop.crop(box), mask.crop(box)
    w, h = round(face.width * scale), round(face.height * scale)
    face, face_mask = face.resize((w, h), Image.Resampling.LANCZOS), face_mask.resize((w, h), Image.Resampling.LANCZOS)
    scene.paste(face, (round(centre[0] * size - w / 2), round(centre[1] * size - h / 2)), face_mask)
    return scene


def main() -> None:
    from portraitkit.pick.copies import COPY_LAYOUT, COPY_SSIM, CopyDetector
    from portraitkit.faces.detect import detect_faces, face_embedding
    from portraitkit.prep import prepare
    from portraitkit.pick.likeness import IdentityScorer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="a prepared dataset (default: data/samples prepared now)")
    args = parser.parse_args()
    dataset = Path(args.dataset) if args.dataset else Path(tempfile.mkdtemp()) / "samples"
    if not args.dataset:
        prepare(REPO / "data" / "samples", dataset)
    rows = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
    crops = {row["file_name"]: Image.open(dataset / row["file_name"]).convert("RGB") for row in rows}
    masks = {row["file_name"]: Image.open(dataset / row["mask_file_name"]) for row in rows}
    detector = CopyDetector(list(crops), list(crops.values()))
    scorer = IdentityScorer.from_folder(dataset)

    scenes = {"coffee": Image.open(REPO / "data" / "samples" / "coffee.jpg"),
              "astronaut's room": Image.open(REPO / "data" / "samples" / "astronaut.jpg").crop((300, 0, 512, 212)),
              "grey wall": Image.new("RGB", (64, 64), (128, 124, 118))}
    kinds: dict[str, list] = {"copy": [], "composite": [], "another person": [], "other framing": []}

    def measure(kind: str, label: str, image: Image.Image, exclude: str | None = None) -> None:
        found = detect_faces(image)
        face = found[0] if found else None
        if exclude:  # another crop of the set, compared with all but itself
            others = [n for n in crops if n != exclude]
            detector_ = CopyDetector(others, [crops[n] for n in others])
        else:
            detector_ = detector
        closest = detector_.closest(image, face)
        flagged = detector_.copies(image, face) is not None
        identity = scorer.distance(face_embedding(image, face)) if face else None
        kinds[kind].append((closest.ssim, closest.layout, flagged))
        print(f"{kind:15} {label:45} ssim {closest.ssim:.3f} layout {closest.layout:.3f} "
              f"{'FLAGGED' if flagged else 'not flagged'}  identity {identity if identity is None else round(identity, 3)}")

    for name, crop in crops.items():
        for how, image in reencoded(crop).items():
            measure("copy", f"{name} {how}", image)
        for scene_name, scene in scenes.items():
            for scale, centre in [(0.8, (0.35, 0.45)), (0.6, (0.6, 0.5))]:
                measure("composite", f"{name} in {scene_name} x{scale}", composite(crop, masks[name], scene, scale, centre))
        measure("other framing", name, crop, exclude=name)
    astronaut = Image.open(REPO / "data" / "samples" / "astronaut.jpg").convert("RGB")
    for box in [(120, 0, 376, 256), (100, 0, 400, 300), (150, 10, 330, 190)]:
        measure("another person", f"astronaut {box}", astronaut.crop(box).resize((512, 512)))
    print(f"\nthresholds: flagged when ssim >= {COPY_SSIM} and layout <= {COPY_LAYOUT}")
    for kind, values in kinds.items():
        s = [v[0] for v in values]
        lay = [v[1] for v in values]
        print(f"{kind:15} n={len(values):3}  ssim {min(s):.2f}-{max(s):.2f}  layout {min(lay):.3f}-{max(lay):.3f}  "
              f"flagged {sum(v[2] for v in values)}")


if __name__ == "__main__":
    main()
