"""Notebook 05's panel: which styles to sample, at what LoRA strength, how many, from which seed."""

from __future__ import annotations

from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.widgets.panel import Panel, say


class StylePanel(Panel):
    """Checkboxes for the styles, a LoRA-strength slider, images per style and the first seed.

    Styles are the run's model family's (`styles.load_styles`); the exact prompt and negative
    prompt the sampler will send for the first chosen style are shown as the choice changes.
    `config(out_dir)` turns the choice into a `SampleConfig`; `steps` and `guidance_scale`
    override every style's own, as `SampleConfig`'s fields of those names do.
    """

    def __init__(self, run_dir: str | Path, chosen: list[str] | None = None, per_style: int = 4,
                 lora_scale: float = 1.0, seed: int = 0, styles: dict | None = None, steps: int | None = None,
                 guidance_scale: float | None = None):
        import ipywidgets as w

        from portraitkit.models.runs import person_words, read_run
        from portraitkit.sample.styles import DEFAULT_STYLES, load_styles

        self.run_dir = Path(run_dir)
        run = read_run(self.run_dir)
        self.styles = styles or load_styles(family=run["base"]["family"])
        self.token, self.class_word = person_words(run)
        self.steps, self.guidance_scale = steps, guidance_scale
        chosen = list(chosen or DEFAULT_STYLES)
        self.checkboxes = {}
        rows = []
        for name, style in self.styles.items():
            box = w.Checkbox(value=name in chosen, description=name, indent=False, layout=w.Layout(width="150px"))
            box.observe(self._show_prompt, names="value")
            self.checkboxes[name] = box
            rows.append(w.HBox([box, w.HTML(f"<small>{style.description}</small>")]))
        # 0 is the base model, 1 the trained one, in between the weights in between (LoRA and DoRA alike,
        # as the <lora:NAME:S> of the PNG's recipe means in A1111 and ComfyUI).
        self.lora_scale = w.FloatSlider(value=lora_scale, min=0.0, max=1.5, step=0.05, description="LoRA strength",
                                        style={"description_width": "initial"}, continuous_update=False)
        self.per_style = w.IntSlider(value=per_style, min=1, max=max(8, per_style), description="per style",
                                     style={"description_width": "initial"})
        self.seed = w.IntText(value=seed, description="first seed", style={"description_width": "initial"})
        self.prompt = w.HTML()
        self.per_style.observe(self._show_prompt, names="value")
        self.widget = w.VBox([w.VBox(rows), self.lora_scale, w.HBox([self.per_style, self.seed]), self.prompt])
        self._show_prompt()

    @property
    def chosen(self) -> list[str]:
        return [name for name, box in self.checkboxes.items() if box.value]

    def _show_prompt(self, change=None) -> None:
        import html

        if not self.chosen:
            say(self.prompt, "Tick at least one style.", ok=False)
            return
        style = self.styles[self.chosen[0]]
        prompt, negative = style.render(self.token, self.class_word)
        count = len(self.chosen) * self.per_style.value
        self.prompt.value = (f"<b>{count} images.</b> {html.escape(style.name)} sends:<br>"
                             f"<b>prompt</b>: {html.escape(prompt)}<br><b>negative prompt</b>: {html.escape(negative)}<br>"
                             f"<b>guidance</b> {self.guidance_scale or style.guidance_scale}, "
                             f"<b>steps</b> {self.steps or style.steps}")

    def config(self, out_dir: str | Path, **settings):
        """A SampleConfig for the current choice; `settings` sets any other field (steps, resolution...)."""
        from portraitkit.sample.render import SampleConfig

        if not self.chosen:
            raise PortraitkitError("no style is ticked; tick at least one style above")
        settings = {"steps": self.steps, "guidance_scale": self.guidance_scale, **settings}
        return SampleConfig(run_dir=str(self.run_dir), out_dir=str(out_dir), styles=self.chosen,
                            per_style=self.per_style.value, seed=self.seed.value, lora_scale=self.lora_scale.value, **settings)
