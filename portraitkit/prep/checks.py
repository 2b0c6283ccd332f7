"""The checks that decide: one face's quality, then the set's duplicates, identity and variety.

`judge_quality` turns diagnose's measures of one face into rejections and warnings. The set-wide
checks run once every photo is examined: `check_duplicates` first (the same shot saved three
times must count once in the vote), then `check_identity`, then `variety` on what was accepted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from portraitkit.prep.config import PrepConfig
from portraitkit.prep.photo import Photo

# --- one face -----------------------------------------------------------------------------------


def judge_quality(photo: Photo, diagnosis, config: PrepConfig) -> None:
    """Rejections from blur and exposure; warnings from the problems diagnose flags.

    Both come from `config.face_limits` (`portraitkit.faces.quality.FaceLimits`): past a
    rejection limit the photo is dropped, past only a flag level it is kept with a warning.
    """
    measures = diagnosis.measures
    exposure = measures["exposure"].detail
    limits = config.face_limits
    if limits.blurry(measures["blur"].score):
        photo.add("blurry")
    exposed = {code for code, _ in limits.exposure_problems(exposure)}
    if "underexposed" in exposed:
        photo.add("underexposed")
    elif exposure["dark_clipped_frac"] > limits.flag_dark_clipped:
        photo.warnings.append("crushed_shadows")
    if "overexposed" in exposed:
        photo.add("overexposed")
    elif exposure["bright_clipped_frac"] > limits.flag_bright_clipped:
        photo.warnings.append("blown_highlights")
    soft = {
        "color_cast": ("color_cast", limits.flag_color_cast),
        "shadow_harshness": ("harsh_shadows", limits.flag_shadow_stops),
        "jpeg_blockiness": ("compressed", limits.flag_jpeg_blockiness),
        "noise": ("noisy", limits.flag_noise),
        "oversharpening": ("oversharpened", limits.flag_oversharpening),
    }
    for measure, (code, limit) in soft.items():
        score = measures[measure].score
        if score is not None and score > limit:
            photo.warnings.append(code)


# --- the set ----------------------------------------------------------------------------------------


def check_duplicates(photos: list[Photo], config: PrepConfig) -> None:
    """Group the copies of one shot; keep the best of each group, reject the rest naming it.

    Two photos are one shot when `faces.photograph` lines them up as one picture: over the whole
    frame, unmirrored, a re-saved or resized copy (`duplicate`); otherwise a crop, an edit, a
    slight rotation or a mirror image (`same_photograph`, only with `config.one_per_photograph`).
    Groups join through any member, so a crop of a mirrored copy is still the original.
    """
    from portraitkit.faces.photograph import same_photograph

    parent = list(range(len(photos)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def worth_comparing(a: Photo, b: Photo) -> bool:
        if a.fingerprint is None or b.fingerprint is None:
            return False
        if config.one_per_photograph:
            return True
        # Only re-saved copies count here: the same frame, so the same shape (within rounding)
        shape_a, shape_b = a.fingerprint.grey.shape, b.fingerprint.grey.shape
        return abs(shape_a[0] / shape_a[1] - shape_b[0] / shape_b[1]) <= 0.02 * shape_a[0] / shape_a[1]

    # Each pair once, except two photos already in one group (through a third): nothing to learn.
    for i, a in enumerate(photos):
        for j in range(i + 1, len(photos)):
            b = photos[j]
            if root(i) == root(j) or not worth_comparing(a, b):
                continue
            match = same_photograph(a.fingerprint, b.fingerprint, mirrored=config.one_per_photograph)
            if match is not None and (config.one_per_photograph or match.whole_frame):
                parent[root(j)] = root(i)

    groups: dict[int, list[int]] = {}
    for i in range(len(photos)):
        groups.setdefault(root(i), []).append(i)
    for group in groups.values():
        if len(group) < 2:
            continue
        keeper = _keeper([photos[i] for i in group])
        for i in group:
            photo = photos[i]
            if photo is keeper:
                continue
            photo.duplicate_of = keeper.source
            photo.measurements["duplicate_of"] = keeper.source
            # the evidence against the one kept (None when the two meet only through a third)
            match = same_photograph(keeper.fingerprint, photo.fingerprint, mirrored=config.one_per_photograph)
            if match is not None:
                photo.measurements["same_photograph"] = {"inliers": match.inliers, "correlation": match.correlation,
                                                         "mirrored": match.mirrored, "scale": match.scale}
            if match is not None and match.whole_frame:
                photo.add("duplicate")
                continue
            photo.add("same_photograph")
            photo.message = (f"the same photograph as {keeper.source} (a crop, edit or mirror image of it), "
                             "which is kept: one shot counted twice teaches the LoRA that shot, not the face")


def _keeper(group: list[Photo]) -> Photo:
    """Which copy of a shot to keep: nothing else wrong, the fewest warnings (a tight crop, a
    colour cast), then among those with the most face pixels (within 5%: landmarks jitter by a
    pixel or two) the one with the most of the scene around the face (an uncropped original over
    its crops), then the sharpest."""
    best = min((bool(p.reasons), len(p.warnings)) for p in group)
    clean = [p for p in group if (bool(p.reasons), len(p.warnings)) == best]
    widest = max(_face_width(p) for p in clean)
    large = [p for p in clean if _face_width(p) >= 0.95 * widest]

    def scene(photo: Photo) -> float:
        return photo.measurements.get("width", 0) * photo.measurements.get("height", 0) / max(_face_width(photo), 1.0) ** 2

    return min(large, key=lambda p: (-scene(p), _blur(p), p.source))


def _face_width(photo: Photo) -> float:
    return photo.measurements.get("face", {}).get("width_px", 0.0)


def _blur(photo: Photo) -> float:
    score = photo.measurements.get("quality", {}).get("measures", {}).get("blur", {}).get("score")
    return 1.0 if score is None else score


def check_identity(photos: list[Photo], config: PrepConfig) -> None:
    """Reject faces that are not the person most of the set shows.

    The consensus is found among the photos with no other problem: the medoid (the face with
    the smallest median distance to the others) picks the majority person, the group is every
    face within the threshold of it, and each face is then judged by its median distance to
    that group, with dlib's pairwise threshold, so no single photo (the first, or an odd one)
    decides who the person is.
    """
    from portraitkit.faces.detect import identity_distance

    with_face = [p for p in photos if p.embedding is not None]
    clean = [p for p in with_face if not p.reasons] or with_face
    if len(clean) < 3:  # two faces that differ: no majority says which one is the person
        return
    distances = np.array([[identity_distance(a.embedding, b.embedding) for b in clean] for a in clean])
    medians = [np.median(np.delete(row, i)) for i, row in enumerate(distances)]
    medoid = int(np.argmin(medians))
    group = [clean[i] for i in np.flatnonzero(distances[medoid] <= config.same_person_threshold)]
    for photo in with_face:
        others = [identity_distance(photo.embedding, g.embedding) for g in group if g is not photo]
        if not others:
            continue
        distance = float(np.median(others))
        photo.measurements["identity_distance"] = distance
        if distance > config.same_person_threshold:
            photo.add("different_person")
    for photo in group:
        photo.measurements["identity_consensus"] = True


# --- variety ----------------------------------------------------------------------------------------

# How much spread counts as "varied", with the reason for each number.
_VARIETY = {
    # head turn: frontal plus three-quarter views (~30 degrees) teach the face's 3-D shape
    "head_pose": ("yaw_degrees", 30.0, "Add photos with the head turned about 30-45 degrees to each side, and a few looking a little up or down."),
    # light direction: one stop between the brighter side in one photo and in another is a
    # clearly different light (window on the left vs on the right)
    "lighting": ("side_light_stops", 1.0, "Add photos in different light: by a window, outdoors in the shade, indoors in the evening, lit from either side."),
    # expression: inner-lip gap over mouth width changes by ~0.15 between a closed mouth and a
    # smile with teeth
    "expression": ("mouth_open", 0.15, "Add photos with different expressions: a smile with teeth, a closed-mouth smile, a neutral face."),
}
# background: two photos share a background when, in the face's own frame with the person
# masked out, their colours differ by less than 40 (8-bit RGB, cell by cell; `prep.shots`): 40 is
# a clearly different colour of wall or scenery, less is the same room. Crops of one photo are
# then one background however they are framed. Varied: no one background in more than half.
_SAME_BACKDROP = 40.0
_BACKGROUND_ADVICE = "Add photos in different places: with one background the model learns it as part of the person."


def variety(accepted: list[Photo], config: PrepConfig) -> dict[str, Any]:
    """How varied the accepted set is, per aspect, and what would improve it."""
    result: dict[str, Any] = {"advice": []}
    if len(accepted) < config.recommended:
        result["advice"].append(
            f"Add {config.recommended - len(accepted)} or more photos: {config.recommended}-20 accepted photos give the most faithful likeness."
        )
    if len(accepted) < 2:
        result["note"] = "Variety needs at least two accepted photos."
        return result
    looks = [{**p.measurements["face"], **p.measurements["look"]} for p in accepted]
    for aspect, (key, needed, advice) in _VARIETY.items():
        values = np.array([look[key] for look in looks])
        spread = float(values.max() - values.min())
        varied = spread >= needed
        result[aspect] = {"measure": key, "min": float(values.min()), "max": float(values.max()), "spread": spread, "needed": needed, "varied": varied}
        if not varied:
            result["advice"].append(advice)
    groups = _backdrop_groups(accepted)
    shared = max(len(group) for group in groups) / len(accepted)
    result["background"] = {"measure": "share of photos not in front of the most common background",
                            "spread": 1.0 - shared, "needed": 0.5, "varied": shared <= 0.5, "backgrounds": len(groups)}
    if shared > 0.5:
        result["advice"].append(_BACKGROUND_ADVICE)
    return result


def _backdrop_groups(photos: list[Photo]) -> list[list[Photo]]:
    """Photos grouped by background: each joins the first group whose first photo's background
    is within _SAME_BACKDROP of its own; one that cannot be compared stands alone."""
    groups: list[list[Photo]] = []
    for photo in photos:
        for group in groups:
            first = group[0]
            if photo.shot is not None and first.shot is not None:
                distance = photo.shot.backdrop_distance(first.shot)
                if distance is not None and distance < _SAME_BACKDROP:
                    group.append(photo)
                    break
        else:
            groups.append([photo])
    return groups
