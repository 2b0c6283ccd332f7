"""Catching a "portrait" that is a training photo given back: the same photograph, not a new one.

An identity scorer ranks such images highest, since nothing is more like the training set than
the training set; an over-fitted LoRA would then win its own ranking. Likeness alone cannot tell
them apart, so every portrait is compared with every training crop by the detector prep uses for
its `same_photograph` check (`faces.photograph`: local features, one similarity transform, the
pictures lined up): the question is the same, "is this that photograph again, cropped, resized,
recoloured or mirrored?", and so is the answer, calibrated on real people's photos.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Copy:
    """The training photo a portrait reproduces, and the evidence."""

    photo: str
    inliers: int
    correlation: float

    def reason(self) -> str:
        return (f"copies_training_photo: reproduces the training photo {self.photo} "
                f"({self.inliers} matching points line up, correlation {self.correlation:.2f} once aligned)")


# Fingerprints by the pixels they came from: training's validation checks every step against the
# same training crops, and pick the same dataset, which need fingerprinting once per process.
_FINGERPRINTS: dict[str, object] = {}


def _fingerprint_once(image):
    from portraitkit.faces.photograph import fingerprint
    from portraitkit.faces.photos import pixels_key

    key = pixels_key(image)
    if key not in _FINGERPRINTS:
        if len(_FINGERPRINTS) >= 256:  # a long notebook session: the oldest go first
            _FINGERPRINTS.pop(next(iter(_FINGERPRINTS)))
        _FINGERPRINTS[key] = fingerprint(image)
    return _FINGERPRINTS[key]


class TrainingPhotos:
    """The training crops a portrait might copy, fingerprinted once per process."""

    def __init__(self, names: list[str], images: list):
        self.names = list(names)
        self.fingerprints = [_fingerprint_once(image) for image in images]

    def copies(self, image) -> Copy | None:
        """The training photo `image` is the same photograph as (the clearest such match), or None."""
        from portraitkit.faces.photograph import fingerprint, same_photograph

        if not self.names:
            return None
        mine = fingerprint(image)
        found = [(match, name) for name, theirs in zip(self.names, self.fingerprints)
                 if (match := same_photograph(theirs, mine)) is not None]
        if not found:
            return None
        match, name = max(found, key=lambda pair: (pair[0].inliers, pair[0].correlation))
        return Copy(photo=name, inliers=match.inliers, correlation=match.correlation)
