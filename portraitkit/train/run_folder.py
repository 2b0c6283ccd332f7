"""The run folder: a new run or a resumed one checked against its saved settings, config.json
(the settings, what they resolved to, the software), the log and its plot, and whether a run has
finished (every final output written)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import atomic_path, read_json, read_jsonl, write_json, write_jsonl
from portraitkit.models import lora
from portraitkit.train import checkpoints
from portraitkit.train.config import RESUMABLE_CHANGES, TrainConfig


def finished(run_dir: Path, steps: int, validated: bool = True) -> bool:
    """Every final output is there: a run killed while saving them is finished on --resume."""
    outputs = [run_dir / lora.LORA_FILE, run_dir / lora.KOHYA_FILE]
    if validated:
        outputs.append(run_dir / "validation" / f"step_{steps:06d}.png")
    return all(path.is_file() for path in outputs)


def prepare_run_folder(config: TrainConfig, run_dir: Path, processes: int = 1) -> tuple[int, Path | None]:
    """Check the folder against --resume, write config.json, return (start step, checkpoint)."""
    if config.resume and not run_dir.is_dir():  # a mistyped path must not cost a whole run from step 0
        raise PortraitkitError(f"cannot resume {run_dir}: there is no such folder; check the path "
                               "(the --out of the run to continue), or leave out --resume to start a new run")
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.remove_partial_writes(run_dir)
    latest = checkpoints.latest_checkpoint(run_dir)
    saved = run_dir / "config.json"
    if not config.resume:
        if latest is not None or (run_dir / lora.LORA_FILE).exists():
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
    return {"settings": dataclasses.asdict(config), "processes": processes,
            "base": {"name": spec.name, "source": spec.source, "family": spec.family},
            "lora_alpha": config.alpha or config.rank, "versions": versions}


def plot_loss(run_dir: Path) -> Path | None:
    """loss.png: every step's loss and a moving average (single steps are very noisy)."""
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
    axes.plot(steps, losses, alpha=0.3, label="loss per step")
    axes.plot(steps, smooth, label=f"moving average ({window} steps)")
    axes.set(xlabel="step", ylabel="denoising loss", title="LoRA training loss")
    axes.legend()
    figure.tight_layout()
    with atomic_path(run_dir / "loss.png") as tmp:
        figure.savefig(tmp)
    return run_dir / "loss.png"


def record_phases(run_dir: Path, seconds: dict) -> None:
    record = read_run_config(run_dir)
    record["seconds_by_phase"] = seconds  # this invocation's: a resumed run records its own
    write_json(run_dir / "config.json", record)
