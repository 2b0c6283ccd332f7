"""Matplotlib figures that a notebook cell shows as a picture."""

from __future__ import annotations


def as_picture(figure):
    """The figure with the PNG picture IPython asks a cell's value for. A Figure made without
    pyplot has no canvas manager, so the inline backend never draws it: returned from a cell it
    shows as the text `<Figure size 900x380 with 1 Axes>`. (pyplot is not used here on purpose:
    its figures stay open and would be drawn a second time when the cell ends.)"""
    import io

    def png() -> bytes:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()

    figure._repr_png_ = png
    return figure
