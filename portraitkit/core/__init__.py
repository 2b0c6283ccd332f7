"""What every stage stands on: the one-sentence error (`errors`), settings that are also CLI flags
(`settings`), atomic files (`files`), scoped silencing of known-harmless notices (`quiet`), image
grids (`grids`) and figures that notebooks show as pictures (`pictures`)."""

from portraitkit.core.errors import PortraitkitError

__all__ = ["PortraitkitError"]
