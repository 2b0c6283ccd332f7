"""The learner's last word on prep's verdicts: use a rejected photo, or leave out an accepted one.

Prep's checks are measurements with thresholds, and a person knows things they do not: that the
"too dark" photo is the only one in profile, or that an accepted shot shows an expression they
never make. `set_decision` changes one photo's verdict in a prepared dataset:

- leaving a photo out removes its row from `metadata.jsonl` and moves its image (and its mask,
  `masks/<name>`, to `.set_aside/masks/`) into the hidden `.set_aside/` folder (imagefolder never reads hidden folders; the entry's `set_aside` names
  it), so using it again is instant;
- using a rejected photo crops its face exactly as prep does (prep's own crop, from the settings
  recorded in report.json), masks it as prep does, and adds it with the plain caption "a photo of
  <token> <class word>".

`report.json` records the new status with `"override": true`; the photo's reasons stay, so the
report still says what prep measured. The contact sheet shows prep's own verdicts.
"""

from __future__ import annotations

import json
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import read_jsonl, save_image, write_json, write_jsonl
from portraitkit.prep.masks import MASKS_DIR

SET_ASIDE = ".set_aside"
# Without a readable photo and a face there is nothing to crop: these verdicts are final.
FINAL_REASONS = ("unreadable", "processing_error", "no_face")


def read_report(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir) / "report.json"
    if not path.is_file():
        raise PortraitkitError(f"{dataset_dir} has no report.json; prepare your photos first with `portraitkit prep PHOTOS --out {dataset_dir}`")
    return json.loads(path.read_text(encoding="utf-8"))


def can_override(entry: dict) -> bool:
    """False for photos that cannot be used whatever the learner says (no image, no face)."""
    return not any(reason in FINAL_REASONS for reason in entry.get("reasons", []))


def set_decision(dataset_dir: str | Path, source: str, use: bool, photos_dir: str | Path | None = None) -> dict:
    """Use (`use=True`) or leave out the photo `source` (as named in report.json); return its entry.

    `photos_dir` (the folder prep read) is needed only to crop a photo that prep rejected.
    """
    dataset_dir = Path(dataset_dir)
    report = read_report(dataset_dir)
    entry = next((e for e in report["photos"] if e["source"] == source), None)
    if entry is None:
        raise PortraitkitError(f"{source} is not in {dataset_dir}/report.json; choose one of the photos prep examined")
    if (entry["status"] == "accepted") == use:
        return entry
    rows = read_jsonl(dataset_dir / "metadata.jsonl") if (dataset_dir / "metadata.jsonl").is_file() else []
    aside = dataset_dir / SET_ASIDE
    if use:
        if not can_override(entry):
            words = report.get("summary", {}).get("reason_words", {})
            why = ", ".join(words.get(r, r) for r in entry["reasons"])
            raise PortraitkitError(f"{source} cannot be used ({why}): there is no face to crop; add another photo instead")
        name = entry.get("set_aside") or _free_name(dataset_dir, source)
        if (aside / name).is_file():
            (aside / name).replace(dataset_dir / name)
            if (aside / MASKS_DIR / name).is_file():
                (aside / MASKS_DIR / name).replace(dataset_dir / MASKS_DIR / name)
        else:
            _crop_into(dataset_dir, name, source, photos_dir, report["config"])
        caption = entry.get("caption") or _plain_caption(report["config"])
        row = {"file_name": name, "text": caption}
        if (dataset_dir / MASKS_DIR / name).is_file():  # datasets from before masks have none
            row["mask_file_name"] = f"{MASKS_DIR}/{name}"
        rows.append(row)
        entry.pop("set_aside", None)
        entry.update(status="accepted", output=name, caption=caption, override=True)
    else:
        name = entry["output"]
        rows = [row for row in rows if row.get("file_name") != name]
        if (dataset_dir / name).is_file():
            aside.mkdir(exist_ok=True)
            (dataset_dir / name).replace(aside / name)
        if (dataset_dir / MASKS_DIR / name).is_file():  # the mask goes with its image
            (aside / MASKS_DIR).mkdir(parents=True, exist_ok=True)
            (dataset_dir / MASKS_DIR / name).replace(aside / MASKS_DIR / name)
        entry.update(status="rejected", output=None, set_aside=name, override=True)
    # The dataset first, then the report: after a crash between the two, the dataset is right
    # and re-running the toggle repairs the report.
    write_jsonl(dataset_dir / "metadata.jsonl", rows)
    summary = report.setdefault("summary", {})
    summary["accepted"] = sum(e["status"] == "accepted" for e in report["photos"])
    summary["rejected"] = len(report["photos"]) - summary["accepted"]
    if "min_accepted" in summary:
        summary["enough_to_train"] = summary["accepted"] >= summary["min_accepted"]
    write_json(dataset_dir / "report.json", report)
    return entry


def _plain_caption(settings: dict) -> str:
    from portraitkit.prep import PrepConfig, caption

    # prep's own caption with no measured words: what it would write for this person.
    return caption(PrepConfig(**_prep_fields(settings)))


def _prep_fields(settings: dict) -> dict:
    import dataclasses

    from portraitkit.prep import PrepConfig

    known = {f.name for f in dataclasses.fields(PrepConfig)}
    return {key: value for key, value in settings.items() if key in known}


def _crop_into(dataset_dir: Path, name: str, source: str, photos_dir, settings: dict) -> None:
    """Crop `source`'s largest face the way prep does, at the dataset's resolution, and mask it."""
    from portraitkit.faces.detect import detect_faces
    from portraitkit.faces.photos import open_photo
    from portraitkit.prep import PrepConfig, crop_face, crop_mask, face_geometry
    from portraitkit.prep.crops import CROP_PNG

    if photos_dir is None:
        raise PortraitkitError(f"to use {source}, give the photos folder prep read (photos_dir) so it can be cropped")
    config = PrepConfig(**_prep_fields(settings))
    image = open_photo(Path(photos_dir) / source, max_pixels=config.max_pixels)
    found = detect_faces(image)
    if not found:
        raise PortraitkitError(f"no face was found in {source}, so it cannot be cropped; add another photo instead")
    face = found[0]  # largest first: with several faces, the learner means the main one
    crop, corners, _ = crop_face(image, face, face_geometry(face.landmarks), config)
    save_image(dataset_dir / MASKS_DIR / name, crop_mask(face.landmarks, corners, config.resolution))
    save_image(dataset_dir / name, crop, **CROP_PNG)


def _free_name(dataset_dir: Path, source: str) -> str:
    from portraitkit.prep import output_stem

    stem = output_stem(source) or "photo"  # named as prep names the photos it accepts
    name, number = f"{stem}.png", 2
    while (dataset_dir / name).exists() or (dataset_dir / SET_ASIDE / name).exists() or name == "contact_sheet.png":
        name, number = f"{stem}-{number}.png", number + 1
    return name
