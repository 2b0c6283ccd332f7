"""Image grids: many pictures in one PNG, for validation, styles and picks.

Not diffusers' `make_image_grid`, which cannot give these grids: it asserts that the images fill
every cell (rows x cols), so 6 portraits in 4 columns or the top 5 picks fail; it pastes each
image at the first one's size on black, so a picture of another size or shape is cut off or
leaves black gaps, where these are fitted into white square cells; and importing `diffusers.utils`
loads torch (about 3 s of CPU), which `pick` and the picks sheet otherwise never need.
"""

from __future__ import annotations

import math


def image_grid(images: list, columns: int | None = None, cell: int | None = None, background=(255, 255, 255)):
    """Lay images out row by row; each is fitted into a square cell (default: the largest side)."""
    from PIL import Image, ImageOps

    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell = cell or max(max(image.size) for image in images)
    grid = Image.new("RGB", (columns * cell, rows * cell), background)
    for index, image in enumerate(images):
        fitted = ImageOps.pad(image.convert("RGB"), (cell, cell), color=background)
        grid.paste(fitted, ((index % columns) * cell, (index // columns) * cell))
    return grid
