"""What every notebook panel shares: showing itself, a status line, thumbnails, a redrawn figure.

Every panel is a small class holding its widgets as attributes (so tests drive them from
Python: set a checkbox's `value`, call a button's `click()`) and showing itself when it is the
last expression of a cell. The work each control triggers is a library call (prep, train,
export...); the panels only wire controls to those calls and show the result.

They work with ipywidgets 7 (what Colab ships) and 8 (JupyterLab): only widgets, traits and
layouts present in both are used. Exceptions inside widget callbacks vanish into the browser's
log, so every callback shows a `PortraitkitError` in the panel's status line instead (`say`).
"""

from __future__ import annotations

import io
from pathlib import Path

THUMB_PX = 160  # thumbnail side in the panels: big enough to judge a face, small enough for 20 at once


def _png(image, size: int = THUMB_PX) -> bytes:
    """A PIL image as PNG bytes for an `ipywidgets.Image`, shrunk to `size` pixels at most."""
    image = image.copy()
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail(path: Path, size: int = THUMB_PX) -> bytes:
    from portraitkit.faces.photos import open_photo

    return _png(open_photo(path), size)


def card(children: list):
    """One photo's column in a gallery: its picture, its words, its control."""
    import ipywidgets as w

    return w.VBox(children, layout=w.Layout(width=f"{THUMB_PX + 20}px", margin="4px"))


def gallery(cards: list, columns: int):
    """`card`s in rows of `columns`."""
    import ipywidgets as w

    return w.GridBox(cards, layout=w.Layout(grid_template_columns=f"repeat({columns}, {THUMB_PX + 28}px)"))


def file_name_html(name: str) -> str:
    """A file's name for a card: wrapped anywhere (a long camera name such as PXL_20240612_181512345.jpg
    would be cut at the card's edge), the whole name also on hover."""
    import html

    shown = html.escape(name)
    return f"<div title='{shown}' style='overflow-wrap:anywhere;word-break:break-all;line-height:1.2'><b>{shown}</b></div>"


class Panel:
    """Shows `self.widget` when the panel is a cell's last expression (ipywidgets 7 and 8)."""

    widget = None

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def say(label, text: str, ok: bool = True) -> None:
    """Put `text` in an HTML widget, green when all is well, red when not."""
    import html

    colour = "#1a7f37" if ok else "#cf222e"
    label.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"


def figure_picture():
    """An Image widget for a panel's redrawn figure, as wide as the notebook allows."""
    import ipywidgets as w

    return w.Image(format="png", layout=w.Layout(width="100%", max_width="1200px"))


def show_figure(picture, draw) -> None:
    """Show the figure `draw()` returns in `picture` (from `figure_picture`) as a PNG.

    An Image widget rather than an Output widget: an Output widget's content is the kernel's
    display messages captured by the front end, which depends on the front end's widget manager
    (Colab's ipywidgets 7, classic Notebook, JupyterLab each do it their own way), while an
    Image is one plain value that every widget front end draws, and the figure never reaches
    the inline backend, so it is not drawn a second time below the panel.
    """
    import matplotlib.pyplot as plt

    figure = draw()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    picture.value = buffer.getvalue()
