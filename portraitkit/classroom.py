"""A workshop's whole class at once: each learner's photos through every stage, as Ray tasks.

`run_class(ClassConfig(root=..., out_dir=...))` treats every sub-folder of `root` as one learner's
photos and runs that learner's prep, train, sample and pick (the demo's stages, `demo.run_stage`)
as a chain of Ray tasks, all learners side by side: on one machine an embedded Ray starts with no
set-up; `address` joins an existing cluster (`ray start --head` on a lab server). Training and
sampling ask Ray for one GPU each where the cluster has GPUs, so a server with four GPUs trains
four learners at once; prep and pick need only a CPU.

Each learner's files stay in `out/<learner>/` (dataset/, run/, portraits/). A learner whose
photos cannot be used fails alone, with prep's own reason, and the others go on. Running the
class again resumes: stages recorded as done in `class.json` for the same photos and settings are
skipped, and the rest continue where they stopped (training from its last checkpoint, sampling
keeping finished portraits). `class.json` records each learner's status, seconds per stage and
reason; `class.html` shows the teacher every learner's picks.

Privacy: the photos never leave the machines of the cluster the teacher chose; Ray's usage
statistics are switched off and its dashboard's web page is not started. On one machine, Ray's own
services still open ports on every network interface (Ray 2.60 here; `_node_ip_address` does not
bind them), guarded by the token authentication Ray now turns on by default: on a shared network,
keep the class behind the machine's firewall.
"""

from __future__ import annotations

import dataclasses
import html
import os
import time
from dataclasses import dataclass
from pathlib import Path

from portraitkit.demo import STAGES, DemoConfig, fingerprint, plan, run_stage
from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import check_writable, read_json, write_json, write_text
from portraitkit.faces.photos import PHOTO_SUFFIXES
from portraitkit.core.settings import setting

CLASS_FILE = "class.json"
CLASS_PAGE = "class.html"
GPU_STAGES = ("train", "sample")  # the stages that run a diffusion model


@dataclass
class ClassConfig:
    """A class to run; each field's help is also its `portraitkit class` help."""

    root: str = setting("folder with one sub-folder of photos per learner (the sub-folder's name names the learner)")
    out_dir: str = setting("folder for the class: one folder per learner, class.json and class.html")
    base: str = setting("tiny-sd (offline toy model, CPU), sd15 or sdxl (GPU and network: real portraits)", "tiny-sd")
    train_steps: int | None = setting("training steps; default: 40 on a tiny base, 1000 on a real one", None)
    styles: list[str] | None = setting("styles to sample; default: the demo's", None)
    per_style: int | None = setting("portraits per style; default: 2 on a tiny base, 4 on a real one", None)
    sample_steps: int | None = setting("denoising steps per portrait; default: 8 on a tiny base, the style's own on a real one", None)
    seed: int = setting("seed for training and sampling", 0)
    allow_same_photograph: bool = setting("accept several edits of one photograph as different photos (a class run on "
                                          "the bundled samples); a real training set should hold different shots", False)
    address: str | None = setting("Ray cluster to join (e.g. auto, or ray://host:10001); default: a local one on this machine", None)


def learners(root: Path) -> dict[str, Path]:
    """{learner name: photo folder}: every sub-folder of `root` that holds at least one photo file."""
    if not root.is_dir():
        raise PortraitkitError(f"{root} is not a folder: pass a folder with one sub-folder of photos per learner")
    found = {p.name: p for p in sorted(root.iterdir())
             if p.is_dir() and not p.name.startswith(".") and any(f.suffix.lower() in PHOTO_SUFFIXES for f in p.iterdir())}
    if not found:
        raise PortraitkitError(f"{root} has no sub-folder with photos: put each learner's photos in a folder of their own")
    return found


def run_class(config: ClassConfig) -> dict:
    """Run every learner's stages on Ray; write and return class.json's content."""
    root, out = Path(config.root), Path(config.out_dir)
    people = learners(root)
    if out.resolve() in {p.resolve() for p in people.values()} or out.resolve() == root.resolve():
        raise PortraitkitError(f"--out {out} is the photo folder itself: choose a separate folder for the class")
    check_writable(out)
    saved = out / CLASS_FILE
    previous = read_json(saved, "delete it to run the whole class again", keys=("learners",))["learners"] if saved.is_file() else {}
    ray, started = _start_ray(config.address)
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        stage_task = ray.remote(_stage_task)
        began = time.perf_counter()
        pending = {}
        for name, photos in people.items():
            learner = DemoConfig(out_dir=str(out / name), base=config.base, photos_dir=str(photos), train_steps=config.train_steps,
                                 styles=config.styles, per_style=config.per_style, sample_steps=config.sample_steps, seed=config.seed,
                                 allow_same_photograph=config.allow_same_photograph)
            key = fingerprint(photos, dataclasses.asdict(learner))  # the finished stages were made from these
            done = previous.get(name, {}).get("done", []) if previous.get(name, {}).get("fingerprint") == key else []
            state = {"name": name, "fingerprint": key, "done": list(done), "seconds": dict(previous.get(name, {}).get("seconds", {})),
                     "status": "running", "reason": None}
            ref = ray.put(state)
            for stage in STAGES:  # each task waits for the one before: Ray passes its result along
                options = {"num_gpus": gpus} if stage in GPU_STAGES else {}
                ref = stage_task.options(name=f"{name}:{stage}", num_cpus=1, **options).remote(ref, stage, str(photos), learner)
            pending[name] = ref
        results = {name: ray.get(ref) for name, ref in pending.items()}
        record = {
            "runner": {"name": "ray", "version": ray.__version__, "address": config.address or "local",
                       "gpus_per_training_task": gpus},
            "config": dataclasses.asdict(config),
            "seconds": round(time.perf_counter() - began, 1),
            "learners": results,
        }
    finally:
        if started:
            ray.shutdown()
    write_json(out / CLASS_FILE, record)
    write_text(out / CLASS_PAGE, class_page(out, record))
    return record


def _stage_task(state: dict, stage: str, photos: str, learner: DemoConfig) -> dict:
    """One stage of one learner (a Ray task): skipped when done before or when an earlier stage failed."""
    state = dict(state)
    if state["status"] == "failed":
        return state
    if stage not in state["done"]:
        try:
            state["seconds"][stage] = run_stage(stage, Path(photos), Path(learner.out_dir), learner, plan(learner))
        except PortraitkitError as error:  # this learner's problem, in one sentence; the class goes on
            return {**state, "status": "failed", "reason": f"{stage}: {error}"}
        state["done"] = state["done"] + [stage]
    if stage == STAGES[-1]:
        state["status"] = "done"
    return state


def _start_ray(address: str | None):
    """(ray, whether it was started here): Ray, local (embedded, nothing to set up) or the cluster at
    `address`, with nothing phoning home. Where this process has Ray running already (a teacher's
    notebook running the class again), that one is used, with its warm workers, and left running."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray's usage statistics are on by default
    try:
        import ray
    except ImportError:
        raise PortraitkitError("the class command runs on Ray: install it with `pip install portraitkit[class]`") from None
    if ray.is_initialized():
        return ray, False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is None:
        # The node's address for its own processes: loopback (it does not bind their ports; see the
        # module's note). The pipeline passes small dicts between tasks: a small object store will do.
        kwargs.update(_node_ip_address="127.0.0.1", object_store_memory=100 * 2**20)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as error:
        raise PortraitkitError(f"could not join the Ray cluster at {address} ({error}): start it with `ray start --head`, "
                               "or leave out --address to run on this machine") from None
    return ray, True


def class_page(out: Path, record: dict) -> str:
    """class.html: each learner's status, seconds per stage and picks sheet, linked relatively."""
    rows = []
    for name, learner in record["learners"].items():
        picks = out / name / "portraits" / "picks.png"
        seconds = ", ".join(f"{stage} {value:g} s" for stage, value in learner["seconds"].items())
        shown = (f"<img src='{html.escape(name)}/portraits/picks.png' alt='picks of {html.escape(name)}'>" if picks.is_file()
                 else f"<p class=reason>{html.escape(learner['reason'] or 'no picks yet')}</p>")
        rows.append(f"<section><h2>{html.escape(name)} <small>{learner['status']}</small></h2>"
                    f"<p>{html.escape(seconds)}</p>{shown}</section>")
    runner = record["runner"]
    return ("<!doctype html><html><head><meta charset=utf-8><title>portraitkit class</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "img{max-width:100%;border:1px solid #ddd}.reason{color:#cf222e}small{color:#666;font-weight:normal}"
            f"</style></head><body><h1>The class's picks</h1><p>{len(record['learners'])} learners on Ray {runner['version']} "
            f"({html.escape(str(runner['address']))}), {record['seconds']:g} s in all. Each learner's folder holds their "
            "dataset, LoRA and portraits; ranking.json in portraits/ says why each pick ranks where it does.</p>"
            + "".join(rows) + "</body></html>")
