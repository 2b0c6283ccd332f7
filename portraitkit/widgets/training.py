"""Notebook 04's panels: training settings with what they cost on a T4, and the live loss curve."""

from __future__ import annotations

import time
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.widgets.panel import Panel

BASE_CHOICES = [
    ("SD 1.5 · 512 px · GPU", "sd15"),
    ("SDXL · 1024 px · GPU", "sdxl"),
    ("FLUX.2 [klein] 4B · 1024 px · GPU (new; unmeasured)", "klein4b"),
    ("tiny-sd · offline toy (noise, not portraits) · CPU", "tiny-sd"),
    ("tiny-sdxl · offline toy (noise, not portraits) · CPU", "tiny-sdxl"),
]


class TrainPanel(Panel):
    """Base, steps, rank, resolution, text encoder, optimizer and the masked loss, with what they cost on a T4.

    Every change asks the planner (`portraitkit.plan.estimate`) for peak GPU memory, peak system RAM and
    time on a free T4, shown under the controls with the planner's own words on what the figures
    are based on. `config(**settings)` returns the `TrainConfig`; it continues the run already in
    `run_dir` (after a disconnect) when there is one.
    """

    def __init__(self, dataset_dir: str | Path, run_dir: str | Path, base: str = "sd15", steps: int = 1000,
                 rank: int = 16, resolution: int | None = None, train_text_encoder: bool = False,
                 optimizer: str = "adamw8bit", masked_loss: bool = False, gpu: str = "t4", **run_settings):
        import ipywidgets as w

        self.dataset_dir, self.run_dir, self.gpu = Path(dataset_dir), Path(run_dir), gpu
        # The notebook's other TrainConfig fields (checkpoint_every, validate_every, validation_steps...):
        # what the train cell will run, so the estimate counts the validation it will do.
        self.run_settings = run_settings
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
        # The masked loss costs nothing on the GPU (a mask per latent): it needs prep's masks/.
        # width "auto": a fixed-width checkbox cuts its description off with an ellipsis.
        self.masked_loss = w.Checkbox(value=masked_loss, indent=False, layout=w.Layout(width="auto"),
                                      description="masked loss: learn the face and hair, not the background")
        self.estimate = w.HTML()
        self.resume = w.HTML()
        for control in (self.base, self.steps, self.rank, self.resolution, self.text_encoder, self.optimizer, self.masked_loss):
            control.observe(lambda change: self.update(), names="value")
        self.widget = w.VBox([self.base, self.steps, self.rank, self.resolution, self.text_encoder, self.optimizer,
                              self.masked_loss, self.estimate, self.resume])
        self.update()

    def settings(self) -> dict:
        """The panel's choices as TrainConfig fields."""
        return {"base": self.base.value, "steps": self.steps.value, "rank": self.rank.value,
                "resolution": self.resolution.value or None, "train_text_encoder": self.text_encoder.value,
                "optimizer": self.optimizer.value, "masked_loss": self.masked_loss.value}

    def config(self, **settings):
        """The TrainConfig to run: the panel's choices, the notebook's other fields given to the panel,
        and `settings` (any other field: lr...)."""
        from portraitkit.train.config import TrainConfig

        resume = (self.run_dir / "config.json").is_file()  # a run is there: continue it
        return TrainConfig(dataset_dir=str(self.dataset_dir), out_dir=str(self.run_dir), resume=resume,
                           **{**self.settings(), **self.run_settings, **settings})

    def update(self) -> None:
        """Estimate the cost again and say what the run folder holds (call it after training, too)."""
        # SD1.5 and SDXL at the common settings answer from the planner's shipped traces at once
        # (plan/table.py); another choice traces its real-size graph on the meta device: seconds for
        # SD1.5, a minute or more for SDXL on a 2-core CPU (Colab's); later ones reuse the trace.
        why = ("a new SDXL setting traces its real-size graph: up to a minute or two on a 2-core CPU"
               if self.base.value == "sdxl" else "a few seconds at most")
        self.estimate.value = f"<i>estimating what this costs on a T4 ({why})...</i>"
        self.estimate.value = self._estimate_html()
        self.resume.value = self._resume_html()

    def plan(self):
        """The planner's estimate of the run the train cell will start (`config()`), on `self.gpu`:
        the same validated steps, renders and denoising steps (a `portraitkit.plan.estimate.Plan`)."""
        from portraitkit.plan.estimate import plan_for_training

        return plan_for_training(self.config(), self.gpu)

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
            "(plus loading and caching)"
            + (f", validation about {plan.validation_seconds / 60:.0f} min more ({plan.config.validations} x "
               f"{plan.config.validation_renders} images)" if plan.config.validations else "")
            + f" · one portrait at {plan.inference['steps']} steps: {plan.inference['seconds_per_image']:.1f} s"
            + (f" · {info['session']['seconds'] / 3600:.1f} h in all, "
               + ("within" if info["session"]["within"] else "<b>more than</b>")
               + f" a {info['session']['budget_seconds'] // 3600} h Colab session"
               if info["session"] else ""),
            f"<small>Estimates, not measurements: {html.escape(info['method'])}. Based on: "
            f"{html.escape(plan.device.source)}. GPU measurements of portraitkit: "
            f"{html.escape(info['calibration']['gpu_measurements_of_portraitkit'])}.</small>",
        ]
        if self.base.value.startswith("tiny-"):
            lines.append("<small>The tiny bases are toys for a CPU (seconds); their pictures are noise, not portraits.</small>")
        return "<br>".join(lines)

    def _resume_html(self) -> str:
        import html

        from portraitkit.train.checkpoints import latest_checkpoint
        from portraitkit.models.lora import LORA_FILE

        saved = self.run_dir / "config.json"
        if not saved.is_file():
            return f"No run in {self.run_dir} yet: training starts a new run there."
        from portraitkit.train.config import RESUMABLE_CHANGES
        from portraitkit.train.run_folder import finished_steps, read_run_config

        try:
            previous = read_run_config(self.run_dir)["settings"]
        except PortraitkitError as error:
            return f"<span style='color:#cf222e'>{html.escape(str(error))}</span>"
        changed = [f"{name} {previous[name]} (now {value})" for name, value in self.settings().items()
                   if name not in RESUMABLE_CHANGES and name in previous and previous[name] != value]
        if changed:
            return (f"<span style='color:#cf222e'>{html.escape(str(self.run_dir))} holds a run trained with "
                    f"{html.escape(', '.join(changed))}: it cannot continue with these settings. Go back to them, "
                    "or set RUN_DIR to another folder for a new run.</span>")
        latest = latest_checkpoint(self.run_dir)
        done = max(latest[0] if latest else 0, finished_steps(self.run_dir) or 0)
        if (self.run_dir / LORA_FILE).is_file() and done >= self.steps.value:
            return f"{self.run_dir} holds a finished run of {done} steps: it will not train again (raise the steps to train further)."
        where = f"its checkpoint at step {latest[0]}" if latest else "step 0 (no complete checkpoint yet)"
        return (f"{self.run_dir} already holds a run: training continues from {where}. "
                "Keep the other settings as they were; to start afresh, choose another run folder.")


class LossMonitor(Panel):
    """`train(config, on_step=monitor)`: a status line every step and the loss curve redrawn live.

    The curve is the run's own `loss.png`, drawn by `train.plot_loss` from train_log.jsonl, at
    most every `every_seconds` (drawing costs ~0.1 s, and on Drive each redraw is an upload).
    tqdm's progress bar, shown by `train` itself, sits above it.
    """

    def __init__(self, run_dir: str | Path, total_steps: int, every_seconds: float = 10.0):
        import ipywidgets as w

        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.every_seconds = every_seconds
        self.rows: list[dict] = []
        self._drawn_at: float | None = None  # None: draw at the first step, so the curve shows at once
        self.status = w.HTML("waiting for the first step...")
        # Hidden until it holds a curve: an Image widget without one shows a broken-image icon.
        self.image = w.Image(format="png", layout=w.Layout(max_width="600px", display="none"))
        self.widget = w.VBox([self.status, self.image])
        if (self.run_dir / "loss.png").is_file():  # a resumed run: show the curve so far at once
            self._show((self.run_dir / "loss.png").read_bytes())

    def _show(self, png: bytes) -> None:
        self.image.value = png
        self.image.layout.display = None

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
        from portraitkit.train.run_folder import plot_loss

        path = plot_loss(self.run_dir)
        if path is not None:
            self._show(path.read_bytes())
        self._drawn_at = time.monotonic()
