"""The run folder: a new run or a resumed one checked against its saved settings, config.json
(the settings, what they resolved to, the software), the log and its plot, and whether a run has
finished (every final output written)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import atomic_path, dataset_rows, read_json, read_jsonl, write_json, write_jsonl
from portraitkit.models import lora
from portraitkit.train import checkpoints
from portraitkit.train.config import RESUMABLE_CHANGES, TrainConfig


def finished(run_dir: Path, steps: int, validated: bool = True) -> bool:
    """Every final output is there: a run killed while saving them is finished on --resume."""
    outputs = [run_dir / lora.LORA_FILE, lora.kohya_file(run_dir)]
    if validated:
        outputs.append(run_dir / "validation" / f"step_{steps:06d}.png")
    return all(path.is_file() for path in outputs)


def finished_steps(run_dir: Path) -> int | None:
    """How many steps the run's final LoRA holds (config.json records it once the final outputs
    are written), or None: a finished run is never trained again, with or without a checkpoint
    at its last step."""
    if not (Path(run_dir) / lora.LORA_FILE).is_file():
        return None
    try:
        return read_run_config(run_dir).get("finished_steps")
    except PortraitkitError:
        return None


def prepare_run_folder(config: TrainConfig, run_dir: Path, processes: int = 1) -> tuple[int, Path | None]:
    """Check the folder against --resume, write config.json, return (start step, checkpoint)."""
    if config.resume and not run_dir.is_dir():  # a mistyped path must not cost a whole run from step 0
        raise PortraitkitError(f"cannot resume {run_dir}: there is no such folder; check the path "
                               "(the --out of the run to continue), or leave out --resume to start a new run")
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.remove_partial_writes(run_dir)
    latest = checkpoints.latest_checkpoint(run_dir, report=config.resume)
    saved = run_dir / "config.json"
    if not config.resume:
        if checkpoints.complete_checkpoints(run_dir) or (run_dir / lora.LORA_FILE).exists():
            raise PortraitkitError(f"{run_dir} already holds a training run; pass --resume to continue it, or choose another --out folder")
        (run_dir / "train_log.jsonl").unlink(missing_ok=True)
        write_json(saved, run_config(config, processes))
        return 0, None
    if saved.is_file():
        record = read_run_config(run_dir)
        previous = record["settings"]
        changed = sorted(k for k, v in dataclasses.asdict(config).items()
                         if k not in RESUMABLE_CHANGES and k in previous and previous[k] != v)
        # Another number of processes may continue a run that sees the same batches: 2 x 1 = 1 x 2.
        if "batch_size" in changed and config.batch_size * processes == previous["batch_size"] * record.get("processes", 1):
            changed.remove("batch_size")
        if changed:
            raise PortraitkitError(f"cannot resume {run_dir}: these settings differ from the saved run: {', '.join(changed)}")
        check_same_photos(record, config, run_dir)
        done = finished_steps(run_dir)
        if done is not None and done >= config.steps and finished(run_dir, config.steps, config.validating):
            return done, None  # finished: nothing to trim, nothing to rewrite (train says so and stops)
    step, folder = latest if latest is not None else (0, None)
    if folder is None:
        print(f"No complete checkpoint in {run_dir}; starting from step 0.")
    # Log rows after the checkpoint belong to work that is about to be redone.
    log_path = run_dir / "train_log.jsonl"
    if log_path.exists():
        write_jsonl(log_path, [row for row in read_jsonl(log_path) if row["step"] <= step])
    write_json(saved, run_config(config, processes))
    return step, folder


def read_run_config(run_dir: Path) -> dict:
    """A run's config.json, or one sentence when it is damaged."""
    return read_json(run_dir / "config.json", "restore it from a copy, or train a new run into another --out folder",
                     keys=("settings", "base"))


def run_config(config: TrainConfig, processes: int = 1) -> dict:
    """config.json: the settings plus what they resolved to, the number of training processes
    (each sees `batch_size` images per micro-batch) and the software that ran them."""
    import importlib.metadata as metadata

    versions = {}
    for package in ["portraitkit", "torch", "diffusers", "peft", "transformers", "accelerate", "bitsandbytes", "datasets"]:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    from portraitkit.models.bases import resolve_base

    spec = resolve_base(config.base)
    return {"settings": dataclasses.asdict(config), "processes": processes, "dataset": dataset_fingerprint(config.dataset_dir),
            "base": {"name": spec.name, "source": spec.source, "family": spec.family},
            "lora_alpha": config.alpha or config.rank, "versions": versions}


def dataset_fingerprint(dataset_dir: str) -> dict:
    """What the run trains on, in a form a changed photo cannot keep: a hash over metadata.jsonl
    (every file name and caption) and over the name, size and content of every file it names
    (images and masks). Tens of photos hash in well under a second."""
    import hashlib

    folder = Path(dataset_dir)
    total = hashlib.sha256((folder / "metadata.jsonl").read_bytes())
    rows = dataset_rows(folder)
    names = sorted({str(row[key]) for row in rows for key in ("file_name", "mask_file_name") if row.get(key)})
    for name in names:
        data = (folder / name).read_bytes() if (folder / name).is_file() else b""
        total.update(f"\n{name}\n{len(data)}\n".encode() + hashlib.sha256(data).digest())
    return {"images": len(rows), "sha256": total.hexdigest()}


def check_same_photos(record: dict, config: TrainConfig, run_dir: Path) -> None:
    """Refuse to resume on other photos or captions than the run began with (say after the photos
    were prepared again): the LoRA would continue, or be returned as finished, for the old ones.
    Runs from before the fingerprint was kept are let through."""
    saved = record.get("dataset")
    if saved and saved != (now := dataset_fingerprint(config.dataset_dir)):
        raise PortraitkitError(
            f"cannot resume {run_dir}: the photos or captions in {config.dataset_dir} changed since the run began "
            f"({saved['images']} images then, {now['images']} now); train them in a new --out folder")


def plot_loss(run_dir: Path) -> Path | None:
    """loss.png: every step's loss, a moving average (single steps are very noisy) and, with
    held-out photos, the validation loss on them (fixed noise and timesteps: comparable across steps)."""
    from matplotlib.figure import Figure

    rows = read_jsonl(run_dir / "train_log.jsonl") if (run_dir / "train_log.jsonl").exists() else []
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1]) for i in range(len(losses))]
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.subplots()
    axes.plot(steps, losses, alpha=0.3 if window > 1 else 1.0, marker="." if len(steps) < 3 else None, label="loss per step")
    if window > 1:  # a one-step "average" is the loss itself
        axes.plot(steps, smooth, label=f"moving average ({window} steps)")
    held_out = [(r["step"], r["validation_loss"]) for r in rows if r.get("validation_loss") is not None]
    if held_out:
        axes.plot(*zip(*held_out), "o-", color="tab:red", label="validation loss (held-out photos)")
    axes.set(xlabel="step", ylabel="denoising loss", title="LoRA training loss")
    axes.legend()
    figure.tight_layout()
    with atomic_path(run_dir / "loss.png") as tmp:
        figure.savefig(tmp)
    return run_dir / "loss.png"


# The band's zones as likeness.png shades them, bottom to top (faces.likeness.LikenessBand).
ZONE_COLOURS = {"copying": "#f4cccc", "you": "#d9ead3", "unsure": "#fff2cc", "someone else": "#eeeeee"}


def plot_likeness(run_dir: Path) -> Path | None:
    """likeness.png, drawn from the run's identity.json (`likeness_figure`); None without one."""
    path = run_dir / "identity.json"
    if not path.is_file():
        return None
    figure = likeness_figure(read_json(path, "train the run again to measure its likeness", keys=("steps",)))
    with atomic_path(run_dir / "likeness.png") as tmp:
        figure.savefig(tmp)
    return run_dir / "likeness.png"


def likeness_figure(record: dict, title: str = "Likeness over training, in your band"):
    """An identity.json record drawn: each validated step's likeness (distance to the centre of the
    person's photos; lower is more alike) over the person's band, shaded: copying, you, unsure,
    someone else; the best step ringed, steps whose renders copy a training photo crossed out;
    beside it, where the renders' proportions were measured, their nose width's drift from the
    person's (in %), with the band inside which it is the measure's noise."""
    from matplotlib.figure import Figure

    rows = record["steps"]
    drifts = [(r["step"], r["proportions"]["nose_width"]) for r in rows if (r.get("proportions") or {}).get("nose_width")]
    figure = Figure(figsize=(10.4 if drifts else 6.4, 3.8), dpi=100)
    axes, *beside = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]}) if drifts else [figure.subplots()]
    if drifts:
        plot_proportions(beside[0], drifts, record.get("proportions"))
    band = record.get("band")
    measured = [r[key] for r in rows for key in ("likeness", "holdout") if r.get(key) is not None]
    if band:
        top = max([band["someone_else_beyond"] * 1.3, *(1.08 * m for m in measured)])  # the highest point inside the frame
        edges = [0.0, band["copying_below"], band["you_within"], band["someone_else_beyond"], top]
        for (low, high), (zone, colour) in zip(zip(edges, edges[1:]), ZONE_COLOURS.items()):
            if high > low:
                axes.axhspan(low, high, color=colour, zorder=0)
                axes.text(1.01, (low + high) / 2, zone, transform=axes.get_yaxis_transform(), va="center", fontsize="small")
        axes.set_ylim(0, top)
    # (identity.json's `nearest`, the distance to the nearest photo, is another scale: not drawn on this one)
    for key, style, colour, label in [("likeness", "o-", "tab:blue", "to the centre of your photos"),
                                      ("holdout", "s:", "tab:purple", "to the centre of the held-out photos")]:
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            axes.plot(*zip(*points), style, color=colour, label=label)
    best = next((r for r in rows if r["step"] == record.get("best_step")), None)
    if best is not None:
        axes.plot([best["step"]], [best["likeness"]], "o", markersize=14, fillstyle="none", color="tab:green",
                  label=f"best/ (step {best['step']})")
    copying = [(r["step"], r["likeness"]) for r in rows if r.get("copies") and r.get("likeness") is not None]
    if copying:
        axes.plot(*zip(*copying), "x", markersize=12, color="tab:red", label="copies a training photo")
    if rows:  # the validated steps on the axis, also when none of them has a face to measure
        axes.set_xlim(0, max(r["step"] for r in rows) * 1.05)
    if not measured:
        axes.text(0.5, 0.5, "no face judged in the validation renders", transform=axes.transAxes, ha="center", va="center")
    axes.set(xlabel="step", ylabel="likeness (lower = more alike)", title=title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_proportions(axes, drifts: list, person: dict | None) -> None:
    """The renders' nose width against the person's over the validated steps, in %: a LoRA that
    learned close photos' widened nose drifts up, past the measure's noise (shaded)."""
    from portraitkit.faces.proportions import Proportions

    steps = [step for step, _ in drifts]
    values = [drift["difference_pct"] for _, drift in drifts]
    if person:
        noise = Proportions.from_dict(person).threshold_pct("nose_width", max(1, min(d["portraits"] for _, d in drifts)))
        axes.axhspan(-noise, noise, color="#e6e6e6", zorder=0, label="within your photos' variation")
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.plot(steps, values, "o-", color="tab:orange", label="renders' nose width vs yours")
    for step, drift in drifts:
        if drift["beyond"]:
            axes.annotate("wider" if drift["difference_pct"] > 0 else "narrower", (step, drift["difference_pct"]),
                          textcoords="offset points", xytext=(0, 8), ha="center", fontsize="small")
    axes.set(xlabel="step", ylabel="nose width against the face, % vs yours", title="Proportions of the renders")
    axes.legend(fontsize="small")


def record_in_config(run_dir: Path, **fields) -> None:
    """Add `fields` to the run's config.json (what the run decided once it had read the data)."""
    record = read_run_config(run_dir)
    record.update(fields)
    write_json(run_dir / "config.json", record)


def record_phases(run_dir: Path, seconds: dict) -> None:
    record_in_config(run_dir, seconds_by_phase=seconds)  # this invocation's: a resumed run records its own
