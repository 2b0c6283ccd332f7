"""Every quality limit, each number once, in the two roles it plays.

`teach.diagnose` measures a photo; `FaceLimits` says what the measures mean:
- a **flag** (the `flag_*` fields, and `max_blur`): a problem worth telling the learner.
  `diagnose_image` words it (notebook 02), and prep keeps the photo with a warning in its report;
- a **rejection** (the other fields): prep drops the training photo (`PrepConfig` takes its
  defaults, and so its command-line flags, from these) and pick marks a portrait down by the
  same ones, so a generated portrait is judged by the eye that chose its training photos.

Exposure has both roles: a few per cent of the face clipped is worth a flag, 15% is a face the
LoRA cannot learn from. Blur has one limit for both. The flag levels were set by applying
`portraitkit.teach.degrade` at increasing strengths to clean portraits and reading off where the
problem becomes visible at full screen size; each note says why.
"""

from __future__ import annotations

from dataclasses import dataclass

# The fields prep's settings override (its CLI flags of the same names): the rejections.
REJECTIONS = ("other_face_min_score", "max_blur", "max_dark_clipped", "max_bright_clipped", "min_face_luma", "max_face_luma")


@dataclass(frozen=True)
class FaceLimits:
    """Where diagnose flags a measure and where prep rejects a face, each with what it guards against."""

    # --- rejections (prep drops the photo; pick marks the portrait down) ---------------------------
    # A second detection only competes when dlib is sure it is a face: clear faces score about
    # 1-2, textures that happen to look like a face (a mission patch on a suit) below 0.3.
    other_face_min_score: float = 0.5
    # Blur effect (scikit-image's `blur_effect`, 0 sharp - 1 flat), flagged and rejected at the same
    # point. Sharp portraits measure about 0.32-0.44; 0.53 is a face whose eyelashes and skin
    # texture are gone (on the sample faces, a Gaussian blur of 0.9-1.5 px, median 1.24, at their
    # 100-280 px), which teaches the LoRA a soft, waxy face.
    max_blur: float = 0.53
    # Exposure is judged on lost detail (clipped pixels), not on mean brightness alone, so that
    # a well-exposed photo of very dark skin is never called underexposed. 15% of the face
    # region crushed to black or blown to white is a face the LoRA cannot learn from.
    max_dark_clipped: float = 0.15
    max_bright_clipped: float = 0.15
    # ...and a face whose mean luma (0-1, gamma-encoded) is below 0.12 is dark for any skin:
    # well-exposed very dark skin measures about 0.2-0.3.
    min_face_luma: float = 0.12
    max_face_luma: float = 0.90

    # --- flags (diagnose tells the learner; prep warns and keeps the photo) ------------------------
    # exposure, on the face: 2% of the face at pure white is a visible shiny patch with no
    # skin texture left; 5% at pure black (darker areas are normal: nostrils, pupils, hair).
    flag_bright_clipped: float = 0.02
    flag_dark_clipped: float = 0.05
    # mean gamma-encoded luma of the face, 0-1. Well-exposed skin sits around 0.4-0.7.
    flag_dark_luma: float = 0.25
    flag_bright_luma: float = 0.85
    # colour cast: chroma of the estimated light in CIELAB units. About 2-3 units is a just-
    # noticeable difference on a neutral; clean daylight portraits measure under 3; 8 is an
    # obvious tint on whites and greys (tungsten light with a fifth of its cast left uncorrected).
    flag_color_cast: float = 8.0
    # shadows, in photographic stops darker than the lit cheek. Portrait lighting ratios:
    # 2:1 (1 stop) reads as soft modelling, 4:1 (2 stops) as dramatic; beyond 1.5 stops under
    # the eyes or nose reads as tired eyes and a "moustache" shadow.
    flag_shadow_stops: float = 1.5
    # halo overshoot as a fraction of edge contrast. Unprocessed photos measure under 0.1; a
    # 0.25 overshoot (a 50-100% unsharp mask) is a visible light/dark rim around hair and eyes.
    flag_oversharpening: float = 0.25
    # blockiness: extra step at 8-pixel block boundaries over other columns. Clean photos
    # measure about 0-0.15; 0.3 is reached near JPEG quality 50, below which blocks show in
    # smooth skin.
    flag_jpeg_blockiness: float = 0.3
    # noise: standard deviation in 8-bit levels on flat areas. Under 2 is invisible; 5 shows as
    # grain on skin at full size.
    flag_noise: float = 5.0

    # --- rejections ---------------------------------------------------------------------------------

    def blurry(self, blur: float | None) -> bool:
        """Whether diagnose's blur score (None: not measurable) is past `max_blur`."""
        return blur is not None and blur > self.max_blur

    def exposure_problems(self, exposure: dict) -> list[tuple[str, str]]:
        """(code, sentence) for each way the face is too badly exposed to keep, mean brightness first.

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

    # --- flags ----------------------------------------------------------------------------------------

    def flag_at(self, measure: str) -> float:
        """The score at which diagnose flags `measure` (exposure: the smaller of its two clipping limits)."""
        return {
            "exposure": min(self.flag_bright_clipped, self.flag_dark_clipped),
            "color_cast": self.flag_color_cast,
            "shadow_harshness": self.flag_shadow_stops,
            "oversharpening": self.flag_oversharpening,
            "jpeg_blockiness": self.flag_jpeg_blockiness,
            "noise": self.flag_noise,
            "blur": self.max_blur,
        }[measure]

    def severity(self, name: str, measure) -> float | None:
        """Diagnose's `measure` as a multiple of the point where it is flagged (above 1: flagged).

        Exposure is flagged by four tests (blown highlights, crushed shadows, too dark, too
        bright), so its severity is the worst of them, not its score over one limit.
        """
        if measure.score is None:
            return None
        if name != "exposure":
            return measure.score / self.flag_at(name)
        detail = measure.detail
        return max(detail["bright_clipped_frac"] / self.flag_bright_clipped, detail["dark_clipped_frac"] / self.flag_dark_clipped,
                   self.flag_dark_luma / max(detail["mean_luma"], 1e-6), detail["mean_luma"] / self.flag_bright_luma)
