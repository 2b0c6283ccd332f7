"""What prep tells the learner: the summary, one report entry per photo, and the contact sheet.

`summary` counts the verdicts and says in one sentence whether the set is enough to train on;
`entry` is one photo as report.json records it (`jsonable` keeps that file valid JSON); the
contact sheet shows every input with its decision in words.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from portraitkit.prep.config import PrepConfig
from portraitkit.prep.crops import caption
from portraitkit.prep.masks import mask_on_photo
from portraitkit.prep.photo import MEANINGS, REJECTIONS, THUMBNAIL, WARNINGS, Photo


# --- report.json ----------------------------------------------------------------------------------


def summary(photos: list[Photo], ignored: list[str], config: PrepConfig) -> dict[str, Any]:
    """Counts by verdict, reason and warning, and the one-sentence `message` for the learner."""
    accepted = sum(p.status == "accepted" for p in photos)
    by_reason = {code: sum(code in p.reasons for p in photos) for code in REJECTIONS}
    by_warning = {code: sum(code in p.warnings for p in photos if p.status == "accepted") for code in WARNINGS}
    enough = accepted >= config.min_accepted
    if enough:
        message = f"{accepted} of {len(photos)} photos are usable, enough to train (at least {config.min_accepted})."
        if accepted < config.recommended:
            message = message[:-1] + f"; {config.recommended}-20 give a more faithful likeness."
    else:
        common = max(by_reason, key=by_reason.get) if any(by_reason.values()) else None
        hint = f" (most common problem: {REJECTIONS[common]})" if common else ""
        message = (
            f"Only {accepted} of {len(photos)} photos {'is' if accepted == 1 else 'are'} usable{hint} and at least {config.min_accepted} are needed: "
            f"add {config.min_accepted - accepted} or more sharp, well-lit photos of the same person, "
            "alone in the picture and with the face filling a good part of it."
        )
    return {
        "inputs": len(photos),
        "accepted": accepted,
        "rejected": len(photos) - accepted,
        "min_accepted": config.min_accepted,
        "min_accepted_reason": "DreamBooth personalises from 3-5 photos; with fewer a LoRA memorises the shots instead of learning the face.",
        "enough_to_train": enough,
        "message": message,
        "rejected_by_reason": {k: v for k, v in by_reason.items() if v},
        "accepted_with_warnings": {k: v for k, v in by_warning.items() if v},
        "ignored_files": ignored,
        "reason_words": {**REJECTIONS, **WARNINGS},
    }


def entry(photo: Photo, config: PrepConfig) -> dict[str, Any]:
    """One photo as report.json records it; reasons and warnings in the codes' report order."""
    row = {
        "source": photo.source,
        "status": photo.status,
        "reasons": [code for code in REJECTIONS if code in photo.reasons],
        "warnings": [code for code in WARNINGS if code in photo.warnings],
        "output": photo.output,
        "caption": caption(config, photo.caption_words) if photo.output else None,
        "measurements": photo.measurements,
    }
    if photo.message:
        row["message"] = photo.message
    return row


def jsonable(value: Any) -> Any:
    """numpy scalars to Python, NaN/inf to null, floats rounded: report.json stays valid, readable JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 4) if math.isfinite(value) else None
    if isinstance(value, Path):
        return value.as_posix()
    return value


# --- contact sheet ------------------------------------------------------------------------------------

_CELL = THUMBNAIL  # a cell of the sheet holds one photo's thumbnail
_LINE, _LINES = 20, 6  # caption line height (px) and lines at most, for 17 px captions
_GREEN, _AMBER, _RED, _GREY = (46, 160, 67), (214, 150, 0), (207, 34, 46), (110, 110, 110)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable (FreeType) in Pillow >= 10.1
    except (TypeError, OSError):
        return ImageFont.load_default()


def proportions_line(proportions: dict) -> str:
    """The person's proportions in one sentence, as the contact sheet shows them."""
    centre = proportions["centre"]
    return (f"Your proportions from {proportions['photos']} near-frontal photos: nose {centre['nose_width']:.2f} of the face's "
            f"width, nose length {centre['nose_length']:.2f} of it ({proportions['corrected']}); portraits are compared "
            "against these.")


def contact_sheet(photos: list[Photo], summary: dict[str, Any], proportions: dict | None = None) -> Image.Image:
    """Every input as a thumbnail with a coloured frame and its decision in words, under the
    person's measured proportions (`prep.proportions`) when there are any.

    Green: accepted; amber: accepted with warnings; red: rejected. The outline on the photo is
    the square that was (or would have been) cropped, or the face box when there is no crop; the
    blue tint on accepted photos is the face-and-hair mask `train --masked-loss` counts.
    """
    columns = min(5, max(1, len(photos)))
    rows = math.ceil(len(photos) / columns)
    # Sizes for a sheet shown about 900 px wide in a notebook (0.78x): 17 px captions read as ~13 px.
    pad, text_height = 10, _LINES * _LINE + 8
    width = columns * (_CELL + pad) + pad
    title_lines = textwrap.wrap(summary["message"], max(30, width // 12))
    shown = [code for code in MEANINGS if any(code in photo.warnings for photo in photos)]
    legend = [part for code in shown for part in textwrap.wrap(f"{WARNINGS[code]}: {MEANINGS[code]}", max(40, width // 9))]
    legend += textwrap.wrap(proportions_line(proportions), max(40, width // 9)) if proportions else []
    header = 16 + 28 * len(title_lines) + 22 * len(legend) + (8 if legend else 0)
    sheet = Image.new("RGB", (width, header + rows * (_CELL + text_height + pad) + pad), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    title, small = _font(22), _font(17)
    for n, line in enumerate(title_lines):
        draw.text((pad, 8 + 28 * n), line, fill=(20, 20, 20), font=title)
    for n, line in enumerate(legend):
        draw.text((pad, 12 + 28 * len(title_lines) + 22 * n), line, fill=_GREY, font=small)
    for index, photo in enumerate(photos):
        x = pad + (index % columns) * (_CELL + pad)
        y = header + (index // columns) * (_CELL + text_height + pad)
        colour = _RED if photo.reasons else (_AMBER if photo.warnings else _GREEN)
        draw.rectangle((x - 3, y - 3, x + _CELL + 2, y + _CELL + 2), outline=colour, width=4)
        if photo.thumbnail is not None:
            ox, oy = x + (_CELL - photo.thumbnail.width) // 2, y + (_CELL - photo.thumbnail.height) // 2
            shown = photo.thumbnail
            if photo.mask is not None and photo.status == "accepted":
                shown = mask_on_photo(shown, photo.mask, photo.crop_corners, photo.thumb_scale)
            sheet.paste(shown, (ox, oy))
            if photo.crop_corners is not None:
                points = [(ox + px * photo.thumb_scale, oy + py * photo.thumb_scale) for px, py in photo.crop_corners]
                draw.polygon(points, outline=colour, width=2)
            if photo.thumbnail_before is not None:  # before (inset, top left) and after (the cell)
                inset = photo.thumbnail_before.copy()
                inset.thumbnail((_CELL // 3, _CELL // 3), Image.Resampling.LANCZOS)
                sheet.paste(inset, (ox, oy))
                draw.rectangle((ox, oy, ox + inset.width, oy + inset.height + 19), outline=(255, 255, 255), width=1)
                draw.rectangle((ox + 1, oy + inset.height, ox + inset.width - 1, oy + inset.height + 18), fill=(30, 30, 30))
                draw.text((ox + 3, oy + inset.height), "as taken", fill=(255, 255, 255), font=small)
            elif photo.face_box is not None:
                l, t, r, b = (v * photo.thumb_scale for v in photo.face_box)
                draw.rectangle((ox + l, oy + t, ox + r, oy + b), outline=colour, width=2)
        else:
            draw.rectangle((x, y, x + _CELL - 1, y + _CELL - 1), fill=(225, 225, 225))
            draw.text((x + 12, y + _CELL // 2 - 8), "cannot be read", fill=_GREY, font=small)
        lines = [(photo.source, (30, 30, 30))]
        if photo.reasons:
            named = {"duplicate": f" of {photo.duplicate_of}", "same_photograph": f" as {photo.duplicate_of}"}
            words = [REJECTIONS[c] + named.get(c, "") for c in REJECTIONS if c in photo.reasons]
            lines.append(("rejected: " + ", ".join(words), colour))
        else:
            lines.append(("accepted; blue: the loss mask" if photo.mask is not None else "accepted", colour))
        if photo.measurements.get("camera_distance_cm") is not None:  # prep.distance
            where = f"camera ~{photo.measurements['camera_distance_cm']:.0f} cm"
            if photo.measurements.get("corrected_from_cm"):
                where += f", shown as from {photo.measurements['corrected_to_cm']:.0f} cm"
            lines.append((where, (30, 30, 30)))
        elif "camera_distance" in photo.measurements:
            lines.append(("camera distance unknown (no EXIF)", _GREY))
        if photo.warnings:
            warned = "warnings: " + ", ".join(WARNINGS[c] for c in WARNINGS if c in photo.warnings)
            lines.append((warned, (30, 30, 30)))
        wrapped = [(part, fill) for line, fill in lines for part in _fit(line, small, _CELL + pad // 2)]  # never into the next cell
        if len(wrapped) > _LINES:  # what does not fit is said to be missing, not cut off silently (report.json has it all)
            last, fill = wrapped[_LINES - 1]
            while last and small.getlength(last + " ...") > _CELL + pad // 2:
                last = last[:-1]
            wrapped[_LINES - 1] = (last.rstrip(" ,") + " ...", fill)
        for n, (line, fill) in enumerate(wrapped[:_LINES]):
            draw.text((x, y + _CELL + 6 + _LINE * n), line, fill=fill, font=small)
    return sheet


def _fit(text: str, font, width: int) -> list[str]:
    """`text` wrapped at spaces into lines at most `width` pixels wide in `font`; a word wider than
    that (a long file name) keeps its end, the part that tells the files apart."""
    lines, line = [], ""
    for word in text.split(" "):
        while font.getlength(word) > width:
            word = "..." + word[4:]
        if line and font.getlength(f"{line} {word}") > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]
