"""The published selfie figures, Ward et al.'s two-plane model, and the head model held against both.

Ward et al. 2018 model the face as two planes square to the camera (the nasal base, and the
bizygomatic plane half a head length behind it) and report the nose +30% / +29% wider against the
face at 30.5 cm than from an infinitely distant camera; Pressler et al. 2022 measured volunteers
at 12 and 18 in against 5 ft. `compare_with_published` sets `lens`'s 3D head beside each figure on
its own terms; `head_plane_bounds` and `ward_breakdown` explain, step by step, why the head model's
number differs from Ward's (notebook 01).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from portraitkit.teach.lens import HEAD_LENGTH_CM, NOSE_PROTRUSION_CM, Head, distortion, sex_column


@dataclass(frozen=True)
class Published:
    """One published selfie figure: `change_pct` at `distance_cm` against `reference_cm`."""

    source: str
    quantity: str  # a key of `Distortion`
    distance_cm: float
    reference_cm: float
    change_pct: float
    head: str  # "men", "women" or "both"
    kind: str  # "model" (computed by the authors) or "measured" (photos of volunteers)
    note: str = ""


WARD = "Ward et al. 2018, JAMA Facial Plast Surg, doi:10.1001/jamafacial.2018.0009"
PRESSLER = "Pressler et al. 2022, Plast Reconstr Surg, doi:10.1097/PRS.0000000000008961"
# Pressler's abstract: "The alar base width did not change significantly [...] The alar base to
# facial width ratio represents the size of the nose in relation to the face. This ratio decreased
# 10.8 percent" (7.8 at 18 in). With the alar base unchanged, a fall of alar/face would mean faces
# 12% *wider* in selfies, against every camera model and the study's own conclusion ("quantifies
# the change [...] seen in previous camera-to-subject distance studies"); only face/alar fits.
# The full definition is not in the abstract (the paper was not reachable here), so the figure is
# read as face width / alar base and stated as nose/face: 1 / (1 - 0.108) - 1 = +12.1%.
PRESSLER_READING = "read as face width / alar base falling 10.8% (the abstract's wording is ambiguous)"

PUBLISHED = [
    Published(WARD, "nose_to_face_width", 30.5, math.inf, 30.0, "men", "model"),
    Published(WARD, "nose_to_face_width", 30.5, math.inf, 29.0, "women", "model"),
    Published(PRESSLER, "nose_length", 30.5, 152.4, 6.4, "both", "measured"),
    Published(PRESSLER, "nose_length", 45.7, 152.4, 4.3, "both", "measured"),
    Published(PRESSLER, "nose_to_face_width", 30.5, 152.4, round(100 * (1 / (1 - 0.108) - 1), 1), "both", "measured",
              PRESSLER_READING),
    Published(PRESSLER, "nose_to_face_width", 45.7, 152.4, round(100 * (1 / (1 - 0.078) - 1), 1), "both", "measured",
              PRESSLER_READING.replace("10.8", "7.8")),
]


def two_plane_change_pct(distance_cm: float, nose_behind_tip_cm: float, face_behind_tip_cm: float,
                         reference_cm: float = math.inf) -> float:
    """Nose/face width change of a face made of two planes square to the camera, in %.

    A width w at camera distance d spans w / d on the frame, so with the nose plane at
    D + n and the face plane at D + f from the camera (D: camera to nose tip) the ratio grows
    by (D + f) / (D + n) against an infinitely distant camera, where every plane is at scale 1.
    """
    def growth(d: float) -> float:
        return 1.0 if math.isinf(d) else (d + face_behind_tip_cm) / (d + nose_behind_tip_cm)

    return 100.0 * (growth(distance_cm) / growth(reference_cm) - 1.0)


def ward_change_pct(distance_cm: float, head: str = "women", reference_cm: float = math.inf) -> float:
    """Ward et al.'s parallel-plane model: nasal base p behind the nose tip, the bizygomatic plane
    half a head length further back (at the head's centre); (D + p + L/2) / (D + p) - 1 against
    infinity. Inputs from NIOSH anthropometry (`HEAD_LENGTH_CM`, `NOSE_PROTRUSION_CM`)."""
    column = sex_column(head)
    p, half = NOSE_PROTRUSION_CM[column], HEAD_LENGTH_CM[column] / 2
    return two_plane_change_pct(distance_cm, p, p + half, reference_cm)


def head_plane_bounds(distance_cm: float, head: Head | str = "women", reference_cm: float = math.inf) -> tuple[float, float]:
    """Two-plane models built from the head model's own depths that bracket its nose/face change, in %.

    The nose plane is the alae's; the face's outline at the cheekbones is a half-ellipse whose
    edge, seen from close by, is a point forward of the widest section (z = 0) and narrower.
    The outline then looks at least as wide as the widest section would at z = 0 (upper bound on
    the change) and at most as wide as the full width placed at the edge point's depth (lower
    bound). The gap between Ward's number and the head model's is this moving outline plus the
    depths themselves (`ward_breakdown`).
    """
    head = Head(head) if isinstance(head, str) else head
    tip = head.points["pronasale"][2]
    nose_behind = tip - head.points["alare_left"][2]
    ring = head.ring(0.0, samples=2001)

    def edge_depth(d: float) -> float:
        if math.isinf(d):
            return 0.0
        return float(ring[np.argmax(ring[:, 0] / (d + tip - ring[:, 2])), 2])

    def bound(face_plane) -> float:
        near = two_plane_change_pct(distance_cm, nose_behind, tip - face_plane(distance_cm))
        far = two_plane_change_pct(reference_cm, nose_behind, tip - face_plane(reference_cm))
        return 100.0 * ((1 + near / 100) / (1 + far / 100) - 1)

    return bound(edge_depth), bound(lambda d: 0.0)


def ward_breakdown(distance_cm: float = 30.5, head: str = "women") -> list[tuple[str, float]]:
    """From Ward's number to the head model's, each step computed (nose/face change against infinity, %).

    1. Ward's model (NIOSH nose protrusion, half head length); 2. the same two planes with the
    head model's depths (alae, and the widest cheekbone section at z = 0); 3. the face plane
    moved to the outline's visible edge (the lower bound); 4. the head model itself.
    """
    model = Head(head)
    low, high = head_plane_bounds(distance_cm, model)
    return [
        ("Ward et al.'s two planes (NIOSH inputs)", ward_change_pct(distance_cm, head)),
        ("two planes at the head model's depths", high),
        ("face plane at the outline's visible edge", low),
        ("the 3D head model", distortion(distance_cm, math.inf, head=model).nose_to_face_width),
    ]


def compare_with_published() -> list[dict]:
    """Each published figure beside both models' on its own terms (same distances, same reference,
    same ratio), with the difference in percentage points."""
    rows = []
    for item in PUBLISHED:
        heads = ["men", "women"] if item.head == "both" else [item.head]
        model = np.mean([getattr(distortion(item.distance_cm, item.reference_cm, head=h), item.quantity) for h in heads])
        ward = (np.mean([ward_change_pct(item.distance_cm, h, item.reference_cm) for h in heads])
                if item.quantity == "nose_to_face_width" else None)
        rows.append({
            "source": item.source.split(",")[0],
            "kind": item.kind,
            "quantity": item.quantity,
            "head": item.head,
            "distance_cm": item.distance_cm,
            "reference_cm": item.reference_cm,
            "published_pct": item.change_pct,
            "model_pct": round(float(model), 1),
            "ward_model_pct": None if ward is None else round(float(ward), 1),
            "difference_pct_points": round(float(model) - item.change_pct, 1),
            "note": item.note,
        })
    return rows
