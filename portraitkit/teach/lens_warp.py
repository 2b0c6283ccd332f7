"""Re-rendering a real photo from another camera distance, with the head model of `lens`.

A frontal face's 68 detected landmarks (`faces`, iBUG 300-W order) are given depths from the
model head, moved as a pinhole camera at the new distance would see them, and the photo is bent
to match by a piecewise-affine mesh warp, with hair and background held in place.
"""

from __future__ import annotations

import numpy as np

from portraitkit.core.errors import PortraitkitError
from portraitkit.teach.lens import REFERENCE_CM, Head

NOSE_BRIDGE = [27, 28, 29, 30]  # iBUG 68 (0-based): nasion to nose tip
NOSE_BASE = {31: "alare", 32: "between", 33: "subnasale", 34: "between", 35: "alare"}


def landmark_depths(landmarks: np.ndarray, head: Head | str = "women") -> np.ndarray:
    """Depth (cm, head coordinates, z forward) of each of a frontal face's 68 landmarks.

    The photo's landmarks are put on the head model's scale by the face's width (jaw points 0
    and 16, on the outline at the cheekbones, against the model's bizygomatic width) and lined
    up at the nasion (point 27). Each half of the face is scaled on its own, from the nose
    bridge to its outline point, so a face turned slightly still has its outline at the edge
    of the model's cross-section. The nose takes its depths from the model's profile (bridge
    from nasion to tip, base at subnasale and alae); every other point sits on the face's
    cross-section.
    """
    head = Head(head) if isinstance(head, str) else head
    pts = np.asarray(landmarks, dtype=np.float64)
    half_width = head.half_width_at(0.0)
    cm_per_px = 2 * half_width / max(np.linalg.norm(pts[16] - pts[0]), 1e-6)
    nasion, tip = head.points["nasion"], head.points["pronasale"]
    middle = pts[NOSE_BRIDGE, 0].mean()
    left_scale = half_width / max(middle - pts[0, 0], 1e-6)
    right_scale = half_width / max(pts[16, 0] - middle, 1e-6)
    offset = pts[:, 0] - middle
    x_cm = np.where(offset < 0, offset * left_scale, offset * right_scale)
    y_cm = nasion[1] - (pts[:, 1] - pts[27, 1]) * cm_per_px
    depths = np.array([head.on_surface(x, y)[2] for x, y in zip(x_cm, y_cm)])
    bridge_y = np.clip(y_cm[NOSE_BRIDGE], tip[1], nasion[1])
    depths[NOSE_BRIDGE] = np.interp(bridge_y, [tip[1], nasion[1]], [tip[2], nasion[2]])
    base = {"alare": head.points["alare_left"][2], "subnasale": head.points["subnasale"][2]}
    base["between"] = (base["alare"] + base["subnasale"]) / 2
    for index, name in NOSE_BASE.items():
        depths[index] = base[name]
    return depths


def reproject_landmarks(landmarks: np.ndarray, from_cm: float, to_cm: float, head: Head | str = "women") -> np.ndarray:
    """Where a frontal face's 68 landmarks land if the photo is taken from `to_cm` instead of
    `from_cm` (camera to nose tip), with the face framed at the same width.

    A point at depth z is at camera distance D + z_tip - z, and its offset from the image centre
    (the nose tip, where the camera aims) scales with one over that distance. Re-framing keeps
    points at the depth of the cheekbones' outline (z = 0) where they were.
    """
    head = Head(head) if isinstance(head, str) else head
    if not (from_cm > 0 and to_cm > 0):
        raise PortraitkitError("Camera distances must be positive.")
    pts = np.asarray(landmarks, dtype=np.float64)
    depths = landmark_depths(pts, head)
    tip = head.points["pronasale"][2]
    if from_cm + tip - depths.max() <= 0 or to_cm + tip - depths.max() <= 0:
        raise PortraitkitError("The camera would be inside the face: use distances of at least 10 cm.")
    scale = ((from_cm + tip - depths) / (to_cm + tip - depths)) / ((from_cm + tip) / (to_cm + tip))
    center = pts[30]
    return center + (pts - center) * scale[:, None]


def piecewise_affine_warp(image, source_points: np.ndarray, target_points: np.ndarray, box=None):
    """Move `source_points` of `image` to `target_points`, bending the triangles between them.

    scikit-image's piecewise-affine transform: Delaunay triangles over the target points; each
    output pixel inside them takes the colour at the same barycentric position in the matching
    source triangle (bilinear). Pixels outside the triangles, or outside `box` (left, top,
    right, bottom), are unchanged: only the box is computed, so a 12 MP photo costs its face.
    """
    from PIL import Image
    from skimage.transform import PiecewiseAffineTransform, warp

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = pixels.shape[:2]
    left, top, right, bottom = box or (0, 0, width, height)
    if hasattr(PiecewiseAffineTransform, "from_estimate"):  # scikit-image 0.26 deprecated `estimate`
        to_source = PiecewiseAffineTransform.from_estimate(target_points, source_points)
    else:
        to_source = PiecewiseAffineTransform()
        to_source.estimate(target_points, source_points)

    def inverse_map(xy: np.ndarray) -> np.ndarray:
        """Output pixels of the box (x, y) to where they come from in the photo."""
        xy = xy + (left, top)
        source = to_source(xy)
        outside = (source == -1).all(axis=1)  # scikit-image's mark for a point in no triangle
        source[outside] = xy[outside]
        return source

    warped = warp(pixels, inverse_map, output_shape=(bottom - top, right - left), order=1, mode="edge", preserve_range=True)
    out = pixels.copy()
    out[top:bottom, left:right] = warped
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def warp_to_distance(image, to_cm: float, from_cm: float = REFERENCE_CM, face=None, head: Head | str = "women"):
    """Re-render a frontal portrait as if taken from `to_cm` instead of `from_cm` (to the nose tip).

    A depth-aware mesh warp: the 68 detected landmarks get depths from the head model, move as
    a pinhole camera at the new distance would see them (`reproject_landmarks`), and a ring of
    fixed points around the head plus the image's border keeps hair and background in place.
    Returns (warped image, landmarks after the warp). `face` defaults to the largest detected one.
    """
    if face is None:
        from portraitkit.faces.detect import detect_faces

        found = detect_faces(image)
        if not found:
            raise PortraitkitError("No face found: the distance warp needs a clear, frontal face.")
        face = found[0]
    source = np.asarray(face.landmarks, dtype=np.float64)
    target = reproject_landmarks(source, from_cm, to_cm, head)
    width, height = image.size
    center = source.mean(axis=0)
    spread = (source.max(axis=0) - source.min(axis=0)) / 2
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ring = center + np.stack([np.cos(angles), np.sin(angles)], axis=1) * spread * 1.6
    border = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], dtype=np.float64)
    anchors = np.concatenate([ring, border])
    anchors[:, 0] = np.clip(anchors[:, 0], 0, width - 1)
    anchors[:, 1] = np.clip(anchors[:, 1], 0, height - 1)
    box = (
        max(0, int(ring[:, 0].min())), max(0, int(ring[:, 1].min())),
        min(width, int(ring[:, 0].max()) + 1), min(height, int(ring[:, 1].max()) + 1),
    )
    warped = piecewise_affine_warp(
        image, np.concatenate([source, anchors]), np.concatenate([target, anchors]), box=box
    )
    return warped, target

