"""Notebook 03's panels: photos uploaded from a local Jupyter, and the learner's verdict on each photo prep examined.

`FileUpload.value` changed shape between ipywidgets 7 and 8; it is read through `uploaded_files`.
"""

from __future__ import annotations

from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.widgets.panel import THUMB_PX, Panel, card, file_name_html, gallery, say, thumbnail


SOURCE_REPOSITORY = "https://github.com/portraitkit/portraitkit"  # where the notebooks' %pip install takes portraitkit from


# --- upload (local Jupyter; in Colab use portraitkit.colab.upload_photos) -------------------------


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """(name, content) pairs from a FileUpload's `value`, in ipywidgets 7 or 8 form.

    ipywidgets 7: a dict {name: {"metadata": {...}, "content": bytes}}.
    ipywidgets 8: a tuple of dicts {"name", "type", "size", "content": memoryview, "last_modified"}.
    """
    if isinstance(value, dict):
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value or ()]


SAMPLES_MARKER = ".course-samples"  # beside the photos copy_samples put there


def copy_samples(dest_dir: str | Path) -> list[Path]:
    """Copy the course's sample photos (`data/samples` of the source repository: one public-domain
    portrait of Grace Hopper in 14 imperfect variants, plus the mistakes a real folder holds) into
    `dest_dir`, for a learner without photos of their own; returns the photos now there."""
    import shutil
    import subprocess

    from portraitkit.colab import in_colab, list_photos
    from portraitkit.demo import SAMPLES

    samples = SAMPLES
    if not samples.is_dir() and in_colab():  # pip installed the package only: fetch the repository once
        source = Path("/content/portraitkit-source")
        if not source.is_dir():
            subprocess.run(["git", "clone", "-q", "--depth", "1", SOURCE_REPOSITORY, str(source)], check=False)
        samples = source / "data" / "samples"
    if not samples.is_dir():
        raise PortraitkitError(
            f"the sample photos come with the source repository, not the pip package (no {samples}): "
            f"clone {SOURCE_REPOSITORY} and set PHOTOS_DIR to its data/samples folder")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for photo in list_photos(samples):
        if not (dest_dir / photo.name).is_file():  # a re-run copies nothing twice
            shutil.copy2(photo, dest_dir / photo.name)
    (dest_dir / SAMPLES_MARKER).touch()  # prep is told these are edits of one photograph (`holds_samples`)
    return list_photos(dest_dir)


def holds_samples(photos_dir: str | Path) -> bool:
    """Whether `copy_samples` filled this folder: the samples are one photograph edited to show every
    check, so prep must accept edits of one photograph there (`PrepConfig(one_per_photograph=False)`)."""
    return (Path(photos_dir) / SAMPLES_MARKER).is_file()


class UploadPanel(Panel):
    """A FileUpload button that saves the chosen photos into `dest_dir` as they arrive, and a
    button that copies the course's sample photos there instead (`copy_samples`)."""

    def __init__(self, dest_dir: str | Path):
        import ipywidgets as w

        self.dest_dir = Path(dest_dir)
        self.saved: list[Path] = []
        self.upload = w.FileUpload(accept="image/*,.heic,.heif", multiple=True, description="Add photos")
        self.samples = w.Button(description="No photos? Use the samples", layout=w.Layout(width="auto"),
                                tooltip="copy the course's sample photos (Grace Hopper, public domain) into this folder")
        self.samples.on_click(self._on_samples)
        self.status = w.HTML()
        self.upload.observe(self._on_upload, names="value")
        self.widget = w.VBox([w.HBox([self.upload, self.samples]), self.status])
        # The folder exists from the start, so a cell run before any upload says "no photos in it"
        # rather than "not a folder"; the count lives here, updated with every upload.
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        self._say_count([])

    def _say_count(self, problems: list[str]) -> None:
        from portraitkit.colab import list_photos

        count = len(list_photos(self.dest_dir))
        text = f"{count} photos in {self.dest_dir}." + (
            " Run the next cells." if count else " Choose them with Add photos (or use the samples), then run the next cells.")
        # No photos yet is not "all well": red until there is something to prepare.
        say(self.status, text + (" " + "; ".join(problems) if problems else ""), ok=count > 0 and not problems)

    def _on_samples(self, button=None) -> None:
        try:
            copy_samples(self.dest_dir)
        except PortraitkitError as error:
            say(self.status, str(error), ok=False)
            return
        self._say_count([])

    def _on_upload(self, change) -> None:
        from portraitkit.colab import save_upload

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
        self._say_count(problems)


# --- prepare: override prep's verdicts -----------------------------------------------------------


class OverridePanel(Panel):
    """Every photo prep examined, its verdict in words, and a toggle to use it or leave it out.

    A toggle calls `portraitkit.prep.overrides.set_decision`, which changes the dataset at once
    (metadata.jsonl and the images) and records the change in report.json.
    """

    def __init__(self, dataset_dir: str | Path, photos_dir: str | Path, columns: int = 4):
        import ipywidgets as w

        from portraitkit.prep.overrides import can_override, read_report

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
            cards.append(card([self._picture(entry), label, toggle]))
        self.status = w.HTML()
        self.widget = w.VBox([gallery(cards, columns), self.status])
        self._count(report)

    @property
    def used(self) -> list[str]:
        """Sources (as named in report.json) that the dataset now uses."""
        return [source for source, toggle in self.toggles.items() if toggle.value]

    def _picture(self, entry: dict):
        import ipywidgets as w

        try:
            return w.Image(value=thumbnail(self.photos_dir / entry["source"]), format="png")
        except (PortraitkitError, OSError):
            return w.HTML(f"<i>{entry['source']}: no preview</i>")

    def _verdict(self, entry: dict) -> str:
        import html

        said = [self.words.get(code, code) for code in entry.get("reasons", [])]
        warned = [self.words.get(code, code) for code in entry.get("warnings", [])]
        text = f"{file_name_html(entry['source'])}{entry['status']}"
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
        from portraitkit.prep.overrides import read_report, set_decision

        if self._reverting:
            return
        toggle = self.toggles[source]
        try:
            entry = set_decision(self.dataset_dir, source, change["new"], self.photos_dir)
        except PortraitkitError as error:
            self._reverting = True  # put the toggle back without acting on that change
            toggle.value = change["old"]
            self._reverting = False
            say(self.status, str(error), ok=False)
            return
        self._style(toggle)
        self.labels[source].value = self._verdict(entry)
        self._count(read_report(self.dataset_dir))

    def _count(self, report: dict) -> None:
        summary = report.get("summary", {})
        accepted, needed = summary.get("accepted", len(self.used)), summary.get("min_accepted", 0)
        text = f"{accepted} photos will be used for training"
        say(self.status, text + (f" (at least {needed} are needed)." if accepted < needed else "."), ok=accepted >= needed)
