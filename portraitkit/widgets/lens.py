"""Notebook 01's panel: camera distance, focal length and face position, and what they do to a face."""

from __future__ import annotations

from portraitkit.widgets.panel import Panel, figure_picture, show_figure


class LensPanel(Panel):
    """Distance, focal length and position sliders redrawing the projected face and the distortion curve."""

    def __init__(self, distance_cm: float = 30.5, focal_mm: float = 26.0, offset_frac: float = 0.8,
                 reference_cm: float = 152.4, head: str = "women"):
        import ipywidgets as w

        self.reference_cm = reference_cm
        slider = dict(continuous_update=False, style={"description_width": "initial"}, layout=w.Layout(width="420px"))
        self.distance = w.FloatSlider(value=distance_cm, min=15, max=300, step=0.5, description="camera to nose (cm)", **slider)
        self.focal = w.FloatSlider(value=focal_mm, min=13, max=135, step=1, description="focal length (mm, 35mm eq.)", **slider)
        self.offset = w.FloatSlider(value=offset_frac, min=0, max=1, step=0.05, description="face position (0 centre, 1 edge)", **slider)
        self.head = w.Dropdown(options=["women", "men"], value=head, description="head")
        self.numbers = w.HTML()
        self.picture = figure_picture()
        for control in (self.distance, self.focal, self.offset, self.head):
            control.observe(lambda change: self.redraw(), names="value")
        self.widget = w.VBox([self.distance, self.focal, self.offset, self.head, self.numbers, self.picture])
        self.redraw()

    def figure(self):
        import matplotlib.pyplot as plt
        import numpy as np

        from portraitkit.teach import lens_plots

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1.3, 1.6]})
        lens_plots.plot_face(axes[0], self.distance.value, self.focal.value, head=self.head.value, reference_cm=self.reference_cm)
        lens_plots.plot_face(axes[1], self.distance.value, self.focal.value, self.offset.value, head=self.head.value, frame=True)
        lens_plots.plot_distortion_curve(axes[2], self.distance.value, self.reference_cm, head=self.head.value,
                                         distances=np.geomspace(15, 300, 24))
        fig.tight_layout()
        return fig

    def redraw(self) -> None:
        from portraitkit.teach.lens import distortion

        result = distortion(self.distance.value, self.reference_cm, self.focal.value, self.offset.value, self.head.value)
        self.result = result
        self.numbers.value = (
            f"At {result.distance_cm:.0f} cm against {result.reference_cm:.0f} cm: nose width / face width "
            f"<b>{result.nose_to_face_width:+.1f}%</b>, nose length <b>{result.nose_length:+.1f}%</b>, "
            f"visible ears <b>{result.ear_visible:+.1f}%</b>. At this position with a {self.focal.value:.0f} mm lens "
            f"({result.field_of_view_deg:.0f}° across) the face is stretched <b>{result.edge_stretch:+.1f}%</b>."
        )
        show_figure(self.picture, self.figure)
