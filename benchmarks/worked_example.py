"""The likeness curve's worked example, measured on real photos of one person: the numbers notebook 04
draws beside a toy run's empty curve.

    python benchmarks/worked_example.py FOLDER [--out portraitkit/assets/likeness_worked_example.json]

FOLDER holds PERSON/PHOTO sub-folders of real photos (the calibration set of docs/judge.md). No LoRA
is trained: a training run is scripted with real photos standing in for what a LoRA draws as it
learns. Five of the person's photos are the "training photos"; each validated step's eight
"renders" are real photos scored by validation's own `score_validation_step`, exactly as a run's
renders are:

    step 100: other people (an early LoRA draws a generic face)
    step 200: half other people, half the person's other shots
    step 300: the person's other shots (a LoRA that draws the person anew)
    step 400: half the person's other shots, half edits of the training photos
    step 500: edits of the training photos (a LoRA that gives its photos back)

Only numbers are written (distances, counts, the band, the proportions' drift): no picture, no
file name, no name of the person. The photos themselves are not shipped (their licence is not
clean); the JSON records which set and how many photos it was measured on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_judge import edits, read_groups  # noqa: E402

OUT = ROOT / "portraitkit" / "assets" / "likeness_worked_example.json"
TRAINING = 4
RENDERS = 8


def judged_shots(paths: list[Path]) -> list:
    """The person's photos whose face validation would judge (found, landmarks landed, not turned too far)."""
    from portraitkit.faces.detect import detect_faces
    from portraitkit.faces.photos import open_photo
    from portraitkit.faces.pose import turned_too_far

    found = []
    for path in paths:
        image = open_photo(path)
        faces = detect_faces(image)
        if len(faces) == 1 and faces[0].landmarks_fit and turned_too_far(faces[0]) is None:
            found.append(image)
    return found


def scripted_steps(person: list, others: list) -> dict[int, list]:
    """Step -> its "renders": the script in the module's docstring."""
    training, new = person[:TRAINING], person[TRAINING:]
    copies = [edits(image)["re-render"] for image in training]
    half = RENDERS // 2

    def cycle(pool: list, count: int, start: int = 0) -> list:
        return [pool[(start + i) % len(pool)] for i in range(count)]

    return {100: cycle(others, RENDERS), 200: cycle(others, half, RENDERS) + cycle(new, half),
            300: cycle(new, RENDERS), 400: cycle(new, half, 1) + cycle(copies, half), 500: cycle(copies, RENDERS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a folder of PERSON/PHOTO sub-folders of real photos")
    parser.add_argument("--person", help="the sub-folder of the person (default: the one with the most photos)")
    parser.add_argument("--groups", help="lines of tab-separated files (relative to FOLDER) that are one photograph: "
                        "all but the first of each are left out (default: FOLDER/same_photo_groups.txt where it exists)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)

    from portraitkit.core.files import write_json
    from portraitkit.pick.likeness import person_proportions_of
    from portraitkit.train.validate import score_validation_step

    folder = Path(args.folder)
    groups = Path(args.groups) if args.groups else folder / "same_photo_groups.txt"
    repeated = {name for group in read_groups(folder, groups if groups.is_file() else None) for name in sorted(group)[1:]}
    people = {p.name: sorted(x for x in p.iterdir() if x.suffix.lower() in (".jpg", ".jpeg", ".png")
                             and f"{p.name}/{x.name}" not in repeated)
              for p in sorted(folder.iterdir()) if p.is_dir()}
    name = args.person or max(people, key=lambda p: (len(people[p]), p))
    person = judged_shots(people[name])
    if len(person) < TRAINING + RENDERS // 2:
        print(f"{name}: only {len(person)} judged photos; need {TRAINING + RENDERS // 2}")
        return 1
    others = [image for other in sorted(people) if other != name for image in judged_shots(people[other][:1])]
    training = person[:TRAINING]
    proportions = person_proportions_of(folder / name, training)
    with tempfile.TemporaryDirectory() as run:
        for step, renders in scripted_steps(person, others).items():
            record = score_validation_step(Path(run), step, renders, training, 500, save_best=lambda _: None,
                                           proportions=proportions)
    record["worked_example"] = {
        "what": "no LoRA was trained: each step's 'renders' are real photos, scored by validation's own code",
        "script": {"100": "other people", "200": "half other people, half the person's other shots",
                   "300": "the person's other shots",
                   "400": "half the person's other shots, half edits of the training photos",
                   "500": "edits of the training photos: a 4 px crop, resized, warmer, JPEG 60"},
        "data": (f"one person's {len(person)} judged photos ({TRAINING} as the training photos) and {len(others)} other "
                 f"people's, from the calibration set of docs/judge.md; the photos are not shipped"),
        "command": f"python benchmarks/worked_example.py FOLDER --person {name}",
    }
    write_json(Path(args.out), record)
    best = record["best_step"]
    print(f"{args.out}: steps {[row['step'] for row in record['steps']]}, best/ = step {best}")
    for row in record["steps"]:
        print(f"  step {row['step']}: likeness {row['likeness']}, in band {row['in_band']} of {row['scored']}, "
              f"copying {row['copying']}, copies {row['copies']}, variety {row['variety']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
