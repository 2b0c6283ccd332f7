"""The course's drawings as a learner sees them: pictures (not text) where a cell returns a figure,
nothing drawn where it does not belong, and the legend off the evidence it names."""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")  # these tests read pixels; the notebooks' inline backend is tested in test_notebooks


def rendered(figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def test_teaching_figures_have_a_picture_for_ipython():
    from IPython.core.formatters import PNGFormatter

    from portraitkit.plan import figures

    for figure in (figures.lora_figure(rank=4), figures.memory_figure("tiny-sd", rank=4)):
        png = PNGFormatter()(figure)  # what a notebook cell returning the figure displays
        assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_framed_face_is_drawn_only_inside_the_sensor():
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure

    from portraitkit.teach.lens_plots import plot_face

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.subplots()
    # 85 mm at 30 cm: the face is far larger than the 36 x 24 mm frame
    plot_face(axes, 30, focal_mm=85, offset_frac=0.8, frame=True)
    pixels = rendered(figure).astype(int)
    blue = np.all(np.abs(pixels - np.array(to_rgb("C0")) * 255) < 40, axis=-1)
    assert blue.any()
    (left, bottom), (right, top) = axes.transData.transform([(-18, -12), (18, 12)])
    height = pixels.shape[0]
    rows, columns = np.nonzero(blue)
    inside = (columns >= left - 2) & (columns <= right + 2) & (rows >= height - top - 2) & (rows <= height - bottom + 2)
    assert inside.all(), f"{(~inside).sum()} face pixels drawn outside the frame"


def test_the_legend_leaves_the_published_points_visible():
    from matplotlib.figure import Figure

    from portraitkit.teach.lens_plots import plot_distortion_curve

    figure = Figure(figsize=(6, 4.6), dpi=100)  # the size the lens panel gives the chart
    axes = figure.subplots()
    plot_distortion_curve(axes, 30)
    figure.canvas.draw()
    legend = axes.get_legend().get_window_extent()
    points = [line for line in axes.get_lines() if line.get_linestyle() == "None"]
    assert any("Pressler" in line.get_label() for line in points)
    for line in points:
        x, y = axes.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))[0]
        assert not legend.contains(x, y), f"the legend covers {line.get_label()}"
