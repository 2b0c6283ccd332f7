"""The `portraitkit` command line: a thin layer over the stage functions.

Each subcommand is one small `add_<name>(subparsers)` function that declares its arguments
and sets `func`, a function taking the parsed arguments and returning an exit status.
Heavy imports happen inside those functions so that `portraitkit --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import check_writable
from portraitkit.models import families


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portraitkit",
        description="Casual selfies in, flattering true-to-life portraits out.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def add_dataclass_arguments(parser, config_class, positional=(), renames=None, skip=()) -> None:
    """One option per dataclass field, help text from the field's metadata, so a stage's
    settings are declared once, beside the code they configure."""
    renames = renames or {}
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        if f.name in skip:
            continue
        kind, optional = _field_kind(hints[f.name])
        help_text = f.metadata.get("help", "").replace("%", "%%")
        if f.name in positional:
            parser.add_argument(f.name, type=kind, help=help_text)
            continue
        flag = "--" + renames.get(f.name, f.name.replace("_", "-"))
        default = None if f.default is dataclasses.MISSING else f.default
        if kind is bool:
            # --flag / --no-flag where the default is on or left to the stage (None)
            action = argparse.BooleanOptionalAction if default is not False else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=default, help=help_text)
        elif kind in (list, tuple):
            item = typing.get_args(hints[f.name])
            item_type = next((t for t in typing.get_args(item[0]) or item if t in (int, float, str)), str)
            parser.add_argument(flag, dest=f.name, nargs="+", type=item_type, default=default, help=help_text)
        else:
            convert = _none_or(kind) if optional else kind
            shown = f" (default: {default})" if default is not None else ""
            parser.add_argument(flag, dest=f.name, type=convert, default=default, choices=f.metadata.get("choices"), required=f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, help=help_text + shown)


def _field_kind(hint) -> tuple[type, bool]:
    """(basic type, accepts None) of a field's annotation such as `float | None`."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        return (typing.get_origin(inner) or inner), True
    return (typing.get_origin(hint) or hint), False


def _none_or(kind):
    def convert(text: str):
        return None if text.lower() == "none" else kind(text)

    convert.__name__ = kind.__name__
    return convert


def config_from_args(config_class, args):
    names = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in vars(args).items() if k in names})


# --- subcommands -----------------------------------------------------------------------------
# (each stage adds its own function here and lists it in COMMANDS below)


def add_train(subparsers) -> None:
    from portraitkit.train.config import TrainConfig

    parser = subparsers.add_parser("train", help="train a LoRA of the person on a prepared dataset",
                                   description="Train a LoRA on a dataset made by `portraitkit prep`.")
    add_dataclass_arguments(parser, TrainConfig, positional=("dataset_dir",), renames={"out_dir": "out"})
    parser.set_defaults(func=run_train)


def run_train(args) -> int:
    from portraitkit.train.config import TrainConfig, check_config
    from portraitkit.train.launch import cpu_processes_asked, run_as_processes

    config = config_from_args(TrainConfig, args)
    check_config(config)  # a mistake answered in a second, before torch and diffusers load (train checks again)
    processes = cpu_processes_asked()
    if processes > 1:  # `accelerate launch --cpu --num_processes N` started this one process alone
        return run_as_processes(processes, args.argv)
    if os.environ.get("RANK", "0") == "0":  # one notice, not one per process
        _toy_notice(config.base)
    from portraitkit.models.lora import where_the_files_go
    from portraitkit.train.loop import train
    from portraitkit.train.validate import best_line

    run_dir = train(config)
    print("\n".join(where_the_files_go(run_dir)))
    if line := best_line(run_dir):
        print(line)  # "best/: step 800: 6 of 8 portraits look like you, likeness 0.41; your own new photos land within ..."
    return 0


def add_prep(subparsers) -> None:
    parser = subparsers.add_parser(
        "prep", help="check, crop and caption a folder of photos into a training set",
        description="Check every photo (readable, one clear face, sharp, well exposed, the same person, "
        "no duplicates), crop the good ones square around the face and caption them. Writes the "
        "dataset, report.json and contact_sheet.png to --out.",
    )
    parser.add_argument("photos_dir", metavar="PHOTOS_DIR", help="folder with 10-20 photos of one person")
    parser.add_argument("--out", dest="out_dir", metavar="DATASET_DIR", required=True, help="folder for the prepared dataset")
    parser.add_argument("--resolution", type=int, default=512, help="side of the square images: 512 for SD 1.5, 1024 for SDXL (default: 512)")
    parser.add_argument("--token", default="sks", help="the rare word that will mean this person (default: sks)")
    parser.add_argument("--class-word", default="person", help="what the person is: person, man, woman... (default: person)")
    parser.add_argument("--correct-distance", action="store_true",
                        help="re-render photos taken from under 60 cm (EXIF focal length and face size) as if from 150 cm, "
                        "so the LoRA does not learn a selfie's wider nose as the face")
    parser.add_argument("--allow-same-photograph", action="store_true",
                        help="accept crops, mirror images and colour edits of one photograph as different photos "
                        "(the bundled samples are one photograph edited to show every check; your own set should hold different shots)")
    parser.set_defaults(func=run_prep)


def run_prep(args) -> int:
    from portraitkit.prep import PrepConfig, prepare

    config = PrepConfig(resolution=args.resolution, token=args.token, class_word=args.class_word,
                        correct_distance=args.correct_distance, one_per_photograph=not args.allow_same_photograph)
    result = prepare(args.photos_dir, args.out_dir, config)
    print(f"Dataset in {result.out_dir}: see report.json and contact_sheet.png there.")
    if not result.enough:
        print(result.message, file=sys.stderr)
        return 1
    print(result.message)
    return 0


def add_lens(subparsers) -> None:
    parser = subparsers.add_parser(
        "lens", help="how camera distance and focal length change a face (head models)",
        description="Apparent changes of a face photographed from --distance-cm instead of --reference-cm "
        "(both measured from the camera to the nose tip; 'inf' for an infinitely distant camera), with the face "
        "framed at the same width. --model head: the 3D head model (and, with --offset-frac, the stretch of a face "
        "placed off the frame's centre); --model ward: Ward et al.'s two parallel planes.",
    )
    parser.add_argument("--distance-cm", type=float, required=True, help="camera to nose tip, e.g. 30 for an arm's-length selfie")
    parser.add_argument("--reference-cm", type=float, default=152.4,
                        help="distance to compare against, or inf (default: 152.4, 5 feet; Ward et al. compare against inf)")
    parser.add_argument("--model", choices=["head", "ward"], default="head",
                        help="head: the 3D head model; ward: Ward et al. 2018's parallel planes (default: head)")
    parser.add_argument("--focal-mm", type=float, default=26.0, help="35 mm-equivalent focal length (default: 26, a phone's main camera)")
    parser.add_argument("--offset-frac", type=float, default=0.0,
                        help="where the face sits: 0 the centre (a selfie), 1 the left/right edge of the frame (default: 0)")
    parser.add_argument("--head", choices=["women", "men"], default="women", help="which anthropometric averages (default: women)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_lens)


def run_lens(args) -> int:
    import json
    import math

    from portraitkit.teach.lens import distortion
    from portraitkit.teach.lens_published import ward_change_pct

    if not args.reference_cm > 0:
        raise PortraitkitError(f"--reference-cm must be positive (or inf), got {args.reference_cm}.")
    if not 0 < args.distance_cm < math.inf:
        raise PortraitkitError(f"--distance-cm must be a positive number of cm, got {args.distance_cm}.")
    against = "an infinitely distant camera" if math.isinf(args.reference_cm) else f"{args.reference_cm:g} cm"
    reference = "inf" if math.isinf(args.reference_cm) else args.reference_cm  # strict JSON has no Infinity
    if args.model == "ward":
        change = ward_change_pct(args.distance_cm, args.head, args.reference_cm)
        result = {"model": "ward", "distance_cm": args.distance_cm, "reference_cm": reference, "head": args.head,
                  "nose_to_face_width_change_pct": round(change, 2)}
        if args.json:
            print(json.dumps(result))
        else:
            print(f"Ward et al.'s parallel planes, at {args.distance_cm:g} cm against {against}: "
                  f"nose width relative to face width {change:+.1f}%")
        return 0
    result = {"model": "head", **distortion(args.distance_cm, args.reference_cm, args.focal_mm, args.offset_frac, args.head).to_dict(),
              "reference_cm": reference}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"At {args.distance_cm:g} cm instead of {against} (face framed at the same width):")
    print(f"  nose width relative to face width  {result['nose_to_face_width_change_pct']:+.1f}%")
    print(f"  nose length relative to face width {result['nose_length_change_pct']:+.1f}%")
    print(f"  visible ears relative to face      {result['ear_visible_change_pct']:+.1f}%")
    if args.offset_frac:
        print(f"With a {args.focal_mm:g} mm lens ({result['field_of_view_deg']:.0f} degrees across), a face at "
              f"{args.offset_frac:g} of the way to the edge is stretched {result['edge_stretch_pct']:+.1f}% in width.")
    return 0


def add_diagnose(subparsers) -> None:
    parser = subparsers.add_parser(
        "diagnose", help="measure light, colour and processing problems in photos",
        description="Measure exposure, colour cast, shadow harshness, over-sharpening, JPEG blockiness, noise "
        "and blur of each photo, on the largest face when one is found, and name the problems found.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="photos (JPEG, PNG, HEIC, ...)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per file")
    parser.set_defaults(func=run_diagnose)


def run_diagnose(args) -> int:
    import json

    from portraitkit.teach.diagnose import diagnose_image
    from portraitkit.faces.detect import detect_faces
    from portraitkit.faces.photos import open_photo

    results = []

    def failed(path: str, message: str) -> None:  # one bad file must not hide the others' results
        results.append({"file": path, "error": message})
        if not args.json:
            print(f"{path}: {message}", file=sys.stderr)

    for path in args.files:
        try:
            image = open_photo(path)
            faces = detect_faces(image)
            diagnosis = diagnose_image(image, faces[0] if faces else None)
        except PortraitkitError as error:
            failed(path, str(error))
            continue
        except Exception as error:  # a bug on one odd photo
            failed(path, f"could not be measured ({type(error).__name__}: {error})")
            continue
        measures = diagnosis.to_dict()["measures"]
        results.append({"file": path, "face_found": bool(faces), "flags": diagnosis.flags, **measures})
        if not args.json:
            scores = ", ".join(f"{name} {m['score']:.2f}" for name, m in measures.items() if m["score"] is not None)
            print(f"{path}: {scores}" + ("" if faces else " (no face found: whole photo)"))
            for flag in diagnosis.flags:
                print(f"  - {flag}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if any("error" in row for row in results) else 0


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_styles(subparsers) -> None:
    parser = subparsers.add_parser("styles", help="list the portrait styles, one per line: name, then description",
                                   description="List the built-in styles plus those in --styles-file.")
    parser.add_argument("--styles-file", help="YAML or JSON file with your own styles")
    parser.add_argument("--family", choices=families.names(), default="sd", help="model family the styles are resolved for (default: sd)")
    parser.set_defaults(func=run_styles)


def run_styles(args) -> int:
    from portraitkit.sample.styles import load_styles

    styles = load_styles(*([args.styles_file] if args.styles_file else []), family=args.family)
    width = max(len(name) for name in styles) + 2
    for name, style in styles.items():
        print(f"{name:<{width}}{style.description}")
    return 0


def add_sample(subparsers) -> None:
    from portraitkit.sample.render import SampleConfig

    parser = subparsers.add_parser("sample", help="generate styled portraits with a trained LoRA",
                                   description="Generate portraits in the chosen styles with the run's LoRA; writes the "
                                   "PNGs (recipe in their `parameters` text), manifest.json and grids/ to --out.")
    add_dataclass_arguments(parser, SampleConfig, positional=("run_dir",), renames={"out_dir": "out"}, skip=("styles",))
    parser.add_argument("--styles", type=_names, help="comma-separated style names, e.g. studio,outdoor (see `portraitkit styles`); "
                        "default: studio,natural,outdoor,corporate")
    parser.set_defaults(func=run_sample)


def run_sample(args) -> int:
    from pathlib import Path

    from portraitkit.sample.render import SampleConfig, read_run, sample

    config = config_from_args(SampleConfig, args)
    _toy_notice(read_run(Path(config.run_dir))["base"]["name"])
    made = sample(config)
    print(f"{len(made)} portraits in {config.out_dir} (manifest.json; one grid per style in grids/)")
    return 0


def add_pick(subparsers) -> None:
    parser = subparsers.add_parser("pick", help="rank portraits by likeness to the person and picture quality",
                                   description="Score every image in IMAGES_DIR against the person in the reference "
                                   "dataset; writes ranking.json (best first) and picks.png (the top K) there.")
    parser.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of images, e.g. the --out of `portraitkit sample`")
    parser.add_argument("--reference", metavar="DATASET_DIR", required=True, help="the prepared dataset of the person")
    parser.add_argument("--top", type=int, default=8, help="images on the picks sheet (default: 8)")
    parser.set_defaults(func=run_pick)


def run_pick(args) -> int:
    from pathlib import Path

    from portraitkit.pick.likeness import PICKS_SHEET, RANKING_FILE, IdentityScorer, rank_images
    from portraitkit.pick.report import band_line, ranking_lines

    check_writable(args.images_dir, "IMAGES_DIR (where ranking.json and picks.png go)")
    scorer = IdentityScorer.from_folder(args.reference)
    ranked = rank_images(args.images_dir, args.reference, top=args.top, scorer=scorer)
    print("\n".join(ranking_lines(ranked, args.top)))
    folder = Path(args.images_dir)
    print(f"Ranking of {len(ranked)} images in {folder / RANKING_FILE}; picks sheet {folder / PICKS_SHEET}")
    print(band_line(ranked, scorer.band))
    return 0


def add_demo(subparsers) -> None:
    from portraitkit.demo import DemoConfig

    parser = subparsers.add_parser("demo", help="the whole pipeline on the sample photos, with an HTML report",
                                   description="Prepare the sample photos, train a LoRA, sample styled portraits, rank them "
                                   "and write report.html in --out. The default tiny-sd base runs on a CPU in a minute or "
                                   "two (its pictures are noise); --base sd15 or sdxl on a GPU makes real portraits.")
    add_dataclass_arguments(parser, DemoConfig, renames={"out_dir": "out", "photos_dir": "photos"}, skip=("styles",))
    parser.add_argument("--styles", type=_names, help="comma-separated style names (see `portraitkit styles`); default: "
                        "studio,outdoor,black_and_white on a tiny base, studio,natural,outdoor,corporate on a real one")
    parser.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from portraitkit.demo import DemoConfig, demo

    config = config_from_args(DemoConfig, args)
    _toy_notice(config.base)
    report = demo(config)
    print(f"Done: open {report} in a browser.")
    return 0


def add_class(subparsers) -> None:
    from portraitkit.classroom import ClassConfig

    parser = subparsers.add_parser("class", help="a workshop: every learner's photos through every stage, on Ray",
                                   description="Each sub-folder of ROOT is one learner's photos. Runs each learner's prep, "
                                   "train, sample and pick as Ray tasks (a local Ray by default, or the cluster at --address), "
                                   "then writes class.json and class.html in --out. Run it again to resume.")
    add_dataclass_arguments(parser, ClassConfig, positional=("root",), renames={"out_dir": "out"}, skip=("styles",))
    parser.add_argument("--styles", type=_names, help="comma-separated style names (see `portraitkit styles`); default: the demo's")
    parser.set_defaults(func=run_class)


def run_class(args) -> int:
    from portraitkit.classroom import CLASS_PAGE, ClassConfig, run_class as run

    config = config_from_args(ClassConfig, args)
    _toy_notice(config.base)
    record = run(config)
    failed = {name: learner["reason"] for name, learner in record["learners"].items() if learner["status"] != "done"}
    print(f"{len(record['learners']) - len(failed)} of {len(record['learners'])} learners done; open {args.out_dir}/{CLASS_PAGE}")
    for name, reason in failed.items():
        print(f"  {name}: {reason}")
    return 0 if not failed else 1


def add_plan(subparsers) -> None:
    from portraitkit.plan.estimate import PlanConfig

    parser = subparsers.add_parser("plan", help="estimate GPU memory, RAM and time of a training run before starting it",
                                   description="Estimate a LoRA training run's peak GPU memory, peak RAM and time per step "
                                   "on a GPU (default: the free Colab T4), whether it fits, and the cheapest change that "
                                   "makes it fit. Estimates computed from the architecture: no weights are loaded (for a "
                                   "Hugging Face id only its small config files are read).")
    add_dataclass_arguments(parser, PlanConfig)
    parser.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    parser.set_defaults(func=run_plan)


def run_plan(args) -> int:
    import json

    from portraitkit.plan.estimate import PlanConfig, plan_run

    plan = plan_run(**dataclasses.asdict(config_from_args(PlanConfig, args)))
    if not args.json:  # the JSON stays one document; its "base" names the toy
        _toy_notice(args.base)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.summary())
    return 0


COMMANDS: list = [add_train, add_prep, add_lens, add_diagnose, add_styles, add_sample, add_pick, add_demo, add_class, add_plan]


def _toy_notice(base: str) -> None:
    from portraitkit.models.bases import toy_notice

    if notice := toy_notice(base):
        print(notice, flush=True)


def _how_to_continue(args) -> str:
    """What to type after Ctrl-C: train continues from its last checkpoint with --resume (once its
    run folder exists); demo, class and sample keep their finished work when run again."""
    import shlex
    from pathlib import Path

    if args.command == "train" and (Path(args.out_dir) / "config.json").is_file():
        again = args.argv if "--resume" in args.argv else [*args.argv, "--resume"]
        return f"; continue from the last checkpoint with `portraitkit {shlex.join(again)}`"
    if args.command in ("demo", "class", "sample"):
        return "; run the same command again to continue"
    return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        if getattr(args, "out_dir", None):  # every stage's output folder, before any of its work
            check_writable(args.out_dir)
        return int(args.func(args) or 0)
    except PortraitkitError as error:
        print(f"portraitkit {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"portraitkit {args.command}: interrupted{_how_to_continue(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `portraitkit styles | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
