"""When a face is too poor to learn from or to keep: the limits prep and rank both judge by.

`diagnose` measures a face; `FaceLimits` decides. Prep rejects training photos past these
limits (`PrepConfig` takes its defaults from here) and rank marks portraits down by the same
ones, so a generated portrait is judged by the eye that chose the photos it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FaceLimits:
    """Limits on a face's detections, sharpness and exposure, each with what it guards against."""

    # A second detection only competes when dlib is sure it is a face: clear faces score about
    # 1-2, textures that happen to look like a face (a mission patch on a suit) below 0.3.
    other_face_min_score: float = 0.5
    # Blur effect above 0.5 (diagnose's own flag level): eyelashes and skin texture are gone;
    # training on it teaches the LoRA a soft, waxy face.
    max_blur: float = 0.5
    # Exposure is judged on lost detail (clipped pixels), not on mean brightness alone, so that
    # a well-exposed photo of very dark skin is never called underexposed. 15% of the face
    # region crushed to black or blown to white is a face the LoRA cannot learn from.
    max_dark_clipped: float = 0.15
    max_bright_clipped: float = 0.15
    # ...and a face whose mean luma (0-1, gamma-encoded) is below 0.12 is dark for any skin:
    # well-exposed very dark skin measures about 0.2-0.3.
    min_face_luma: float = 0.12
    max_face_luma: float = 0.90

    def blurry(self, blur: float | None) -> bool:
        """Whether diagnose's blur score (None: not measurable) is past `max_blur`."""
        return blur is not None and blur > self.max_blur

    def exposure_problems(self, exposure: dict) -> list[tuple[str, str]]:
        """(code, sentence) for each way the face is badly exposed, mean brightness first.

        `exposure` is diagnose's exposure detail (`mean_luma`, `dark_clipped_frac`,
        `bright_clipped_frac`); the code is `underexposed` or `overexposed`. Empty: exposed well.
        """
        luma, dark, bright = exposure["mean_luma"], exposure["dark_clipped_frac"], exposure["bright_clipped_frac"]
        problems = []
        if luma < self.min_face_luma:
            problems.append(("underexposed", f"face too dark (mean brightness {luma:.2f})"))
        if luma > self.max_face_luma:
            problems.append(("overexposed", f"face too bright (mean brightness {luma:.2f})"))
        if bright > self.max_bright_clipped:
            problems.append(("overexposed", f"{bright:.0%} of the face blown out to white"))
        if dark > self.max_dark_clipped:
            problems.append(("underexposed", f"{dark:.0%} of the face crushed to black"))
        return problems
