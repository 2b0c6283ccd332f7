"""Image grids: many pictures in one PNG, for validation, styles and picks."""

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
