"""`Photo`: what prep learns about one input, and the reason codes its verdict is written in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Stable reason codes (report.json) and how the contact sheet says them. Order = report order.
REJECTIONS = {
    "unreadable": "cannot be read",
    "processing_error": "could not be processed",
    "no_face": "no face found",
    "turned_away": "head turned too far to the side",
    "multiple_faces": "several faces, none dominant",
    "face_too_small": "face too small",
    "blurry": "blurry",
    "underexposed": "too dark",
    "overexposed": "too bright",
    "different_person": "a different person",
    "duplicate": "duplicate",
    "same_photograph": "same photograph",
}
WARNINGS = {
    "low_resolution": "enlarged",
    "tight_crop": "cropped tight",
    "off_centre": "face near the edge",
    "color_cast": "colour cast",
    "harsh_shadows": "harsh shadows",
    "blown_highlights": "blown highlights",
    "crushed_shadows": "crushed shadows",
    "compressed": "JPEG blocks",
    "noisy": "grainy",
    "oversharpened": "over-sharpened",
    "close_camera": "arm's-length selfie",
}
# What a warning means, said once under the contact sheet's title for the warnings it shows.
MEANINGS = {
    "low_resolution": "the face had fewer pixels than the training square, so it was enlarged (softer detail)",
    "tight_crop": "the photo ends close to the face, so the square holds less head and shoulders than intended",
    "off_centre": "the face is near the photo's edge, so the square could not centre it",
    "close_camera": "taken from arm's length: the nose looks wider against the face than from further away",
}

THUMBNAIL = 220  # longest side of the thumbnail kept for the contact sheet (one cell of it)


@dataclass
class Photo:
    """Everything learned about one input while the set is examined."""

    source: str
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    thumbnail: Image.Image | None = None
    thumb_scale: float = 1.0
    crop_corners: np.ndarray | None = None  # the crop square in photo pixels, for the contact sheet
    face_box: tuple[int, int, int, int] | None = None
    staged: Path | None = None
    mask: Image.Image | None = None  # the crop's face-and-hair mask (`masks`), for accepted photos
    staged_mask: Path | None = None
    embedding: np.ndarray | None = None
    fingerprint: Any = None  # faces.photograph.Fingerprint: the photo as taken, for "is this the same photograph"
    shot: Any = None  # prep.shots.Shot: the background around the face, in the face's own frame
    caption_words: list[str] = field(default_factory=list)
    duplicate_of: str | None = None
    output: str | None = None
    thumbnail_before: Image.Image | None = None  # the photo as taken, when prep.distance re-rendered it

    def add(self, code: str) -> None:
        if code not in self.reasons:
            self.reasons.append(code)

    @property
    def status(self) -> str:
        return "rejected" if self.reasons else "accepted"
