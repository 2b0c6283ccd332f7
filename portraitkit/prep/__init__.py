"""Preparation: from a folder of casual photos to a checked, captioned training set.

    result = prepare("photos/", "dataset/", PrepConfig(token="sks", class_word="person"))

The most common reason a personal LoRA looks unlike its owner is a bad training set, so every
photo is checked, and every decision is written down with the measurements behind it:

1. open it safely (`photos.open_photo`: formats, EXIF orientation, 16-bit, alpha, huge files);
2. find the face (`detect.detect_faces`: the frontal detector, then the CNN one for turned
   heads): none, several of similar size, one too small to train on without enlarging it into
   mush, or one turned so far that its landmarks miss it (`turned_away`) are rejections;
3. measure it (`diagnose.diagnose_image` on the face): blur and bad exposure are rejections;
   colour cast, harsh shadows, compression, noise and sharpening halos are warnings;
4. compare the set: the same shot twice is `duplicate` (a re-saved copy) or `same_photograph`
   (a crop, colour edit or mirror image: the whole pictures line up, `faces.photograph`), naming
   the one kept; a face that is not the person most of the set shows is `different_person` (the
   set's consensus decides, not the first file);
5. crop a square around the face with head-and-shoulders margins, straightened by the eye line,
   resized with LANCZOS, and caption it "a photo of <token> <class word>" plus measured words;
6. measure how far the camera was (`distance`: EXIF focal length and the pupils' separation),
   warn when the set is arm's-length selfies, and with `correct_distance` re-render close-ups
   from 150 cm before the crop, so the LoRA does not learn a selfie's wider nose as the face.
7. mask the person's face and hair in the crop, from the landmarks (`masks`), for the masked loss.

Outputs in the dataset folder (see `prepare`): the prepared PNGs and `metadata.jsonl` (a Hugging
Face `imagefolder`), `report.json` (with the person's `likeness_band`, `faces.likeness`) and
`contact_sheet.png`. A file that cannot be read, or any
other failure on one photo, is recorded against that photo and the run goes on.

The stage, one module per concept: `config` (PrepConfig), `photo` (what is learned about one
input, the reason codes), `intake` (finding, examining, staging and publishing the photos),
`checks` (quality, duplicates, identity, variety), `shots` (backgrounds told apart, in the face's
own frame), `crops` (face geometry, the crop, its look,
the caption), `distance` (camera distance and its correction), `masks` (the face-and-hair mask of each crop), `report` (summary, report entries, contact sheet).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portraitkit.core import files
from portraitkit.prep import checks, distance, intake, proportions, report
from portraitkit.prep.config import PrepConfig
from portraitkit.prep.crops import caption, crop_face, face_geometry, size_conditioning
from portraitkit.prep.intake import STAGING, output_stem
from portraitkit.prep.masks import MASKS_DIR, crop_mask
from portraitkit.prep.photo import REJECTIONS, WARNINGS, Photo

__all__ = ["MASKS_DIR", "REJECTIONS", "STAGING", "WARNINGS", "Photo", "PrepConfig", "PrepResult", "caption", "crop_face",
           "crop_mask", "face_geometry", "output_stem", "prepare"]


@dataclass
class PrepResult:
    """What `prepare` did: per-photo entries as written to report.json, a summary, the variety."""

    out_dir: Path
    entries: list[dict[str, Any]]
    summary: dict[str, Any]
    variety: dict[str, Any]

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [entry for entry in self.entries if entry["status"] == "accepted"]

    @property
    def enough(self) -> bool:
        return self.summary["enough_to_train"]

    @property
    def message(self) -> str:
        """One sentence: how many photos are usable and, when too few, what to add."""
        return self.summary["message"]


def prepare(photos_dir: str | Path, out_dir: str | Path, config: PrepConfig | None = None) -> PrepResult:
    """Check, crop and caption every photo in `photos_dir` (and its sub-folders) into `out_dir`.

    Writes to `out_dir`:
    - one `<name>.png` per accepted photo, `config.resolution` pixels square;
    - `masks/<name>.png`: each accepted crop's face-and-hair mask (`prep.masks` says what it covers);
    - `metadata.jsonl`: `{"file_name", "text", "mask_file_name"}` per accepted photo, so
      `datasets.load_dataset("imagefolder", data_dir=out_dir)` gives `image`, `text` and `mask` columns;
    - `report.json`: per input `source`, `status`, `reasons`, `warnings`, `output`, `caption` and
      `measurements`, plus `summary`, `variety` and the `config` used;
    - `contact_sheet.png`: every input as a thumbnail, marked accepted or rejected, in words.

    Raises `PortraitkitError` when the folders are unusable or hold no photos at all; problems
    with single photos are recorded in the report instead. Prepared images from an earlier run
    into the same `out_dir` that this run does not accept are removed, so the dataset is exactly
    what report.json says.
    """
    from tqdm.auto import tqdm

    from portraitkit.faces import detect

    config = config or PrepConfig()
    intake.check_config(config)
    photos_dir, out_dir = Path(photos_dir), Path(out_dir)
    inputs, ignored = intake.find_inputs(photos_dir, out_dir)
    intake.check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    staging.mkdir()
    detect.models_dir()  # a missing model is the user's to fix once, not one "error" per photo

    photos = []
    for index, path in enumerate(tqdm(inputs, desc="prep", unit="photo")):
        staged = staging / f"{index:05d}.png"
        source = intake.printable(path.relative_to(photos_dir).as_posix())
        photos.append(intake.examine_safely(path, source, staged, config))

    # Duplicates first: the same shot saved three times must count once in the identity vote.
    checks.check_duplicates(photos, config)
    checks.check_identity(photos, config)
    intake.publish(photos, out_dir, staging, config)

    accepted = [p for p in photos if p.status == "accepted"]
    variety = checks.variety(accepted, config)
    distances, distance_advice = distance.set_advice(accepted, config)
    variety["advice"] += distance_advice
    summary = report.summary(photos, ignored, config)
    summary["camera_distance"] = distances
    band = _likeness_band(accepted)
    person_proportions = proportions.person(accepted)
    entries = [report.entry(p, config) for p in photos]
    files.write_jsonl(out_dir / "metadata.jsonl", [{"file_name": p.output, "text": caption(config, p.caption_words),
                                                    "mask_file_name": f"{MASKS_DIR}/{p.output}", **size_conditioning(p, config)}
                                                   for p in accepted])
    # PNG's default compression: `optimize` took three times as long (0.47 s against 0.16 s for the
    # samples' sheet) to save 1% of its 1.2 MB
    files.save_image(out_dir / "contact_sheet.png", report.contact_sheet(photos, summary, person_proportions))
    files.write_json(
        out_dir / "report.json",
        report.jsonable({"summary": summary, "variety": variety, "likeness_band": band, "proportions": person_proportions,
                         "photos": entries,
                         "config": vars(config)}),
    )
    shutil.rmtree(staging, ignore_errors=True)
    return PrepResult(out_dir=out_dir, entries=entries, summary=summary, variety=variety)


def _likeness_band(accepted: list) -> dict | None:
    """Where the person's own new photos would land on the likeness scale, from the accepted faces
    (`faces.likeness`): what pick and training's validation judge portraits against."""
    import numpy as np

    from portraitkit.faces.likeness import likeness_band

    faces = [p.embedding for p in accepted if p.embedding is not None]
    if not faces:
        return None
    return {**likeness_band(np.array(faces)).to_dict(),
            "scale": "distance to the centre of these photos' faces (dlib embeddings); lower is more alike"}
