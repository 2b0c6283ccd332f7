"""The proportions measure (`faces.proportions`) on real people's photos: how much it varies
between shots of one person, how far a camera's distance moves it, and so the smallest change it
can tell from noise.

    python benchmarks/bench_proportions.py FOLDER      # a folder of PERSON/PHOTO sub-folders

It prints, side by side:

1. **between shots**: for each person with at least three near-frontal photos (turned at most
   `FRONTAL_YAW`), the spread of each ratio (1.4826 x median absolute deviation over the median,
   in %), then the median and range over people. Public photos of a person come from many cameras
   and distances, so this is an upper bound of the noise at one distance;
2. **a camera's distance**: each near-frontal photo re-rendered as if taken from 30.5 cm instead
   of 152.4 cm (Ward et al.'s two distances) by the head model's warp (`teach.lens_warp`), its face
   found again and measured: the ratio's change beside the head model's prediction. The warp is
   the head model's own, so this checks that the measure reads what a perspective change moves,
   not that real selfies move it as much: no photos of one face from known distances reached here;
3. **the smallest change told from noise**: twice the median spread between shots;
4. **one portrait told apart**: each near-frontal photo of a person with four or more, and its
   30.5 cm re-render, against the median of the person's *other* photos, as pick compares a
   portrait with the person's proportions: at each threshold, the share of the real photos called
   different (false alarms: they are the person as photographed) and of the re-renders called wider
   (detections).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read(folder: Path) -> dict[str, list[dict]]:
    """{person: [{"file", "ratios", "face", "image"}]} of the near-frontal photos whose landmarks landed."""
    from portraitkit.faces.detect import detect_faces
    from portraitkit.faces.photos import PHOTO_SUFFIXES, open_photo
    from portraitkit.faces.proportions import measure, not_measured

    people = {}
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = []
        for path in sorted(p for p in person.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES):
            image = open_photo(path)
            found = detect_faces(image)
            if found and not_measured(found[0]) is None:
                photos.append({"file": path.name, "ratios": measure(found[0].landmarks), "face": found[0], "image": image})
        people[person.name] = photos
    return people


def between_shots(people: dict) -> dict:
    from portraitkit.faces.proportions import RATIOS, relative_spread_pct

    print("1. between shots of one person (near-frontal photos; spread = 1.4826 MAD / median, %)")
    spreads = {ratio: [] for ratio in RATIOS}
    for person, photos in people.items():
        if len(photos) < 3:
            continue
        row = {ratio: relative_spread_pct([p["ratios"][ratio] for p in photos]) for ratio in RATIOS}
        for ratio in RATIOS:
            spreads[ratio].append(row[ratio])
        print(f"   {person:40s} {len(photos):3d} photos  " + "  ".join(f"{r} {row[r]:5.1f}%" for r in RATIOS))
    for ratio in RATIOS:
        values = spreads[ratio]
        if values:
            print(f"   {ratio}: median {np.median(values):.1f}% over {len(values)} people (range {min(values):.1f}-{max(values):.1f}%)")
    return {ratio: float(np.median(v)) if v else math.nan for ratio, v in spreads.items()}


def distance_change(people: dict) -> None:
    from portraitkit.faces.detect import detect_faces
    from portraitkit.faces.proportions import RATIOS, measure, not_measured
    from portraitkit.teach.lens import REFERENCE_CM, distortion
    from portraitkit.teach.lens_warp import warp_to_distance

    near = 30.5
    model = distortion(near, REFERENCE_CM)
    predicted = {"nose_width": model.nose_to_face_width, "nose_length": model.nose_length}
    changes = {ratio: [] for ratio in RATIOS}
    lost = 0
    for photos in people.values():
        for photo in photos:
            warped, _ = warp_to_distance(photo["image"], near, from_cm=REFERENCE_CM, face=photo["face"])
            found = detect_faces(warped)
            if not found or not_measured(found[0]) is not None:
                lost += 1
                continue
            after = photo["near"] = measure(found[0].landmarks)
            for ratio in RATIOS:
                changes[ratio].append(100 * (after[ratio] / photo["ratios"][ratio] - 1))
    print(f"2. re-rendered from {REFERENCE_CM:.1f} cm to {near} cm by the head model's warp ({lost} faces lost)")
    for ratio in RATIOS:
        values = changes[ratio]
        if values:
            print(f"   {ratio}: median {np.median(values):+.1f}% (quartiles {np.percentile(values, 25):+.1f} to "
                  f"{np.percentile(values, 75):+.1f}%, {len(values)} photos); the head model predicts {predicted[ratio]:+.1f}%")


def one_portrait(people: dict, thresholds=(8, 10, 12, 14, 16, 18)) -> None:
    from portraitkit.faces.proportions import MIN_CHANGE_PCT

    real, near = [], []  # nose-width difference (%) from the median of the person's other photos
    for photos in people.values():
        if len(photos) < 4:
            continue
        for index, photo in enumerate(photos):
            centre = float(np.median([p["ratios"]["nose_width"] for j, p in enumerate(photos) if j != index]))
            real.append(100 * (photo["ratios"]["nose_width"] / centre - 1))
            if "near" in photo:
                near.append(100 * (photo["near"]["nose_width"] / centre - 1))
    if not real or not near:
        print("4. one portrait against the person's other photos: no person with four or more near-frontal photos")
        return
    print(f"4. one portrait against the person's other photos (nose width; {len(real)} photos, {len(near)} re-rendered "
          f"from 30.5 cm; pick's line today {MIN_CHANGE_PCT:.0f}%)")
    print(f"   {'threshold':>10}{'real photos called different':>31}{'30.5 cm re-renders called wider':>34}")
    for threshold in thresholds:
        alarms = np.mean([abs(d) > threshold for d in real])
        caught = np.mean([d > threshold for d in near])
        print(f"   {threshold:>9}%{alarms:>31.0%}{caught:>34.0%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="PERSON/PHOTO sub-folders of real people's photos")
    args = parser.parse_args(argv)
    people = read(args.folder)
    print(f"{sum(map(len, people.values()))} near-frontal photos of {len(people)} people in {args.folder}")
    noise = between_shots(people)
    distance_change(people)
    print("3. the smallest change told from noise (twice the median spread between shots): "
          + ", ".join(f"{ratio} {2 * value:.1f}%" for ratio, value in noise.items()))
    one_portrait(people)
    return 0


if __name__ == "__main__":
    sys.exit(main())
