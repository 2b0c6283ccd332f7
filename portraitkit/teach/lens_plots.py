"""Drawings of the `lens` head model for notebook 01 and its lens panel.

The face as the camera sees it (shapes compared at the same face width, or true size on the
frame), and the distortion curve against distance beside the published figures. Each function
draws on the matplotlib axes it is given.
"""

from __future__ import annotations

import numpy as np

from portraitkit.faces.proportions import FACE_WIDTH, NOSE_WIDTH
from portraitkit.teach.lens import DEFAULT_FOCAL_MM, REFERENCE_CM, Head, camera_at, distortion
from portraitkit.teach.lens_published import PUBLISHED, ward_change_pct


def face_drawing(head: Head, camera) -> dict[str, np.ndarray]:
    """The projected face as named polylines on the frame (mm): outline, eyes, nose, mouth, ears."""
    rings = [camera.project(head, head.ring(y, samples=181)) for y, _, _ in head.sections]
    left = np.array([ring[np.argmin(ring[:, 0])] for ring in rings])
    right = np.array([ring[np.argmax(ring[:, 0])] for ring in rings])
    p = head.points

    def line(*names: str) -> np.ndarray:
        return camera.project(head, np.stack([p[n] for n in names]))

    return {
        "outline": np.concatenate([left, right[::-1], left[:1]]),
        "eye_right": line("exocanthion_right", "endocanthion_right"),
        "eye_left": line("endocanthion_left", "exocanthion_left"),
        "nose": line("nasion", "pronasale", "alare_left", "subnasale", "alare_right", "pronasale"),
        "mouth": line("cheilion_right", "labrale_superius", "cheilion_left"),
        "ear_right": line("tragion_right", "ear_rim_right"),
        "ear_left": line("tragion_left", "ear_rim_left"),
    }


def plot_face(ax, distance_cm: float, focal_mm: float = DEFAULT_FOCAL_MM, offset_frac: float = 0.0,
              head: Head | str = "women", reference_cm: float | None = REFERENCE_CM, frame: bool = False):
    """Draw the face as the camera sees it.

    frame=False: scaled to the same face width and centred, with the face from `reference_cm`
    dashed behind it, to compare shapes. frame=True: true size on the 36 x 24 mm frame, to
    show what the framing does (a long lens close up cannot fit the face at all).
    """
    head = Head(head) if isinstance(head, str) else head

    def drawing(distance: float, offset: float):
        camera = camera_at(distance, focal_mm, offset)
        lines = face_drawing(head, camera)
        if frame:
            return lines
        outline = lines["outline"]
        width = outline[:, 0].max() - outline[:, 0].min()
        center = camera.project(head, head.points["pronasale"][None])[0]
        return {name: (pts - center) / width for name, pts in lines.items()}

    if reference_cm and not frame:
        # Drawn over the solid face (zorder 3), dark and thin: under it, the dashed nose vanished
        # exactly where the two faces agree most, and where they differ it is the point.
        for pts in drawing(reference_cm, 0.0).values():
            ax.plot(pts[:, 0], pts[:, 1], color="0.1", lw=1.1, ls=(0, (4, 3)), zorder=3)
    sensor = None
    if frame:
        from matplotlib.patches import Rectangle

        sensor = ax.add_patch(Rectangle((-18, -12), 36, 24, fill=False, color="k", lw=1))
    for name, pts in drawing(distance_cm, offset_frac if frame else 0.0).items():
        drawn, = ax.plot(pts[:, 0], pts[:, 1], color="C3" if name == "nose" else "C0", lw=2)
        if sensor is not None:
            drawn.set_clip_path(sensor)  # what falls outside the 36 x 24 mm frame is not in the photo
    ax.set_aspect("equal")
    if frame:
        ax.set_xlim(-19, 19)
        ax.set_ylim(-13, 13)
        ax.set_title(f"in the frame: {focal_mm:.0f} mm at {distance_cm:.0f} cm")
    else:
        ax.set_title(f"{distance_cm:.0f} cm (solid) vs {reference_cm:.0f} cm (dashed)" if reference_cm else f"{distance_cm:.0f} cm")
        ax.set_xlim(-0.75, 0.75)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def plot_distortion_curve(ax, distance_cm: float | None = None, reference_cm: float = REFERENCE_CM,
                          head: Head | str = "women", distances=None):
    """Model curves (nose width and length, relative to face width) against distance, with the
    published points; `distance_cm` is marked."""
    head = Head(head) if isinstance(head, str) else head
    distances = np.geomspace(15, 400, 40) if distances is None else np.asarray(distances)
    results = [distortion(d, reference_cm, head=head) for d in distances]
    ax.plot(distances, [r.nose_to_face_width for r in results], color="C3", label="model: nose width / face width")
    ax.plot(distances, [r.nose_length for r in results], color="C1", label="model: nose length / face width")
    ax.plot(distances, [ward_change_pct(d, head.sex, reference_cm) for d in distances], color="C3", ls="--",
            label="Ward et al.'s two planes: nose width / face width")
    styles = {("nose_to_face_width", "model"): ("C3", "s"), ("nose_to_face_width", "measured"): ("C3", "v"),
              ("nose_length", "measured"): ("C1", "o"), ("nose_length", "model"): ("C1", "D")}
    for item in PUBLISHED:
        if item.reference_cm != reference_cm:
            continue
        color, marker = styles[(item.quantity, item.kind)]
        label = f"{item.source.split(',')[0]} ({item.kind}, {item.head}): {item.quantity.replace('_', ' ')}"
        ax.plot(item.distance_cm, item.change_pct, marker=marker, color=color, ls="none", ms=8,
                mfc="none" if item.kind == "model" else color, label=label)
    if distance_cm is not None:
        ax.axvline(distance_cm, color="0.3", lw=1, ls=":")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ticks = [t for t in (15, 20, 30, 50, 100, 150, 300, 500) if distances.min() <= t <= distances.max()]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("camera to nose tip (cm)")
    ax.set_ylabel("change vs an infinitely distant camera (%)" if reference_cm == float("inf") else f"change vs {reference_cm:.0f} cm (%)")
    # Upper right: the curves fall towards 0 there, while the published points, Pressler's
    # measured nose lengths among them, sit at short distances, low on the chart.
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # a study with two distances is one entry, not two
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper right")
    return ax



# --- a real photo before and after the distance warp (`lens_warp`) ----------------------------

# iBUG 68 (0-based): the nose base's outer points; the outline at the eyes: the points the
# proportions measure reads (`faces.proportions`)
NOSE_WINGS, FACE_SIDES = NOSE_WIDTH, FACE_WIDTH


def nose_and_face_widths(landmarks) -> tuple[float, float]:
    """(nose-wing width, face width) in pixels between the 68 landmarks that `lens_warp` moves."""
    pts = np.asarray(landmarks, dtype=np.float64)
    return (float(np.linalg.norm(pts[NOSE_WINGS[1]] - pts[NOSE_WINGS[0]])),
            float(np.linalg.norm(pts[FACE_SIDES[1]] - pts[FACE_SIDES[0]])))


def selfie_difference_figure(far, near, far_landmarks, near_landmarks, far_label: str = "from 1.5 m",
                             near_label: str = "from 30 cm"):
    """The same face from two distances, zoomed on the nose and the face's outline: each with its
    nose-wing and face widths drawn and measured, then the two laid over each other (red: `far`,
    cyan: `near`; grey where they agree), so the change shows as coloured edges around the nose.

    Both photos must have the same size (`lens_warp.warp_to_distance` keeps it). Returns a
    matplotlib Figure that a notebook cell shows as a picture.
    """
    from matplotlib.figure import Figure

    from portraitkit.core.pictures import as_picture

    far_px = np.asarray(far.convert("RGB"), dtype=np.float64) / 255
    near_px = np.asarray(near.convert("RGB"), dtype=np.float64) / 255
    pts = np.asarray(far_landmarks, dtype=np.float64)
    # The zoom: the face's width across, from the eyebrows to the mouth, with a margin.
    left, right = pts[FACE_SIDES, 0].min(), pts[FACE_SIDES, 0].max()
    margin = 0.08 * (right - left)
    top, bottom = pts[17:27, 1].min() - margin, pts[48:68, 1].max() + margin
    box = (max(0, int(left - margin)), max(0, int(top)), min(far_px.shape[1], int(right + margin)),
           min(far_px.shape[0], int(bottom)))
    figure = Figure(figsize=(13, 4.4), dpi=90)
    axes = figure.subplots(1, 3)
    ratios = []
    for ax, pixels, landmarks, label in ((axes[0], far_px, far_landmarks, far_label),
                                         (axes[1], near_px, near_landmarks, near_label)):
        marks = np.asarray(landmarks, dtype=np.float64)
        nose, face = nose_and_face_widths(marks)
        ratios.append(nose / face)
        ax.imshow(pixels)
        for (a, b), colour in ((NOSE_WINGS, "#ff3b30"), (FACE_SIDES, "#ffd60a")):
            ax.plot(marks[[a, b], 0], marks[[a, b], 1], "-o", color=colour, lw=2.5, ms=5)
        ax.set_title(f"{label}\nnose {nose:.1f} px / face {face:.1f} px = {nose / face:.3f}", fontsize=11)
    overlay = np.stack([far_px.mean(axis=2), near_px.mean(axis=2), near_px.mean(axis=2)], axis=2)
    axes[2].imshow(overlay)
    axes[2].set_title(f"both at once: red {far_label}, cyan {near_label}\n"
                      f"nose / face {100 * (ratios[1] / ratios[0] - 1):+.1f}%", fontsize=11)
    for ax in axes:
        ax.set_xlim(box[0], box[2])
        ax.set_ylim(box[3], box[1])
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    return as_picture(figure)
