"""One likeness scale, and the person's own band on it.

**The scale.** A face's likeness to the person is its embedding's distance to the centre (the
mean) of the person's faces: their training photos, or any reference set. Lower is more alike.
Validation, `identity.json`, `likeness.png`, pick's ranking and reasons, notebook 06 and the
class page all read this one number, from `likeness_distances`. (The centre of several photos is
no photo at all: a portrait close to it looks like the person as a whole, not like one shot.)

**The band.** Two real photos of one person are never at 0, and how far apart they are differs
from person to person and set to set. So where a *new* photograph of this person would land is
estimated from their own photos: their spread (each face's distance to the centre of the others,
averaged: `leave_one_out_spread`) times factors calibrated on real people's photos, by how many
photos there are. The band has three edges:

- `copying_below`: closer than the person's own new photos come (the lowest few per cent of
  held-out photos of the person): a LoRA that lands there reproduces the training photos' average
  rather than drawing the person anew;
- `you_within`: where the person's own new photos land (nine in ten of held-out photos);
- `someone_else_beyond`: where other people begin (the closest few per cent of other people's
  photos to a person's centre); between `you_within` and it, "unsure".

The factors and their calibration (data, figures, command) are in docs/judge.md and
`python benchmarks/bench_judge.py` prints them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Calibrated by benchmarks/bench_judge.py on 29 real people's 270 distinct photos (docs/judge.md):
# for n of a person's photos (random sets, 20 per person and n), where their other photos land,
# over the set's leave-one-out spread. Keys: the fewest photos each factor holds for.
# Nine in ten of the held-out photos land within (the 90th percentile: 1.14 at n = 2, 1.19 at 3,
# 1.24-1.26 at 5-20):
YOU_FACTOR = {2: 1.15, 3: 1.2, 5: 1.25}
# ...and one in twenty closer than (the 5th percentile: 0.64 at n = 2, 0.72 at 3, 0.76-0.78 at 5-20):
COPY_FACTOR = {2: 0.64, 3: 0.72, 5: 0.76}
# Other people's photos against a person's centre: 1% closer than 0.58-0.62, 5% closer than 0.63-0.67.
SOMEONE_ELSE = 0.6
# With a single photo there is no spread: the median spread of real sets of 3-20 (0.32-0.36) stands in.
TYPICAL_SPREAD = 0.34


@dataclass(frozen=True)
class LikenessBand:
    """The zones of the likeness scale for one person (distances to the centre of their photos)."""

    copying_below: float
    you_within: float
    someone_else_beyond: float
    photos: int  # how many of the person's faces it was estimated from
    spread: float | None  # their leave-one-out spread (None: one photo, TYPICAL_SPREAD used)

    def zone(self, distance: float) -> str:
        """'copying', 'you', 'unsure' or 'someone else'."""
        if distance < self.copying_below:
            return "copying"
        if distance <= self.you_within:
            return "you"
        if distance <= self.someone_else_beyond:
            return "unsure"
        return "someone else"

    def words(self, distance: float) -> str:
        """The zone said for a learner, with the number."""
        return {
            "copying": f"closer to your photos than your own new photos come ({distance:.2f} < {self.copying_below:.2f}): "
                       "it may be reproducing them rather than drawing you",
            "you": f"looks like you ({distance:.2f}, your own new photos land within {self.you_within:.2f})",
            "unsure": f"unsure: further than your own photos land ({distance:.2f} > {self.you_within:.2f}), "
                      f"not yet someone else ({self.someone_else_beyond:.2f})",
            "someone else": f"looks like someone else ({distance:.2f}, other people begin at {self.someone_else_beyond:.2f})",
        }[self.zone(distance)]

    def to_dict(self) -> dict:
        return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in asdict(self).items()}


def centre(reference: np.ndarray) -> np.ndarray:
    return np.reshape(reference, (-1, 128)).mean(axis=0)


def likeness_distances(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each embedding's distance to the centre of the reference faces: the likeness scale."""
    return np.linalg.norm(np.reshape(embeddings, (-1, 128)) - centre(reference), axis=1)


def nearest_distances(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each embedding's distance to the nearest reference face."""
    pairs = np.reshape(embeddings, (-1, 1, 128)) - np.reshape(reference, (1, -1, 128))
    return np.linalg.norm(pairs, axis=2).min(axis=1)


def leave_one_out_spread(reference: np.ndarray) -> float | None:
    """How alike the person's own photos are: each face's distance to the centre of the others,
    averaged (None with fewer than two faces)."""
    reference = np.reshape(reference, (-1, 128))
    count = len(reference)
    if count < 2:
        return None
    others = (reference.sum(axis=0) - reference) / (count - 1)
    return float(np.linalg.norm(reference - others, axis=1).mean())


def spread_of(embeddings: np.ndarray) -> float | None:
    """How varied a set of faces is: their mean distance to their own centre (None: under two).
    Validation compares its renders' spread with the person's photos' to see a collapse to one look."""
    embeddings = np.reshape(embeddings, (-1, 128))
    return float(likeness_distances(embeddings, embeddings).mean()) if len(embeddings) >= 2 else None


def likeness_band(reference: np.ndarray) -> LikenessBand:
    """The person's band, from the embeddings of their faces (at least one)."""
    reference = np.reshape(reference, (-1, 128))
    count = len(reference)
    if count == 0:
        raise ValueError("a likeness band needs at least one face of the person")
    spread = leave_one_out_spread(reference)
    base = TYPICAL_SPREAD if spread is None else spread
    you = base * _factor(YOU_FACTOR, count)
    return LikenessBand(copying_below=base * _factor(COPY_FACTOR, count), you_within=you,
                        someone_else_beyond=max(SOMEONE_ELSE, you), photos=count, spread=spread)


def _factor(table: dict[int, float], count: int) -> float:
    return table[max([n for n in table if n <= count], default=min(table))]
