"""The person's true proportions, from the accepted photos: each near-frontal face's ratios
(`faces.proportions`) corrected to a distant camera by the head model at that photo's measured
distance (`prep.distance`), and their median and spread, written to report.json (`proportions`)
for pick and training's validation to compare portraits against.

The correction divides each ratio by the change the head model predicts at the photo's distance
against a camera far away (`teach.lens.distortion`): a 30 cm selfie's nose width is divided by
about 1.23. A photo without a known distance (no focal length in its EXIF) is used as measured,
and the record says how many were.
"""

from __future__ import annotations

import math


def measure(photo, face) -> None:
    """Record the face's ratios as taken and corrected to a distant camera (when its distance is
    known), or why it has none, in `photo.measurements["proportions"]`."""
    from portraitkit.faces import proportions
    from portraitkit.teach.lens import distortion

    why = proportions.not_measured(face)
    if why:
        photo.measurements["proportions"] = {"not_measured": why}
        return
    ratios = proportions.measure(face.landmarks)
    distance = photo.measurements.get("camera_distance_cm")
    record = {"as_taken": {k: round(v, 4) for k, v in ratios.items()}}
    if distance is not None:
        change = distortion(distance, math.inf)
        factors = {"nose_width": 1 + change.nose_to_face_width / 100, "nose_length": 1 + change.nose_length / 100}
        record["distant_camera"] = {k: round(v / factors[k], 4) for k, v in ratios.items()}
        record["from_cm"] = distance
    photo.measurements["proportions"] = record


def person(accepted: list) -> dict | None:
    """report.json's `proportions`: the person's ratios from the accepted near-frontal photos."""
    from portraitkit.faces.proportions import person_proportions

    records = [p.measurements.get("proportions") or {} for p in accepted]
    measured = [r for r in records if "as_taken" in r]
    corrected = sum("distant_camera" in r for r in measured)
    if not corrected:
        how = "as taken: no photo's EXIF gave the camera distance to correct for"
    elif corrected == len(measured):
        how = f"all {corrected} corrected to a distant camera by the head model at their measured distance"
    else:
        how = (f"{corrected} of {len(measured)} photos corrected to a distant camera by the head model at their measured "
               f"distance; {len(measured) - corrected} without a known distance used as taken")
    found = person_proportions([r.get("distant_camera") or r["as_taken"] for r in measured], how)
    if found is None:
        return None
    return {**found.to_dict(), "not_measured": len(accepted) - len(measured)}
