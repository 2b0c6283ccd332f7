"""Image grids: many pictures in one PNG, for validation, styles and picks.

Not diffusers' `make_image_grid`, which cannot give these grids: it asserts that the images fill
every cell (rows x cols), so 6 portraits in 4 columns or the top 5 picks fail; it pastes each
image at the first one's size on black, so a picture of another size or shape is cut off or
leaves black gaps, where these are fitted into white square cells; and importing `diffusers.utils`
loads torch (about 3 s of CPU), which `pick` and the picks sheet otherwise never need.
"""

from __future__ import annotations

import math


CAPTION = 18  # the strip under each cell when a grid is captioned
MIN_CAPTIONED_CELL = 128  # a caption needs room: a toy base's 64 px images are enlarged to it


def image_grid(images: list, columns: int | None = None, cell: int | None = None, background=(255, 255, 255),
               captions: list[str] | None = None):
    """Lay images out row by row; each is fitted into a square cell (default: the largest side),
    with its caption (say, its seed and strength) in a strip below when `captions` are given."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell = cell or max(max(image.size) for image in images)
    strip = CAPTION if captions else 0
    if captions:
        cell = max(cell, MIN_CAPTIONED_CELL)
    grid = Image.new("RGB", (columns * cell, rows * (cell + strip)), background)
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default(size=12)
    for index, image in enumerate(images):
        fitted = ImageOps.pad(image.convert("RGB"), (cell, cell), color=background)
        x, y = (index % columns) * cell, (index // columns) * (cell + strip)
        grid.paste(fitted, (x, y))
        if captions:
            draw.text((x + 4, y + cell + 2), captions[index], fill=(40, 40, 40), font=font)
    return grid
