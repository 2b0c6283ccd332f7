"""The whole pipeline in one command: photos -> dataset -> LoRA -> styled portraits -> picks.

`demo(DemoConfig(out_dir=...))` runs every stage with the library's own functions on the sample
photos in `data/samples/`, then writes `report.html`, one page showing what each stage did, its
images linked relatively so the output folder can be zipped, moved or opened offline.

On the default `tiny-sd` base it runs on a laptop CPU in a minute or two. That base has random
weights: its "portraits" are noise, and the report says so. The same stages on `--base sd15`
(or `sdxl`) with a GPU and network are the real thing, at full-size settings.

Running it again into the same folder continues where it stopped: the dataset is kept when it was
made from the same photos (names, sizes, times) and prep settings (`demo.json` records which),
training resumes from its last checkpoint, and finished portraits are kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from portraitkit.models import families
from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import atomic_path, check_writable, write_json, write_text
from portraitkit.core.settings import check_at_least, setting

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
DEMO_FILE = "demo.json"
# Photos ranked in the tiny demo's "scorer on real photos" section: the person, the person
# blurred, someone else, no face.
SCORER_PHOTOS = ("hopper.jpg", "hopper_blurry.jpg", "astronaut.jpg", "coffee.jpg")


@dataclass
class DemoConfig:
    """Settings of the demo; None means "right for the base" (tiny: seconds on a CPU; real: full size)."""

    out_dir: str = setting("folder for everything the demo makes, report.html first")
    base: str = setting("tiny-sd (offline toy model, CPU, about a minute), sd15 or sdxl (GPU and network: real portraits)", "tiny-sd")
    photos_dir: str | None = setting("photos of one person; default: the repository's data/samples", None)
    train_steps: int | None = setting("training steps; default: 40 on a tiny base, 1000 on a real one (~100 per photo)", None)
    styles: list[str] | None = setting("styles to sample; default: studio, outdoor, black_and_white (tiny) or studio, natural, outdoor, corporate", None)
    per_style: int | None = setting("portraits per style; default: 2 on a tiny base, 4 on a real one", None)
    sample_steps: int | None = setting("denoising steps per portrait; default: 8 on a tiny base, the style's own (30) on a real one", None)
    seed: int = setting("seed for training and sampling", 0)
    allow_same_photograph: bool | None = setting(
        "accept several edits of one photograph as different photos; default: only for the bundled samples, which are "
        "one photograph edited to show every check (a real training set should hold different shots)", None)


@dataclass
class Plan:
    """The demo's settings once the base is known."""

    tiny: bool
    prep_resolution: int | None
    train_steps: int
    validate_every: int
    validation_steps: int
    styles: list[str] | None
    per_style: int
    sample_steps: int | None


def plan(config: DemoConfig) -> Plan:
    from portraitkit.models.bases import TINY_PRESETS, check_available

    check_at_least({"train_steps": config.train_steps, "per_style": config.per_style, "sample_steps": config.sample_steps}, 1)
    check_at_least({"seed": config.seed}, 0)
    check_writable(config.out_dir)
    tiny = config.base in TINY_PRESETS
    if tiny:
        # Prep at 256 px although the tiny base trains at 64: faces in 64 px crops are too small
        # for the face detector, and the ranking needs the dataset's faces as its reference.
        steps = config.train_steps or 40
        return Plan(True, 256, steps, max(1, steps // 2), 8, config.styles or ["studio", "outdoor", "black_and_white"],
                    config.per_style or 2, config.sample_steps or 8)
    family = families.named(check_available(config.base).family)  # before prep: a base that cannot load fails in seconds
    steps = config.train_steps or 1000
    # FLUX.2 at 512 px: the size a T4's session fits (`plan.estimate.session_resolution`)
    return Plan(False, 512 if family.quantizable else family.native_size, steps, max(1, steps // 4), 25, config.styles,
                config.per_style or 4, config.sample_steps)


def demo(config: DemoConfig) -> Path:
    """Run prep, train, sample and pick; write report.html; return its path."""
    from portraitkit.pick.likeness import RANKING_FILE, rank_images

    out = Path(config.out_dir)
    photos = Path(config.photos_dir) if config.photos_dir else SAMPLES
    if not photos.is_dir():
        raise PortraitkitError(
            f"no photo folder at {photos}: the sample photos come with the source repository, not the pip package; "
            "pass --photos with a folder of 10-20 photos of one person"
        )
    settings = plan(config)
    seconds: dict[str, float] = {}
    # What the dataset is made from; the scorer check ranks its four photos against the dataset.
    made_from = fingerprint(photos, {"resolution": settings.prep_resolution, "allow_same_photograph": _allow_same(config, photos)})
    record = out / DEMO_FILE
    kept = _prepared_from(record) == made_from and (out / "dataset" / "report.json").is_file()

    def save_record() -> None:
        write_json(record, {"config": dataclasses.asdict(config), "plan": dataclasses.asdict(settings), "seconds": seconds,
                            "prepared_from": made_from})

    def timed(stage: str, work) -> None:
        # A heading per stage: between progress bars (and while training validates or saves a
        # checkpoint, when its bar stands still) the user knows which stage is working.
        print(f"== {stage} ==", flush=True)
        began = time.perf_counter()
        work()
        seconds[stage] = round(time.perf_counter() - began, 1)
        print(f"   {stage}: {seconds[stage]:.1f} s", flush=True)

    def keep(stage: str) -> None:
        print(f"== {stage} ==\n   {stage}: kept, made from the same photos and settings by the last run", flush=True)
        seconds[stage] = 0.0

    for stage in STAGES:
        if stage != "prep":
            timed(stage, lambda: run_stage(stage, photos, out, config, settings))
        elif kept:
            keep(stage)
        else:
            record.unlink(missing_ok=True)  # the dataset it names is about to be replaced: an interrupted prep is redone
            timed(stage, lambda: run_stage(stage, photos, out, config, settings))
            save_record()

    check = out / "scorer_check"
    if settings.tiny and kept and (check / RANKING_FILE).is_file():
        keep("scorer check")
    elif settings.tiny and all((photos / name).is_file() for name in SCORER_PHOTOS):
        check.mkdir(parents=True, exist_ok=True)
        for name in SCORER_PHOTOS:
            shutil.copy2(photos / name, check / name)
        timed("scorer check", lambda: rank_images(check, out / "dataset", top=len(SCORER_PHOTOS)))

    save_record()
    return write_report(out, config, settings, seconds)


def fingerprint(photos: Path, settings: dict) -> str:
    """Which photos (names, sizes, times, in sub-folders too, as prep reads them) and settings a
    stage's output was made from."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in sorted(photos.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(photos).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _prepared_from(record: Path) -> str | None:
    """The fingerprint of the photos and settings the last run's dataset was made from (None: unknown)."""
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("prepared_from")
    except (OSError, ValueError, AttributeError):  # no record, or one cut short: prep runs again
        return None


def _allow_same(config: DemoConfig, photos: Path) -> bool:
    if config.allow_same_photograph is not None:
        return config.allow_same_photograph
    return photos.resolve() == SAMPLES.resolve()


# --- the stages, one person's photos into `out` ------------------------------------------------
# dataset/, run/ and portraits/ under `out`; each stage reads what the one before wrote, so they
# can run one after another here, or as separate tasks (the `class` command runs them on Ray).

STAGES = ("prep", "train", "sample", "pick")


def run_stage(stage: str, photos: Path, out: Path, config: DemoConfig, settings: Plan) -> float:
    """Run one stage; return its seconds. Raises PortraitkitError with the stage's own reason."""
    began = time.perf_counter()
    {"prep": _prep, "train": _train, "sample": _sample, "pick": _pick}[stage](Path(photos), Path(out), config, settings)
    return round(time.perf_counter() - began, 1)


def _prep(photos: Path, out: Path, config: DemoConfig, settings: Plan) -> None:
    from portraitkit.prep import PrepConfig, prepare

    prepared = prepare(photos, out / "dataset", PrepConfig(resolution=settings.prep_resolution, token="sks", class_word="person",
                                                           one_per_photograph=not _allow_same(config, photos)))
    if not prepared.enough:
        raise PortraitkitError(prepared.message)


def _train(photos: Path, out: Path, config: DemoConfig, settings: Plan) -> None:
    from portraitkit.train.config import TrainConfig
    from portraitkit.train.loop import train

    run_dir = out / "run"
    train(TrainConfig(
        dataset_dir=str(out / "dataset"), out_dir=str(run_dir), base=config.base, steps=settings.train_steps, seed=config.seed,
        validate_every=settings.validate_every, checkpoint_every=settings.validate_every,
        validation_steps=settings.validation_steps, resume=(run_dir / "config.json").is_file(),
        # The tiny base is random: a rank-4 LoRA at a high rate shows learning within 40 steps, and
        # one seed per style is enough to show that its noise has no face.
        **({"rank": 4, "lr": 1e-3, "validation_seeds": (0,)} if settings.tiny else {}),
    ))


def _sample(photos: Path, out: Path, config: DemoConfig, settings: Plan) -> None:
    from portraitkit.sample.render import SampleConfig, sample

    sample(SampleConfig(run_dir=str(out / "run"), out_dir=str(out / "portraits"), styles=settings.styles,
                        per_style=settings.per_style, seed=config.seed, steps=settings.sample_steps))


def _pick(photos: Path, out: Path, config: DemoConfig, settings: Plan) -> None:
    from portraitkit.pick.likeness import rank_images

    portraits = out / "portraits"
    top = min(8, len(json.loads((portraits / "manifest.json").read_text(encoding="utf-8"))))
    rank_images(portraits, out / "dataset", top=top)


# --- the report -------------------------------------------------------------------------------

STYLE_SHEET = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
img { max-width: 100%; border: 1px solid #ddd; }
img.small { width: 256px; image-rendering: pixelated; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
.note { background: #fff6d6; border-left: 4px solid #e0b400; padding: 0.6em 1em; }
.ok { color: #1b7a2b; } .no { color: #b3261e; } code { background: #f3f3f3; padding: 0 3px; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _img(path: str, alt: str, small: bool = False) -> str:
    return f'<a href="{_e(path)}"><img src="{_e(path)}" alt="{_e(alt)}"{" class=small" if small else ""}></a>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _distance(value) -> str:
    return "no face found" if value is None else f"{value:.2f}"


def _ranking_table(folder: Path, prefix: str, small: bool) -> str:
    ranking = json.loads((folder / "ranking.json").read_text(encoding="utf-8"))
    rows = [[str(r["rank"]), _img(f"{prefix}/{r['file']}", r["file"], small).replace("<img ", '<img style="width:96px" ', 1),
             _e(r["file"]), f"{r['score']:.2f}", _distance(r["identity_distance"]), _e("; ".join(r["reasons"]) or "-")]
            for r in ranking]
    return _table(["rank", "image", "file", "score", "identity distance", "ranked down because"], rows)


def write_report(out: Path, config: DemoConfig, settings: Plan, seconds: dict[str, float]) -> Path:
    """report.html: every stage's outputs, linked relatively, with what they mean."""
    dataset, run_dir, portraits = out / "dataset", out / "run", out / "portraits"
    report = json.loads((dataset / "report.json").read_text(encoding="utf-8"))
    words = report["summary"]["reason_words"]
    identity = json.loads((run_dir / "identity.json").read_text(encoding="utf-8")) if (run_dir / "identity.json").is_file() else None
    manifest = json.loads((portraits / "manifest.json").read_text(encoding="utf-8"))
    total = sum(seconds.values())
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>portraitkit demo</title><style>{STYLE_SHEET}</style></head><body>",
             "<h1>portraitkit demo</h1>",
             f"<p>Base model <code>{_e(config.base)}</code>; {total:.0f} s in all "
             f"({', '.join(f'{stage} {s:.0f} s' for stage, s in seconds.items())}).</p>"]
    if settings.tiny:
        parts.append(
            "<p class=note>This run used <b>tiny-sd</b>, an offline toy model with the real Stable Diffusion architecture and "
            "random weights, so that every stage runs on any computer in a minute or two. Its pictures are noise, not "
            "portraits, and no faces are found in them: the identity scores below are honestly empty. For real portraits "
            "run <code>portraitkit demo --base sd15</code> on a GPU with network access (e.g. a free Colab T4).</p>")

    # 1. prep
    rows = []
    for photo in report["photos"]:
        said = ", ".join(words.get(code, code) for code in photo["reasons"] + photo.get("warnings", []))
        status = f'<span class={"ok" if photo["status"] == "accepted" else "no"}>{_e(photo["status"])}</span>'
        rows.append([_e(photo["source"]), status, _e(said or "-"), _e(photo.get("caption") or "")])
    parts += ["<h2>1. Photos → training set</h2>",
              f"<p>{_e(report['summary']['message'])} Each photo is checked (one clear face, sharp, well exposed, the "
              "same person as the rest, no duplicates), cropped square around the face and captioned.</p>",
              _img("dataset/contact_sheet.png", "contact sheet"),
              _table(["photo", "decision", "why / warnings", "caption"], rows)]
    advice = report.get("variety", {}).get("advice") or []
    if advice:
        parts.append("<p>To improve the set:</p><ul>" + "".join(f"<li>{_e(a)}</li>" for a in advice) + "</ul>")

    # 2. train
    parts += ["<h2>2. Training the LoRA</h2>",
              f"<p>{settings.train_steps} steps on <code>{_e(config.base)}</code>. The loss curve, and the validation "
              "portraits drawn along the way in two of sample's styles with fixed seeds, exactly as <code>sample</code> draws them:</p>",
              _img("run/loss.png", "loss curve")]
    for grid in sorted((run_dir / "validation").glob("step_*.png")):
        parts.append(f"<p>{_e(grid.stem.replace('_', ' '))}</p>" + _img(f"run/validation/{grid.name}", grid.stem, settings.tiny))
    if identity is not None:
        rows = [[str(r["step"]), f"{r['faces']} of {r['renders']}", f"{r.get('in_band', 0)} of {r['renders']}",
                 _distance(r["likeness"]), _e(r["reason"] or "-")] for r in identity["steps"]]
        best = (f"Step {identity['best_step']} has the most portraits in the person's band; its LoRA is kept in "
                f"<code>run/{_e(identity['best_lora'])}</code>." if identity["best_step"] is not None
                else _e(identity["reason"][:1].upper() + identity["reason"][1:]) + ".")
        band = identity.get("band")
        where = (f" The person's own new photos land within {band['you_within']:.2f} of the centre of their photos, other "
                 f"people beyond {band['someone_else_beyond']:.2f}." if band else "")
        parts += [f"<p>Each validation step's portraits placed on the likeness scale (distance to the centre of the training "
                  f"faces, lower is more alike).{where} {best} The final output is <code>run/{_e(identity['final_lora'])}</code>.</p>",
                  _img("run/likeness.png", "likeness curve"),
                  _table(["step", "faces found", "in your band", "likeness", "note"], rows)]
        if settings.tiny:  # noise has no face to judge: what the curve shows when the renders are faces
            from portraitkit.train import likeness_example

            with atomic_path(out / "likeness_worked_example.png") as tmp:
                likeness_example.figure().savefig(tmp)
            parts += ["<h3>A likeness curve with faces: a worked example</h3>",
                      "<p>The tiny base draws no faces, so its curve above is empty. This one was measured on real photos of "
                      "one person (notebook 04 draws it too): no LoRA was trained, each step's renders are real photos scored "
                      "by validation's own code.</p>",
                      _img("likeness_worked_example.png", "likeness curve of the worked example"),
                      "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in likeness_example.lines()) + "</ul>"]

    # 3. sample
    parts += ["<h2>3. Styled portraits</h2>",
              "<p>Each PNG carries its full recipe (prompt, negative prompt, steps, sampler, guidance, seed, size, model, "
              "LoRA scale) in a <code>parameters</code> text chunk that AUTOMATIC1111's PNG Info tab reads; "
              "<a href=portraits/manifest.json>manifest.json</a> lists them all.</p>"]
    for style in dict.fromkeys(entry["style"] for entry in manifest):
        entry = next(e for e in manifest if e["style"] == style)
        parts += [f"<h3>{_e(style)}</h3>", _img(f"portraits/{entry['grid']}", style, settings.tiny),
                  f"<p><small><b>prompt</b> {_e(entry['prompt'])}<br><b>negative</b> {_e(entry['negative_prompt'])}<br>"
                  f"guidance {entry['guidance_scale']}, {entry['steps']} steps, {_e(entry['sampler'])}, LoRA scale {entry['lora_scale']}</small></p>"]

    # 4. pick
    parts += ["<h2>4. Ranking and picks</h2>",
              "<p>Every portrait scored by likeness to the training photos (distance of its dlib face embedding to the centre "
              "of theirs, the same scale as in training) and picture quality (one face, sharpness, exposure); a portrait "
              "that copies a training photo ranks below every one that does not, and one with no face found ranks last. "
              "<a href=portraits/ranking.json>ranking.json</a>, and the picks sheet of the top ones:</p>",
              _img("portraits/picks.png", "picks sheet"), _ranking_table(portraits, "portraits", settings.tiny)]
    if (out / "scorer_check" / "ranking.json").is_file():
        parts += ["<h3>The same scorer on real photos</h3>",
                  "<p>Since the tiny base draws no faces, here is what the scorer does with faces. The sample photos of the "
                  "person are edits of her one training photograph, so each is caught as a training photo given back "
                  "(<code>copies_training_photo</code>, naming it): the person, but no new portrait, ranked below any "
                  "new portrait of her and above another person; a photo without a face comes last.</p>",
                  _img("scorer_check/picks.png", "scorer on real photos"), _ranking_table(out / "scorer_check", "scorer_check", False)]

    parts += ["<h2>Files</h2><ul>",
              "<li><a href=dataset/report.json>dataset/report.json</a>: every photo's decision and measurements</li>",
              "<li><a href=run/config.json>run/config.json</a>, <a href=run/train_log.jsonl>run/train_log.jsonl</a>, "
              "<a href=run/identity.json>run/identity.json</a>, the LoRA in <code>run/pytorch_lora_weights.safetensors</code></li>",
              "<li><a href=portraits/manifest.json>portraits/manifest.json</a>, <a href=portraits/ranking.json>portraits/ranking.json</a></li>",
              "</ul></body></html>"]
    return write_text(out / "report.html", "\n".join(parts))
