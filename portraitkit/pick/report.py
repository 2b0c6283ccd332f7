"""The ranking said: the lines `portraitkit pick` and notebook 06 print (wrapped at words), and the
picks sheet under each picture (rank, score, likeness and its zone; a training photo given back
marked as a copy, in red).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.faces.likeness import LikenessBand


def band_line(ranking: list[dict], band: LikenessBand) -> str:
    """The last line of `portraitkit pick`: how many portraits land where, in words a learner reads."""
    zones = [row.get("likeness") for row in ranking if row.get("copies") is None]  # a copy is said as a copy
    copies = len(ranking) - len(zones)
    said = [f"{zones.count('you')} of {len(ranking)} look like you", f"{zones.count('unsure')} unsure",
            f"{zones.count('someone else')} like someone else"]
    if zones.count("copying"):
        said.append(f"{zones.count('copying')} closer to your photos than your own new photos come")
    if copies:
        said.append(f"{copies} copy a training photo")
    unjudged = sum(row.get("likeness") is None for row in ranking)
    if unjudged:
        said.append(f"{unjudged} not judged (no face, or turned too far)")
    return textwrap.fill(", ".join(said) + f". Your own new photos land within {band.you_within:.2f} of the centre of your "
                         f"photos (closer than {band.copying_below:.2f} is copying), other people beyond "
                         f"{band.someone_else_beyond:.2f}.", WIDTH)


WIDTH = 100  # printed text wraps at words here: a notebook's output area breaks a longer line anywhere, mid-word too


def ranking_lines(ranking: list[dict], top: int) -> list[str]:
    """The first `top` rows of a ranking as text, one entry per portrait: rank, score, likeness,
    file, why (wrapped at words, continued indented)."""
    lines = []
    for row in ranking[:top]:
        distance = "not judged" if row["identity_distance"] is None else f"likeness {row['identity_distance']:.2f}"
        why = f"  ({'; '.join(row['reasons'])})" if row["reasons"] else ""
        lines.append(textwrap.fill(f"#{row['rank']:<3} {row['score']:.2f}  {distance:<14} {row['file']}{why}", WIDTH,
                                   subsequent_indent=" " * 6, break_long_words=False, break_on_hyphens=False))
    return lines


# --- the picks sheet --------------------------------------------------------------------------

CELL = 300  # picks-sheet cell: a 254 px picture (enough to judge a face) over two lines of caption
CAPTION = 46


def likeness_label(row: dict) -> str:
    """A ranking row's likeness and its zone in words, as the sheet and the picks panel show it: a
    training photo given back says "a copy", whichever zone its distance is in."""
    if row.get("identity_distance") is None:
        return "not judged"
    return f"likeness {row['identity_distance']:.2f} ({'a copy' if row.get('copies') else row.get('likeness') or '?'})"


def picks_sheet(images_dir: Path, rows: list[dict]):
    """The top images with their rank, score and likeness (with its zone) written under each."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    from portraitkit.core.grids import image_grid
    from portraitkit.faces.photos import open_photo

    font = ImageFont.load_default(size=15)
    tiles = []
    for row in rows:
        tile = Image.new("RGB", (CELL, CELL), "white")
        try:
            image = open_photo(images_dir / row["file"])  # upright, as it was scored
            # Small images (the tiny base's 64 px) are enlarged as crisp pixels, not smudged.
            method = Image.NEAREST if max(image.size) < CELL // 2 else Image.LANCZOS
            tile.paste(ImageOps.pad(image, (CELL, CELL - CAPTION), method=method, color="white"))
        except PortraitkitError:
            pass  # unreadable: its reason is in ranking.json, the caption still shows its place
        identity = likeness_label(row)
        name = row["file"] if len(row["file"]) <= 34 else row["file"][:16] + "..." + row["file"][-15:]
        draw = ImageDraw.Draw(tile)
        draw.text((6, CELL - CAPTION + 5), f"#{row['rank']}  score {row['score']:.2f}  {identity}",
                  fill="firebrick" if row.get("copies") else "black", font=font)  # a copy in red
        draw.text((6, CELL - CAPTION + 24), name, fill="dimgray", font=font)
        tiles.append(tile)
    return image_grid(tiles, columns=min(4, len(tiles)))
