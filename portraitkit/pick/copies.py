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


class TrainingPhotos:
    """The training crops a portrait might copy (`fingerprint` makes each once per process)."""

    def __init__(self, names: list[str], images: list):
        from portraitkit.faces.photograph import fingerprint

        self.names = list(names)
        self.fingerprints = [fingerprint(image) for image in images]

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
