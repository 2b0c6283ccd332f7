"""How long `prepare` takes on 20 phone-sized photos (12 MP JPEGs), the issue's quality bar.

    python benchmarks/bench_prep.py            # prints seconds in total and per photo

The photos are made from data/samples: each sample enlarged onto a 4032 x 3024 canvas (a
12 MP phone photo), with sensor-like noise so the JPEGs weigh what phone files do (3-6 MB),
half of them stored sideways with an EXIF orientation tag as phones held upright do. They
are written to a temporary folder, then timed through the whole stage (reading, detection,
measures, identity, duplicates, crops, contact sheet, report) after the face models are
loaded once, as they would be after the first photo of a real run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from portraitkit.faces.photos import open_photo
from portraitkit.prep import PrepConfig, prepare

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
PHONE = (4032, 3024)  # 12.2 MP, the main camera of most phones


def make_phone_photos(folder: Path, count: int = 20, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    sources = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png", ".webp"))
    paths = []
    for i in range(count):
        sample = open_photo(sources[i % len(sources)])
        upright = i % 2 == 0  # portrait orientation, stored sideways with EXIF tag 6
        width, height = (PHONE[1], PHONE[0]) if upright else PHONE
        scale = min(width / sample.width, height / sample.height) * rng.uniform(0.6, 0.95)
        enlarged = sample.resize((int(sample.width * scale), int(sample.height * scale)), Image.BICUBIC)
        canvas = np.empty((height, width, 3), np.float32)
        canvas[:] = rng.uniform(60, 200, 3)  # a plain wall
        left, top = rng.integers(0, width - enlarged.width + 1), rng.integers(0, height - enlarged.height + 1)
        canvas[top : top + enlarged.height, left : left + enlarged.width] = np.asarray(enlarged)
        canvas += rng.normal(0, 3.0, canvas.shape).astype(np.float32)  # sensor noise, as phones leave it
        photo = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
        path = folder / f"IMG_{1000 + i}.jpg"
        if upright:
            exif = Image.Exif()
            exif[0x0112] = 6
            photo.transpose(Image.Transpose.ROTATE_90).save(path, quality=92, exif=exif)
        else:
            photo.save(path, quality=92)
        paths.append(path)
    return paths


def main() -> None:
    from portraitkit.faces import detect

    with tempfile.TemporaryDirectory() as tmp:
        photos_dir, out_dir = Path(tmp) / "photos", Path(tmp) / "dataset"
        photos_dir.mkdir()
        paths = make_phone_photos(photos_dir)
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        # load the three dlib models once, as the first photo of any run does
        detect.detect_faces(Image.new("RGB", (64, 64)))
        detect._shape_predictor(), detect._recognizer()
        start = time.perf_counter()
        result = prepare(photos_dir, out_dir, PrepConfig())
        seconds = time.perf_counter() - start
    print(
        f"prepare: {len(paths)} photos of {PHONE[0]}x{PHONE[1]} ({size_mb:.0f} MB of JPEG) in {seconds:.1f} s "
        f"({seconds / len(paths):.2f} s per photo) on {os.cpu_count()} CPU cores; "
        f"{result.summary['accepted']} accepted"
    )


if __name__ == "__main__":
    main()
