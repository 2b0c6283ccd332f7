"""The picking stage: portraits ranked by likeness to the person and by technical quality
(`likeness`), a portrait that gives back a training photo caught (`copies`), the ranking said in
lines and on the picks sheet (`report`), the picks saved and exported (`export`). It knows nothing of training."""

from portraitkit.pick.export import load_picks
from portraitkit.pick.likeness import IdentityScorer, rank_images
from portraitkit.pick.report import ranking_lines

__all__ = ["IdentityScorer", "load_picks", "rank_images", "ranking_lines"]
