"""A face's proportions from its 68 landmarks: the two a camera's distance changes most, as the
lens model teaches (Ward et al. 2018, JAMA Facial Plastic Surgery 20(4): a 30.5 cm selfie shows
the nasal base about 30% wider against the bizygomatic breadth than a distant camera).

- `nose_width`: alare to alare (iBUG points 32 and 36, 1-based) over the face's width at the
  jaw outline's upper ends (points 1 and 17, the landmarks nearest the cheekbones' zygia);
- `nose_length`: nasion to nose tip (points 28 and 31) over the same width.

Both are read in the face's own upright frame, only on near-frontal faces (`FRONTAL_YAW`): a turn
narrows the face's width in the picture faster than the nose's, and a profile's 68 points are
guesses. A person's proportions are the median and spread of their photos' (`Proportions`), each
corrected to a distant camera by the head model where the photo's distance is known (prep does
that: `prep.proportions`); a portrait is compared against them (`Proportions.compare`).

What the measure can and cannot tell is measured, not assumed: `benchmarks/bench_proportions.py`
prints the spread of one person's shots and how much a re-rendered close photo moves the ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RATIOS = ("nose_width", "nose_length")
FACE_WIDTH, NOSE_WIDTH, NOSE_LENGTH = (0, 16), (31, 35), (27, 30)  # iBUG 68, 0-based
# Measured only this near to frontal: at 15 degrees the face's projected width is cos(15) = 97% of
# its frontal width while the nose, nearer the axis, keeps more of its own.
FRONTAL_YAW = 15.0
# A portrait differs from the person's proportions only beyond both their own photos' spread
# (SPREADS of it) and the measure's noise between shots of one person: on 25 real people's
# near-frontal photos (benchmarks/bench_proportions.py, docs/judge.md's calibration set) a ratio's
# spread is a median 7.0% (range 1.3-19.5%; public photos from many cameras and distances, so an
# upper bound of the noise at one distance), and twice that is the smallest change told from it.
# The mean of n portraits (validation's renders) is told from noise at 1/sqrt(n) of it. For scale:
# re-rendered from 152 cm to 30.5 cm, the nose-width ratio rose a median 12.6% (the head model
# predicts 16.5%): one portrait cannot show a 30 cm selfie's widening apart from noise, the mean
# of four can. One portrait against the person's other photos (the benchmark's section 4): at 14%,
# 14% of real photos are called different and 47% of 30.5 cm re-renders wider (10%: 27% and 62%).
SPREADS = 2.0
SHOT_NOISE_PCT = 7.0
MIN_CHANGE_PCT = 2 * SHOT_NOISE_PCT
# The landmarks read about three quarters of the head model's widening (the jaw outline's upper
# ends are not quite the cheekbones' silhouette): +12.6% measured for +16.5% predicted, the median
# of 178 real photos re-rendered by the model (benchmarks/bench_proportions.py). A measured change
# is divided by this before the model names the camera distance that would cause it.
MEASURED_SHARE = 0.76


def measure(landmarks) -> dict[str, float]:
    """{ratio: value} of one face's 68 landmarks (image pixels), in its upright frame."""
    from portraitkit.faces.pose import upright

    points = upright(np.asarray(landmarks, dtype=np.float64))
    width = float(np.linalg.norm(points[FACE_WIDTH[1]] - points[FACE_WIDTH[0]]))
    if width <= 0:
        return {}
    return {"nose_width": float(np.linalg.norm(points[NOSE_WIDTH[1]] - points[NOSE_WIDTH[0]])) / width,
            "nose_length": float(np.linalg.norm(points[NOSE_LENGTH[1]] - points[NOSE_LENGTH[0]])) / width}


def not_measured(face) -> str | None:
    """Why `face` (faces.detect.Face) gives no proportions, or None when it does."""
    from portraitkit.faces.pose import yaw_degrees

    if not face.landmarks_fit:
        return "proportions not measured: the face's landmarks did not land"
    yaw = abs(yaw_degrees(face.landmarks))
    if yaw > FRONTAL_YAW:
        return f"proportions not measured: head turned about {yaw:.0f} degrees (measured up to {FRONTAL_YAW:.0f})"
    return None


@dataclass(frozen=True)
class Proportions:
    """A person's proportions: per ratio the median of their near-frontal photos and the spread
    (1.4826 x the median absolute deviation; None with fewer than three photos), and how the
    photos were corrected for the camera's distance."""

    centre: dict
    spread: dict
    photos: int
    corrected: str

    def to_dict(self) -> dict:
        return {"centre": {k: round(v, 4) for k, v in self.centre.items()},
                "spread": {k: None if v is None else round(v, 4) for k, v in self.spread.items()},
                "photos": self.photos, "corrected": self.corrected,
                "measured": "near-frontal faces only (turned at most %.0f degrees); nose width and nose length (nasion to tip) "
                            "over the face's width at the cheekbones, from dlib's 68 landmarks" % FRONTAL_YAW}

    @classmethod
    def from_dict(cls, record: dict) -> Proportions:
        return cls(dict(record["centre"]), dict(record["spread"]), int(record["photos"]), str(record.get("corrected", "")))

    def threshold_pct(self, ratio: str, portraits: int = 1) -> float:
        """How far (in %) a ratio of one portrait, or the mean of `portraits`, may stray from the
        person's before it counts as different: their own photos' spread or the measure's noise,
        whichever is larger, over sqrt(portraits)."""
        spread = self.spread.get(ratio)
        own = SPREADS * 100 * spread / self.centre[ratio] if spread else 0.0
        return max(own, MIN_CHANGE_PCT) / math.sqrt(portraits)

    def compare(self, measured: dict) -> dict:
        """{ratio: {"value", "difference_pct", "beyond"}} of a portrait's `measured` ratios against the person's."""
        out = {}
        for ratio, value in measured.items():
            if ratio not in self.centre:
                continue
            difference = 100 * (value / self.centre[ratio] - 1)
            out[ratio] = {"value": round(value, 4), "difference_pct": round(difference, 1),
                          "beyond": abs(difference) > self.threshold_pct(ratio)}
        return out


    def drift(self, measured: list[dict]) -> dict | None:
        """{ratio: {"difference_pct", "beyond", "portraits"}}: the mean difference of several
        portraits' `measured` ratios (validation's renders) from the person's; None without any."""
        measured = [m for m in measured if m]
        if not measured:
            return None
        out = {}
        for ratio in self.centre:
            differences = [100 * (m[ratio] / self.centre[ratio] - 1) for m in measured if ratio in m]
            mean = float(np.mean(differences))
            out[ratio] = {"difference_pct": round(mean, 1), "beyond": abs(mean) > self.threshold_pct(ratio, len(differences)),
                          "portraits": len(differences)}
        return out


def person_proportions(values: list[dict], corrected: str) -> Proportions | None:
    """The person's proportions from each near-frontal photo's {ratio: value}; None without any."""
    values = [v for v in values if v]
    if not values:
        return None
    centre, spread = {}, {}
    for ratio in RATIOS:
        column = np.array([v[ratio] for v in values if ratio in v])
        centre[ratio] = float(np.median(column))
        spread[ratio] = float(1.4826 * np.median(np.abs(column - centre[ratio]))) if len(column) >= 3 else None
    return Proportions(centre, spread, len(values), corrected)


def relative_spread_pct(values: list[float]) -> float | None:
    """1.4826 x MAD over the median, in %: one person's shots' spread as the benchmark reports it."""
    if len(values) < 3:
        return None
    column = np.array(values)
    middle = float(np.median(column))
    return 100 * 1.4826 * float(np.median(np.abs(column - middle))) / middle if middle else math.nan
