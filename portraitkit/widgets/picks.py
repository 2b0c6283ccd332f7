"""Notebook 06's panel: the ranked portraits with their scores, a tick each, and the export."""

from __future__ import annotations

from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.widgets.panel import Panel, card, file_name_html, gallery, say, thumbnail


class PicksPanel(Panel):
    """The ranked portraits with their scores, a checkbox each, and an export button.

    Reads `images_dir/ranking.json` (best first). Every tick is saved to `picks.json` at once, so
    a disconnect loses no choice; the export writes `zip_path` (and copies to `copy_to`, e.g. a
    Drive folder) with the picks and their recipes (`portraitkit.pick.export.export_picks`).
    """

    def __init__(self, images_dir: str | Path, zip_path: str | Path, copy_to: str | Path | None = None,
                 limit: int | None = None, columns: int = 4):
        import json

        import ipywidgets as w

        from portraitkit.pick.export import load_picks

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
            picture = w.Image(value=thumbnail(self.images_dir / row["file"]), format="png")
            cards.append(card([picture, w.HTML(_score_html(row)), box]))
        self.export_button = w.Button(description="Export picks", icon="download", button_style="primary")
        self.export_button.on_click(self._on_export)
        self.status = w.HTML()
        self.exported: Path | None = None
        self.widget = w.VBox([gallery(cards, columns), w.HBox([self.export_button, self.status])])
        self._show_count()

    @property
    def picked(self) -> list[str]:
        """Picked file names, best-ranked first."""
        return [name for name, box in self.checkboxes.items() if box.value]

    def _show_count(self) -> None:
        say(self.status, f"{len(self.picked)} picked.")

    def _on_tick(self, change) -> None:
        from portraitkit.pick.export import save_picks

        save_picks(self.images_dir, self.picked)
        self._show_count()

    def _on_export(self, button) -> None:
        from portraitkit.pick.export import export_picks

        try:
            self.exported = export_picks(self.images_dir, self.picked, self.zip_path, copy_to=self.copy_to)
        except PortraitkitError as error:
            say(self.status, str(error), ok=False)
            return
        where = f" and copied to {self.copy_to}" if self.copy_to is not None else ""
        say(self.status, f"{len(self.picked)} portraits with their recipes saved in {self.exported}{where}.")


def _score_html(row: dict) -> str:
    import html

    from portraitkit.pick.report import likeness_label

    likeness = likeness_label(row)
    if row.get("copies"):
        likeness = f"<span style='color:firebrick'>{likeness}</span>"
    reasons = ", ".join(row.get("reasons") or [])
    text = f"{file_name_html(row['file'])}<b>#{row.get('rank')}</b> · score {row.get('score', 0):.2f}<br>{likeness}"
    if reasons:
        text += f"<br><small>{html.escape(reasons)}</small>"
    return text
