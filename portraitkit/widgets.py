"""ipywidgets panels for the course notebooks: upload, overrides, training, styles, picks.

Every panel is a small class holding its widgets as attributes (so tests drive them from
Python: set a checkbox's `value`, call a button's `click()`) and showing itself when it is the
last expression of a cell. The work each control triggers is a library call (prep, train,
export...); the panels only wire controls to those calls and show the result.

They work with ipywidgets 7 (what Colab ships) and 8 (JupyterLab): only widgets, traits and
layouts present in both are used, and `FileUpload.value`, whose shape changed between the two,
is read through `uploaded_files`. Exceptions inside widget callbacks vanish into the browser's
log, so every callback shows a `PortraitkitError` in the panel's status line instead.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from portraitkit.errors import PortraitkitError

THUMB_PX = 160  # thumbnail side in the panels: big enough to judge a face, small enough for 20 at once


def _widgets():
    import ipywidgets

    return ipywidgets


def _png(image, size: int = THUMB_PX) -> bytes:
    """A PIL image as PNG bytes for an `ipywidgets.Image`, shrunk to `size` pixels at most."""
    image = image.copy()
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _thumbnail(path: Path, size: int = THUMB_PX) -> bytes:
    from portraitkit.photos import open_photo

    return _png(open_photo(path), size)


class _Panel:
    """Shows `self.widget` when the panel is a cell's last expression (ipywidgets 7 and 8)."""

    widget = None

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def _say(label, text: str, ok: bool = True) -> None:
    import html

    colour = "#1a7f37" if ok else "#cf222e"
    label.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"


# --- upload (local Jupyter; in Colab use portraitkit.colab.upload_photos) -------------------------


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """(name, content) pairs from a FileUpload's `value`, in ipywidgets 7 or 8 form.

    ipywidgets 7: a dict {name: {"metadata": {...}, "content": bytes}}.
    ipywidgets 8: a tuple of dicts {"name", "type", "size", "content": memoryview, "last_modified"}.
    """
    if isinstance(value, dict):
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value or ()]


class UploadPanel(_Panel):
    """A FileUpload button that saves the chosen photos into `dest_dir` as they arrive."""

    def __init__(self, dest_dir: str | Path):
        w = _widgets()
        self.dest_dir = Path(dest_dir)
        self.saved: list[Path] = []
        self.upload = w.FileUpload(accept="image/*,.heic,.heif", multiple=True, description="Add photos")
        self.status = w.HTML()
        self.upload.observe(self._on_upload, names="value")
        self.widget = w.VBox([self.upload, self.status])

    def _on_upload(self, change) -> None:
        from portraitkit.colab import list_photos, save_upload

        problems = []
        for name, content in uploaded_files(change["new"]):
            try:
                path = save_upload(name, content, self.dest_dir)
            except PortraitkitError as error:
                problems.append(str(error))
                continue
            if path is None:
                problems.append(f"{name} is not a photo (JPEG, PNG, WEBP or HEIC)")
            elif path not in self.saved:
                self.saved.append(path)
        count = len(list_photos(self.dest_dir))
        text = f"{count} photos in {self.dest_dir}."
        _say(self.status, text + (" " + "; ".join(problems) if problems else ""), ok=not problems)


# --- prepare: override prep's verdicts -----------------------------------------------------------


class OverridePanel(_Panel):
    """Every photo prep examined, its verdict in words, and a toggle to use it or leave it out.

    A toggle calls `portraitkit.overrides.set_decision`, which changes the dataset at once
    (metadata.jsonl and the images) and records the change in report.json.
    """

    def __init__(self, dataset_dir: str | Path, photos_dir: str | Path, columns: int = 4):
        from portraitkit.overrides import can_override, read_report

        w = _widgets()
        self.dataset_dir, self.photos_dir = Path(dataset_dir), Path(photos_dir)
        report = read_report(self.dataset_dir)
        self.words = report.get("summary", {}).get("reason_words", {})
        self.toggles: dict[str, object] = {}
        self.labels: dict[str, object] = {}
        self._reverting = False
        cards = []
        for entry in report["photos"]:
            toggle = w.ToggleButton(value=entry["status"] == "accepted", disabled=not can_override(entry),
                                    layout=w.Layout(width=f"{THUMB_PX}px"))
            self._style(toggle)
            toggle.observe(lambda change, source=entry["source"]: self._on_toggle(source, change), names="value")
            label = w.HTML(self._verdict(entry))
            self.toggles[entry["source"]], self.labels[entry["source"]] = toggle, label
            cards.append(w.VBox([self._picture(entry), label, toggle],
                                layout=w.Layout(width=f"{THUMB_PX + 20}px", margin="4px")))
        self.status = w.HTML()
        grid = w.GridBox(cards, layout=w.Layout(grid_template_columns=f"repeat({columns}, {THUMB_PX + 28}px)"))
        self.widget = w.VBox([grid, self.status])
        self._count(report)

    @property
    def used(self) -> list[str]:
        """Sources (as named in report.json) that the dataset now uses."""
        return [source for source, toggle in self.toggles.items() if toggle.value]

    def _picture(self, entry: dict):
        w = _widgets()
        try:
            return w.Image(value=_thumbnail(self.photos_dir / entry["source"]), format="png")
        except (PortraitkitError, OSError):
            return w.HTML(f"<i>{entry['source']}: no preview</i>")

    def _verdict(self, entry: dict) -> str:
        import html

        said = [self.words.get(code, code) for code in entry.get("reasons", [])]
        warned = [self.words.get(code, code) for code in entry.get("warnings", [])]
        text = f"<b>{html.escape(entry['source'])}</b><br>{entry['status']}"
        if entry.get("override"):
            text += " (by you)"
        if said:
            text += f": {html.escape(', '.join(said))}"
        if warned:
            text += f"<br><small>note: {html.escape(', '.join(warned))}</small>"
        return text

    @staticmethod
    def _style(toggle) -> None:
        toggle.description = "used for training" if toggle.value else "left out"
        toggle.button_style = "success" if toggle.value else ""
        toggle.icon = "check" if toggle.value else "times"

    def _on_toggle(self, source: str, change) -> None:
        from portraitkit.overrides import read_report, set_decision

        if self._reverting:
            return
        toggle = self.toggles[source]
        try:
            entry = set_decision(self.dataset_dir, source, change["new"], self.photos_dir)
        except PortraitkitError as error:
            self._reverting = True  # put the toggle back without acting on that change
            toggle.value = change["old"]
            self._reverting = False
            _say(self.status, str(error), ok=False)
            return
        self._style(toggle)
        self.labels[source].value = self._verdict(entry)
        self._count(read_report(self.dataset_dir))

    def _count(self, report: dict) -> None:
        summary = report.get("summary", {})
        accepted, needed = summary.get("accepted", len(self.used)), summary.get("min_accepted", 0)
        text = f"{accepted} photos will be used for training"
        _say(self.status, text + (f" (at least {needed} are needed)." if accepted < needed else "."), ok=accepted >= needed)


# --- training: settings with their T4 cost, a live loss curve -------------------------------------

BASE_CHOICES = [
    ("SD 1.5 · 512 px · GPU", "sd15"),
    ("SDXL · 1024 px · GPU", "sdxl"),
    ("tiny-sd · offline toy (noise, not portraits) · CPU", "tiny-sd"),
    ("tiny-sdxl · offline toy (noise, not portraits) · CPU", "tiny-sdxl"),
]


class TrainPanel(_Panel):
    """Base, steps, rank, resolution, text encoder and optimizer, with what they cost on a T4.

    Every change asks the planner (`portraitkit.plan`) for peak GPU memory, peak system RAM and
    time on a free T4, shown under the controls with the planner's own words on what the figures
    are based on. `config(**settings)` returns the `TrainConfig`; it continues the run already in
    `run_dir` (after a disconnect) when there is one.
    """

    def __init__(self, dataset_dir: str | Path, run_dir: str | Path, base: str = "sd15", steps: int = 1000,
                 rank: int = 16, resolution: int | None = None, train_text_encoder: bool = False,
                 optimizer: str = "adamw8bit", gpu: str = "t4"):
        w = _widgets()
        self.dataset_dir, self.run_dir, self.gpu = Path(dataset_dir), Path(run_dir), gpu
        wide = {"style": {"description_width": "120px"}, "layout": w.Layout(width="420px")}
        bases = BASE_CHOICES if base in {value for _, value in BASE_CHOICES} else [*BASE_CHOICES, (base, base)]
        self.base = w.Dropdown(options=bases, value=base, description="base model", **wide)
        self.steps = w.BoundedIntText(value=steps, min=1, max=20000, step=50, description="steps", **wide)
        ranks = sorted({4, 8, 16, 32, 64, rank})
        self.rank = w.Dropdown(options=ranks, value=rank, description="LoRA rank", **wide)
        # 0 stands for "the base's own size": a Dropdown value of None means "nothing selected" in ipywidgets 7.
        sizes = [("the base's own (512 SD1.5, 1024 SDXL)", 0)] + [(f"{px} px", px) for px in sorted({512, 768, 1024, resolution or 512})]
        self.resolution = w.Dropdown(options=sizes, value=resolution or 0, description="resolution", **wide)
        self.text_encoder = w.Checkbox(value=train_text_encoder, description="also train the text encoder", indent=False)
        self.optimizer = w.Dropdown(options=[("8-bit AdamW (bitsandbytes)", "adamw8bit"), ("AdamW (32-bit)", "adamw")],
                                    value=optimizer, description="optimizer", **wide)
        self.estimate = w.HTML()
        self.resume = w.HTML()
        for control in (self.base, self.steps, self.rank, self.resolution, self.text_encoder, self.optimizer):
            control.observe(lambda change: self.update(), names="value")
        self.widget = w.VBox([self.base, self.steps, self.rank, self.resolution, self.text_encoder, self.optimizer,
                              self.estimate, self.resume])
        self.update()

    def settings(self) -> dict:
        """The panel's choices as TrainConfig fields."""
        return {"base": self.base.value, "steps": self.steps.value, "rank": self.rank.value,
                "resolution": self.resolution.value or None, "train_text_encoder": self.text_encoder.value,
                "optimizer": self.optimizer.value}

    def config(self, **settings):
        """The TrainConfig to run; `settings` sets any other field (checkpoint_every, lr...)."""
        from portraitkit.train import TrainConfig

        resume = (self.run_dir / "config.json").is_file()  # a run is there: continue it
        return TrainConfig(dataset_dir=str(self.dataset_dir), out_dir=str(self.run_dir), resume=resume,
                           **{**self.settings(), **settings})

    def update(self) -> None:
        # The first estimate of a base traces its real-size graph on the meta device: seconds.
        self.estimate.value = "<i>estimating what this costs on a T4...</i>"
        self.estimate.value = self._estimate_html()
        self.resume.value = self._resume_html()

    def plan(self):
        """The planner's estimate for the current choice on `self.gpu` (a `portraitkit.plan.Plan`)."""
        from portraitkit.plan import plan_run

        settings = self.settings()
        return plan_run(base=settings["base"], resolution=settings["resolution"], rank=settings["rank"],
                        train_text_encoder=settings["train_text_encoder"], optimizer=settings["optimizer"],
                        steps=settings["steps"], gpu=self.gpu)

    def _estimate_html(self) -> str:
        import html

        try:
            plan = self.plan()
        except PortraitkitError as error:
            return f"<span style='color:#cf222e'>{html.escape(str(error))}</span>"
        info = plan.to_dict()
        verdict = ("<span style='color:#1a7f37'><b>fits</b></span>" if plan.fits else
                   f"<span style='color:#cf222e'><b>does not fit</b></span>: {html.escape(plan.advice or '')}")
        total = plan.total_seconds / 60
        lines = [
            f"<b>On {'a free Colab T4' if plan.device.name == 't4' else plan.device.name}, estimated</b> "
            f"for {plan.resolution} px: {verdict}",
            f"GPU memory {plan.peak_gpu_mem_gb:.1f} of {plan.device.gpu_memory_gb} GiB · "
            f"RAM {plan.peak_host_ram_gb:.1f} of {plan.device.host_ram_gb:.1f} GiB · "
            f"{plan.seconds_per_step:.2f} s/step, about {total:.0f} min for {plan.config.steps} steps "
            "(plus loading, caching and validation) · one portrait at 25 steps: "
            f"{plan.inference['seconds_per_image']:.1f} s",
            f"<small>Estimates, not measurements: {html.escape(info['method'])}. Based on: "
            f"{html.escape(plan.device.source)}. GPU measurements of portraitkit: "
            f"{html.escape(info['calibration']['gpu_measurements_of_portraitkit'])}.</small>",
        ]
        if self.base.value.startswith("tiny-"):
            lines.append("<small>The tiny bases are toys for a CPU (seconds); their pictures are noise, not portraits.</small>")
        return "<br>".join(lines)

    def _resume_html(self) -> str:
        from portraitkit.checkpoints import latest_checkpoint
        from portraitkit.train import LORA_FILE

        if not (self.run_dir / "config.json").is_file():
            return f"A new run in {self.run_dir}."
        latest = latest_checkpoint(self.run_dir)
        if (self.run_dir / LORA_FILE).is_file() and latest is not None and latest[0] >= self.steps.value:
            return f"{self.run_dir} holds a finished run of {latest[0]} steps: it will not train again (raise the steps to train further)."
        where = f"its checkpoint at step {latest[0]}" if latest else "step 0 (no complete checkpoint yet)"
        return (f"{self.run_dir} already holds a run: training continues from {where}. "
                "Keep the other settings as they were; to start afresh, choose another run folder.")


class LossMonitor(_Panel):
    """`train(config, on_step=monitor)`: a status line every step and the loss curve redrawn live.

    The curve is the run's own `loss.png`, drawn by `train.plot_loss` from train_log.jsonl, at
    most every `every_seconds` (drawing costs ~0.1 s, and on Drive each redraw is an upload).
    tqdm's progress bar, shown by `train` itself, sits above it.
    """

    def __init__(self, run_dir: str | Path, total_steps: int, every_seconds: float = 10.0):
        w = _widgets()
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.every_seconds = every_seconds
        self.rows: list[dict] = []
        self._drawn_at: float | None = None  # None: draw at the first step, so the curve shows at once
        self.status = w.HTML("waiting for the first step...")
        self.image = w.Image(format="png", layout=w.Layout(max_width="600px"))
        self.widget = w.VBox([self.status, self.image])
        if (self.run_dir / "loss.png").is_file():  # a resumed run: show the curve so far at once
            self.image.value = (self.run_dir / "loss.png").read_bytes()

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        recent = [r["seconds"] for r in self.rows[-20:]]
        per_step = sum(recent) / len(recent)
        left = max(self.total_steps - row["step"], 0) * per_step
        self.status.value = (f"step {row['step']}/{self.total_steps} · loss {row['loss']:.4f} · "
                             f"{per_step:.2f} s/step · about {left / 60:.0f} min left")
        due = self._drawn_at is None or time.monotonic() - self._drawn_at >= self.every_seconds
        if due or row["step"] >= self.total_steps:
            self.redraw()

    def redraw(self) -> None:
        from portraitkit.train import plot_loss

        path = plot_loss(self.run_dir)
        if path is not None:
            self.image.value = path.read_bytes()
        self._drawn_at = time.monotonic()


# --- styled portraits: styles, LoRA strength, seeds ------------------------------------------------


class StylePanel(_Panel):
    """Checkboxes for the styles, a LoRA-strength slider, images per style and the first seed.

    Styles are the run's model family's (`styles.load_styles`); the exact prompt and negative
    prompt the sampler will send for the first chosen style are shown as the choice changes.
    `config(out_dir)` turns the choice into a `SampleConfig`; `steps` and `guidance_scale`
    override every style's own, as `SampleConfig`'s fields of those names do.
    """

    def __init__(self, run_dir: str | Path, chosen: list[str] | None = None, per_style: int = 4,
                 lora_scale: float = 1.0, seed: int = 0, styles: dict | None = None, steps: int | None = None,
                 guidance_scale: float | None = None):
        from portraitkit.sample import person_words, read_run
        from portraitkit.styles import DEFAULT_STYLES, load_styles

        w = _widgets()
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
            _say(self.prompt, "Tick at least one style.", ok=False)
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
        from portraitkit.sample import SampleConfig

        if not self.chosen:
            raise PortraitkitError("no style is ticked; tick at least one style above")
        settings = {"steps": self.steps, "guidance_scale": self.guidance_scale, **settings}
        return SampleConfig(run_dir=str(self.run_dir), out_dir=str(out_dir), styles=self.chosen,
                            per_style=self.per_style.value, seed=self.seed.value, lora_scale=self.lora_scale.value, **settings)


# --- picks: the ranked gallery, checkboxes, export ---------------------------------------------


class PicksPanel(_Panel):
    """The ranked portraits with their scores, a checkbox each, and an export button.

    Reads `images_dir/ranking.json` (best first). Every tick is saved to `picks.json` at once, so
    a disconnect loses no choice; the export writes `zip_path` (and copies to `copy_to`, e.g. a
    Drive folder) with the picks and their recipes (`portraitkit.export.export_picks`).
    """

    def __init__(self, images_dir: str | Path, zip_path: str | Path, copy_to: str | Path | None = None,
                 limit: int | None = None, columns: int = 4):
        import json

        from portraitkit.export import load_picks

        w = _widgets()
        self.images_dir = Path(images_dir)
        self.zip_path = Path(zip_path)
        self.copy_to = Path(copy_to) if copy_to is not None else None
        ranking_path = self.images_dir / "ranking.json"
        if not ranking_path.is_file():
            raise PortraitkitError(f"{self.images_dir} has no ranking.json; rank the portraits first with "
                                   f"`portraitkit pick {self.images_dir} --reference DATASET`")
        self.ranking = json.loads(ranking_path.read_text(encoding="utf-8"))[:limit]
        saved = set(load_picks(self.images_dir))
        self.checkboxes: dict[str, object] = {}
        cards = []
        for row in self.ranking:
            box = w.Checkbox(value=row["file"] in saved, description="pick", indent=False)
            box.observe(self._on_tick, names="value")
            self.checkboxes[row["file"]] = box
            cards.append(w.VBox([w.Image(value=_thumbnail(self.images_dir / row["file"]), format="png"),
                                 w.HTML(_score_html(row)), box],
                                layout=w.Layout(width=f"{THUMB_PX + 20}px", margin="4px")))
        self.export_button = w.Button(description="Export picks", icon="download", button_style="primary")
        self.export_button.on_click(self._on_export)
        self.status = w.HTML()
        self.exported: Path | None = None
        grid = w.GridBox(cards, layout=w.Layout(grid_template_columns=f"repeat({columns}, {THUMB_PX + 28}px)"))
        self.widget = w.VBox([grid, w.HBox([self.export_button, self.status])])
        self._show_count()

    @property
    def picked(self) -> list[str]:
        """Picked file names, best-ranked first."""
        return [name for name, box in self.checkboxes.items() if box.value]

    def _show_count(self) -> None:
        _say(self.status, f"{len(self.picked)} picked.")

    def _on_tick(self, change) -> None:
        from portraitkit.export import save_picks

        save_picks(self.images_dir, self.picked)
        self._show_count()

    def _on_export(self, button) -> None:
        from portraitkit.export import export_picks

        try:
            self.exported = export_picks(self.images_dir, self.picked, self.zip_path, copy_to=self.copy_to)
        except PortraitkitError as error:
            _say(self.status, str(error), ok=False)
            return
        where = f" and copied to {self.copy_to}" if self.copy_to is not None else ""
        _say(self.status, f"{len(self.picked)} portraits with their recipes saved in {self.exported}{where}.")


def _score_html(row: dict) -> str:
    import html

    distance = row.get("identity_distance")
    likeness = "no face" if distance is None else f"distance {distance:.2f}"
    reasons = ", ".join(row.get("reasons") or [])
    text = f"<b>#{row.get('rank')}</b> · score {row.get('score', 0):.2f}<br>{likeness}"
    if reasons:
        text += f"<br><small>{html.escape(reasons)}</small>"
    return text


# --- notebooks 01 and 02: lens sliders, processing sliders ----------------------------------------
# (self-contained: uses only _Panel from above, plus portraitkit.lens / degrade / diagnose)


def _redraw(output, draw) -> None:
    """Replace what `output` shows with the figure `draw()` returns (ipywidgets 7 and 8)."""
    import matplotlib.pyplot as plt
    from IPython.display import clear_output, display

    with output:
        clear_output(wait=True)
        figure = draw()
        display(figure)
        plt.close(figure)


class LensPanel(_Panel):
    """Distance, focal length and position sliders redrawing the projected face and the distortion curve."""

    def __init__(self, distance_cm: float = 30.5, focal_mm: float = 26.0, offset_frac: float = 0.8,
                 reference_cm: float = 152.4, head: str = "women"):
        w = _widgets()
        self.reference_cm = reference_cm
        slider = dict(continuous_update=False, style={"description_width": "initial"}, layout=w.Layout(width="420px"))
        self.distance = w.FloatSlider(value=distance_cm, min=15, max=300, step=0.5, description="camera to nose (cm)", **slider)
        self.focal = w.FloatSlider(value=focal_mm, min=13, max=135, step=1, description="focal length (mm, 35mm eq.)", **slider)
        self.offset = w.FloatSlider(value=offset_frac, min=0, max=1, step=0.05, description="face position (0 centre, 1 edge)", **slider)
        self.head = w.Dropdown(options=["women", "men"], value=head, description="head")
        self.numbers = w.HTML()
        self.output = w.Output()
        for control in (self.distance, self.focal, self.offset, self.head):
            control.observe(lambda change: self.redraw(), names="value")
        self.widget = w.VBox([self.distance, self.focal, self.offset, self.head, self.numbers, self.output])
        self.redraw()

    def figure(self):
        import matplotlib.pyplot as plt
        import numpy as np

        from portraitkit import lens

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1.3, 1.6]})
        lens.plot_face(axes[0], self.distance.value, self.focal.value, head=self.head.value, reference_cm=self.reference_cm)
        lens.plot_face(axes[1], self.distance.value, self.focal.value, self.offset.value, head=self.head.value, frame=True)
        lens.plot_distortion_curve(axes[2], self.distance.value, self.reference_cm, head=self.head.value,
                                   distances=np.geomspace(15, 300, 24))
        fig.tight_layout()
        return fig

    def redraw(self) -> None:
        from portraitkit.lens import distortion

        result = distortion(self.distance.value, self.reference_cm, self.focal.value, self.offset.value, self.head.value)
        self.result = result
        self.numbers.value = (
            f"At {result.distance_cm:.0f} cm against {result.reference_cm:.0f} cm: nose width / face width "
            f"<b>{result.nose_to_face_width:+.1f}%</b>, nose length <b>{result.nose_length:+.1f}%</b>, "
            f"visible ears <b>{result.ear_visible:+.1f}%</b>. At this position with a {self.focal.value:.0f} mm lens "
            f"({result.field_of_view_deg:.0f}° across) the face is stretched <b>{result.edge_stretch:+.1f}%</b>."
        )
        _redraw(self.output, self.figure)


class ProcessingPanel(_Panel):
    """One slider per light or processing problem; the photo before and after, and the diagnosis of both.

    The problems are applied in the order a phone would: light and colour at capture, then
    blur, sensor noise, sharpening, and JPEG last when the file is saved or shared.
    """

    ORDER = ["overhead light", "colour cast", "blur", "noise", "over-sharpening", "JPEG compression"]

    def __init__(self, image, face=None):
        from portraitkit.diagnose import diagnose_image
        from portraitkit.faces import detect_faces

        w = _widgets()
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
        self.output = w.Output()
        for control in self.sliders.values():
            control.observe(lambda change: self.redraw(), names="value")
        self.widget = w.VBox([w.HBox([w.VBox(list(self.sliders.values())[:3]), w.VBox(list(self.sliders.values())[3:])]),
                              self.flags, self.output])
        self.redraw()

    def processed(self):
        from portraitkit import degrade

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

        from portraitkit.diagnose import diagnose_image, face_region, plot_scores

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

        _redraw(self.output, draw)
