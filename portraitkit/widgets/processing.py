"""Notebook 02's panel: light and processing problems applied to a photo, and their diagnosis."""

from __future__ import annotations

from portraitkit.widgets.panel import Panel, figure_picture, show_figure


class ProcessingPanel(Panel):
    """One slider per light or processing problem; the photo before and after, and the diagnosis of both.

    The problems are applied in the order a phone would: light and colour at capture, then
    blur, sensor noise, sharpening, and JPEG last when the file is saved or shared.
    """

    ORDER = ["overhead light", "colour cast", "blur", "noise", "over-sharpening", "JPEG compression"]

    def __init__(self, image, face=None):
        import ipywidgets as w

        from portraitkit.teach.diagnose import diagnose_image
        from portraitkit.faces.detect import detect_faces

        self.image = image.convert("RGB")
        if face is None:
            found = detect_faces(self.image)
            face = found[0] if found else None
        self.face = face
        self.before = diagnose_image(self.image, face)
        slider = dict(min=0.0, max=1.0, step=0.05, value=0.0, continuous_update=False,
                      style={"description_width": "initial"}, layout=w.Layout(width="360px"))
        self.sliders = {problem: w.FloatSlider(description=problem, **slider) for problem in self.ORDER}
        if face is None:  # relighting needs landmarks
            self.sliders["overhead light"].disabled = True
        self.flags = w.HTML()
        self.picture = figure_picture()
        for control in self.sliders.values():
            control.observe(lambda change: self.redraw(), names="value")
        self.widget = w.VBox([w.HBox([w.VBox(list(self.sliders.values())[:3]), w.VBox(list(self.sliders.values())[3:])]),
                              self.flags, self.picture])
        self.redraw()

    def processed(self):
        from portraitkit.teach import degrade

        out = self.image
        for problem in self.ORDER:
            amount = self.sliders[problem].value
            if amount <= 0:
                continue
            out = degrade.add_overhead_light(out, amount, self.face) if problem == "overhead light" else degrade.simulate(out, problem, amount)
        return out

    def redraw(self) -> None:
        import html

        import matplotlib.pyplot as plt

        from portraitkit.teach.diagnose import diagnose_image, face_region, plot_scores

        after_image = self.processed()
        self.after = diagnose_image(after_image, self.face)
        flags = self.after.flags or ["no problems flagged"]
        self.flags.value = "<b>After:</b><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in flags) + "</ul>"

        def draw():
            fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.4]})
            box = face_region(self.image.size, self.face) if self.face is not None else (0, 0, *self.image.size)
            for ax, picture, title in ((axes[0], self.image, "before"), (axes[1], after_image, "after")):
                ax.imshow(picture.crop(box))
                ax.set_title(title)
                ax.axis("off")
            plot_scores(axes[2], {"before": self.before, "after": self.after})
            fig.tight_layout()
            return fig

        show_figure(self.picture, draw)
