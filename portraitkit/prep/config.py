"""`PrepConfig`: the settings of the preparation stage, each threshold with the reason for it."""

from __future__ import annotations

from dataclasses import dataclass

from portraitkit.faces.detect import SAME_PERSON_THRESHOLD
from portraitkit.faces.photos import DEFAULT_MAX_PIXELS
from portraitkit.faces.quality import REJECTIONS, FaceLimits


@dataclass
class PrepConfig:
    """Settings of `prepare`. Each threshold says what it guards against and where it comes from."""

    resolution: int = 512  # side of the square training images: 512 for SD 1.5, 1024 for SDXL
    token: str = "sks"  # the rare word that comes to mean "this person" (DreamBooth's convention)
    class_word: str = "person"  # what the token is a kind of: person, man, woman, child...
    # DreamBooth (Ruiz et al. 2022) personalises from 3-5 photos; with fewer than 5 a LoRA
    # memorises the few shots (their pose, clothes and background) instead of learning the face.
    min_accepted: int = 5
    # Person-LoRA recipes ask for 10-20 photos (FACTS.md: ~100-200 steps per photo); fewer than
    # this many gets advice to add more, but still trains.
    recommended: int = 10

    # --- crop -----------------------------------------------------------------------------------
    # Square side as a multiple of the face width (jaw point 0 to 16): the head (about 1.5 face
    # widths tall) fills about half the frame, leaving the shoulders in: a head-and-shoulders
    # portrait, the framing the sampling stage's prompts ask for.
    crop_scale: float = 2.8
    eye_line_height: float = 0.40  # eyes 40% down from the top: headroom above, shoulders below
    # Enlarging more than 2x invents detail the LoRA then learns as the person's skin: reject.
    max_upscale: float = 2.0
    # Enlarging by more than 15% is reported as a `low_resolution` warning; less is invisible
    # after a LANCZOS resize (it is still recorded in the measurements as `crop.upscale`).
    warn_upscale: float = 1.15
    # A crop that had to shrink below this share of its intended size (face at the photo's edge
    # or filling the frame) is kept but warned about and captioned "close-up".
    tight_crop_fraction: float = 0.75
    # A square the photo's edge pushed more than this share of its side away from where the face
    # wanted it: the face sits far off the usual place (the samples, cut close above the head,
    # measure up to 0.2). Kept, but warned about.
    max_off_centre: float = 0.25

    # --- faces ----------------------------------------------------------------------------------
    # The largest face counts as dominant when the next one is at most 1/1.5 of its width: the
    # person photographed, with someone further back. Closer in size, we cannot tell who is meant.
    dominant_face_ratio: float = 1.5
    # Only detections dlib is sure of compete (a patch on a suit can look like a face): see
    # `portraitkit.faces.quality.FaceLimits`, whose limits rank judges portraits by too.
    other_face_min_score: float = FaceLimits.other_face_min_score

    # --- quality (measured by portraitkit.teach.diagnose on the face region) ----------------------------
    # When a photo is rejected, shared with pick; what each limit guards against is said in
    # `FaceLimits`, beside the lower levels at which diagnose only flags (prep warns and keeps).
    max_blur: float = FaceLimits.max_blur
    max_dark_clipped: float = FaceLimits.max_dark_clipped
    max_bright_clipped: float = FaceLimits.max_bright_clipped
    min_face_luma: float = FaceLimits.min_face_luma
    max_face_luma: float = FaceLimits.max_face_luma

    # --- the set -----------------------------------------------------------------------------------
    same_person_threshold: float = SAME_PERSON_THRESHOLD  # dlib's 0.6: 99.38% on LFW
    # One photograph counted once: a re-saved or resized copy is a `duplicate`; a crop, colour
    # edit, re-encode, slight rotation or mirror image of one shot is a `same_photograph`; both
    # rejected naming the one kept, both found by `faces.photograph` (calibrated on real people's
    # photos there). Off (duplicates are still caught) only for a set made on purpose from one
    # photograph: data/samples, edited fifteen ways to show every check.
    one_per_photograph: bool = True

    max_pixels: int = DEFAULT_MAX_PIXELS  # photos above this are downscaled when opened

    # --- camera distance (prep.distance) ------------------------------------------------------------
    # Re-render photos taken nearer than `correct_below_cm` as if from `correct_to_cm` before
    # cropping: at 30 cm the nose looks ~17% wider against the face than from 150 cm (the head
    # model), and a LoRA learns that as the face. 150 cm: a portrait photographer's distance,
    # where the change from infinity is down to a few per cent. Off by default: the warp moves
    # the face's features, and a learner should see what it does first (notebook 03).
    correct_distance: bool = False
    correct_below_cm: float = 60.0
    correct_to_cm: float = 150.0

    @property
    def face_limits(self) -> FaceLimits:
        """This config's detection, blur and exposure rejections (the judge shared with pick), with the flag levels."""
        return FaceLimits(**{name: getattr(self, name) for name in REJECTIONS})
