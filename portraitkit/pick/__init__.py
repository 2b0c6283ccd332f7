"""The picking stage: portraits ranked by likeness to the person and by technical quality
(`likeness`), a portrait that gives back a training photo caught (`copies`), the picks saved and
exported (`export`). It knows nothing of training."""

from portraitkit.pick.export import load_picks
from portraitkit.pick.likeness import IdentityScorer, rank_images, ranking_lines

__all__ = ["IdentityScorer", "load_picks", "rank_images", "ranking_lines"]
