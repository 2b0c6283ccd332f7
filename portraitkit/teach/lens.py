"""Why a selfie changes your face: a pinhole camera looking at a head built from anthropometry.

The head is a set of 3D points in centimetres, in head coordinates: origin midway between the
two tragi (the flap in front of each ear canal), x to the right as the camera sees it, y up,
z forward out of the face. Every number comes from a publication; nothing is adjusted to
match any result, including the published selfie figures the notebook compares against.

Sources
- Widths, per sex (adult means): nasal width al-al 4.32 / 4.07 cm, bizygomatic width zy-zy
  13.38 / 13.01, bitemporal ft-ft 11.53 / 11.12, bigonial go-go 10.66 / 9.68, biocular ex-ex
  9.82 / 9.44, intercanthal en-en 3.22 / 3.21, mouth width ch-ch 5.59 / 5.20 (men / women;
  J Korean Assoc Maxillofac Plast Reconstr Surg 2019, doi:10.1186/s40902-019-0191-7, table 9).
- Profile (depths and heights), one measured subject: nasion, pronasale, subnasale, upper lip
  and pogonion to the midpoint of the tragi 8.85, 10.38, 9.19, 9.44, 10.73 cm; nasion to
  pogonion 9.97 (the facial line, taken as vertical), nasion to pronasale 4.47, to subnasale
  5.09, to upper lip 6.10, bitragion width 13.14, subnasale to menton 6.05, trichion to
  nasion 5.68 (Deli et al., Prog Orthod 2013, 14:32, doi:10.1186/2196-1042-14-32, table 2).
  Each midline point is placed by trilateration from two of these distances; others from the
  same table (Ex-N 4.74, Ls-Prn 2.50, Prn-Pg 6.36, Sn-Pg 4.99) are left over as a check
  (see `profile_check`).
- Sex-specific depths: Deli's one subject is taken as the mean of men and women, and every depth
  (z) is scaled per sex by head length (glabella-opisthocranion) against that mean; without it
  men and women would share one profile and differ only in widths.
- Head length and nose protrusion per sex, the inputs of Ward et al.'s model: 19.7 / 18.8 cm and
  2.1 / 1.9 cm (men / women), the NIOSH survey of U.S. respirator users (Zhuang & Bradtmiller,
  J Occup Environ Hyg 2005, 2(11):567-576) as Ward et al. used it. NOT checked against the
  survey's published table (it could not be reached from here): they are the values that, in
  Ward's formula, give Ward's reported 30% / 29%, so they test the formula, not the survey.
- Ears: protrusion of the helix rim from the side of the head 1.96 cm (Karnail et al.,
  "Evaluation of 3d Position and Size of Ear Using Anthropometric Landmarks Amongst General
  Population", J Chem Health Risks, jchr.org/index.php/JCHR/article/view/1868; 100 adults).

Modelling assumptions (the only ones): horizontal cross-sections of the face are half-ellipses
through the two sides (half the width measured at that level) and the midline (its depth), so
a point beside the midline sits on that ellipse; the cheekbones (zygia) are at the height of
the tragi and the face is that wide from the eyes down to there; the eye corners are level
with the nasion; the jaw angles at the height of the mouth; the menton is under the pogonion and
the hairline above the nasion; the ear rims stick out sideways at the depth of the tragi; the
nose is the triangle of pronasale, subnasale and the alae on the cheek surface. Distances are
measured from the camera to the tip of the nose, which is what a learner can measure with a tape.

A 35 mm-equivalent focal length F means a 36 x 24 mm frame: the horizontal field of view is
2 atan(18 / F). Phone main cameras are about 24-26 mm, front cameras about 23-31 mm.

Beside this module: `lens_published` holds the published selfie figures and Ward et al.'s
two-plane model, and holds the head model against them; `lens_warp` uses the head to re-render a
real photo from another distance; `lens_plots` draws the projected face and the distortion curve
(notebook 01).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from portraitkit.core.errors import PortraitkitError

FRAME_HALF_WIDTH_MM = 18.0  # a 36 x 24 mm frame, the reference of "35 mm equivalent"
DEFAULT_FOCAL_MM = 26.0  # a phone's main camera
# 5 feet, the clinical portrait distance: Pressler et al. compare selfies with it; Ward et al.
# compare with an infinitely distant camera (math.inf here) and report 5 ft as nearly the same
REFERENCE_CM = 152.4

# --- published anthropometry (cm) -------------------------------------------------------------

WIDTHS_CM = {  # J Korean Assoc Maxillofac Plast Reconstr Surg 2019, table 9: (men, women)
    "nasal": (4.32, 4.07),
    "bizygomatic": (13.38, 13.01),
    "bitemporal": (11.53, 11.12),
    "bigonial": (10.66, 9.68),
    "biocular": (9.82, 9.44),
    "intercanthal": (3.22, 3.21),
    "mouth": (5.59, 5.20),
}
UPPER_VERMILION_CM = (1.37, 1.34)  # same table: labrale superius to stomion, (men, women)
DELI_2013_CM = {  # Deli et al. 2013, table 2, one subject; M = midpoint of the tragi
    "N-M": 8.85, "Prn-M": 10.38, "Sn-M": 9.19, "Ls-M": 9.44, "Pg-M": 10.73,
    "N-Pg": 9.97, "N-Prn": 4.47, "N-Sn": 5.09, "N-Ls": 6.10, "Ex-N": 4.74,
    "Tr-Tl": 13.14, "Sn-Me": 6.05, "Tr-N": 5.68,
    # not used to build the head, kept to check it:
    "Ls-Prn": 2.50, "Prn-Pg": 6.36, "Sn-Pg": 4.99,
}
EAR_PROTRUSION_CM = 1.96  # Karnail et al.: ear rim to the side of the head
HEAD_LENGTH_CM = (19.7, 18.8)  # NIOSH via Ward et al.: (men, women); see the docstring
NOSE_PROTRUSION_CM = (2.1, 1.9)  # same source: nose tip in front of the nasal base


def sex_column(sex: str) -> int:
    """0 for men, 1 for women: the column of the (men, women) anthropometry tables."""
    if sex not in ("men", "women"):
        raise PortraitkitError(f"Unknown head {sex!r}: use 'men' or 'women'.")
    return 0 if sex == "men" else 1


# --- the head ---------------------------------------------------------------------------------


def _trilaterate(a: np.ndarray, r_a: float, b: np.ndarray, r_b: float) -> np.ndarray:
    """The point in the (y, z) profile plane at r_a from a and r_b from b, on the face side (larger z)."""
    d = np.linalg.norm(b - a)
    along = (r_a**2 - r_b**2 + d**2) / (2 * d)
    across = math.sqrt(max(r_a**2 - along**2, 0.0))
    unit = (b - a) / d
    normal = np.array([-unit[1], unit[0]])
    candidates = [a + along * unit + across * normal, a + along * unit - across * normal]
    return max(candidates, key=lambda p: p[1])


def _profile() -> dict[str, np.ndarray]:
    """Midline points (y, z) in cm from Deli et al. 2013, tragi midpoint at the origin."""
    d = DELI_2013_CM
    m = np.zeros(2)
    # nasion and pogonion: the facial line N-Pg is vertical, so N = (y, z), Pg = (y - N-Pg, z)
    y_n = (d["N-M"] ** 2 - d["Pg-M"] ** 2 + d["N-Pg"] ** 2) / (2 * d["N-Pg"])
    n = np.array([y_n, math.sqrt(d["N-M"] ** 2 - y_n**2)])
    pg = n - [d["N-Pg"], 0.0]
    prn = _trilaterate(n, d["N-Prn"], m, d["Prn-M"])
    sn = _trilaterate(n, d["N-Sn"], m, d["Sn-M"])
    ls = _trilaterate(n, d["N-Ls"], m, d["Ls-M"])
    me = np.array([sn[0] - d["Sn-Me"], pg[1]])  # menton under the pogonion
    tr = np.array([n[0] + d["Tr-N"], n[1]])  # hairline above the nasion (a vertical forehead)
    return {"Tr": tr, "N": n, "Prn": prn, "Sn": sn, "Ls": ls, "Pg": pg, "Me": me}


def profile_check(head: "Head | None" = None) -> dict[str, tuple[float, float]]:
    """Distances Deli et al. measured but the head was not built from: (model, published) in cm."""
    p = _profile()
    d = DELI_2013_CM
    head = head or Head("women")
    ex_n = np.linalg.norm(head.points["exocanthion_left"] - head.points["nasion"])
    return {
        "Ex-N": (float(ex_n), d["Ex-N"]),
        "Ls-Prn": (float(np.linalg.norm(p["Ls"] - p["Prn"])), d["Ls-Prn"]),
        "Prn-Pg": (float(np.linalg.norm(p["Prn"] - p["Pg"])), d["Prn-Pg"]),
        "Sn-Pg": (float(np.linalg.norm(p["Sn"] - p["Pg"])), d["Sn-Pg"]),
    }


@dataclass
class Head:
    """A head as 3D points (cm, head coordinates) and the cross-sections that give its outline."""

    sex: str = "women"  # "men" or "women": which column of the width table
    points: dict[str, np.ndarray] = field(init=False)
    sections: list[tuple[float, float, float]] = field(init=False)  # (y, half width, midline depth)

    def __post_init__(self):
        column = sex_column(self.sex)
        half = {name: values[column] / 2 for name, values in WIDTHS_CM.items()}
        self.depth_scale = HEAD_LENGTH_CM[column] / (sum(HEAD_LENGTH_CM) / 2)
        p = {name: point * [1.0, self.depth_scale] for name, point in _profile().items()}

        def face_depth(y: float) -> float:
            """Depth of the face's midline without the nose, from hairline to chin."""
            ys = [p[k][0] for k in ("Me", "Pg", "Ls", "Sn", "N", "Tr")]
            zs = [p[k][1] for k in ("Me", "Pg", "Ls", "Sn", "N", "Tr")]
            return float(np.interp(y, ys, zs))

        y_mouth = p["Ls"][0] - UPPER_VERMILION_CM[column]  # the stomion, where the lips meet
        # (y, half width) at the levels the widths are measured at; linear in between
        levels = [
            (p["Tr"][0], half["bitemporal"]),  # the forehead
            (p["N"][0], half["bizygomatic"]),  # widest across the cheekbones from the eyes...
            (0.0, half["bizygomatic"]),  # ...to the zygia, at the height of the tragi
            (y_mouth, half["bigonial"]),  # jaw angles at the height of the mouth
            (p["Me"][0], 0.0),  # the chin closes the outline
        ]
        ys = np.linspace(p["Me"][0], p["Tr"][0], 41)
        level_y, level_w = zip(*sorted(levels))
        self.sections = [(float(y), float(np.interp(y, level_y, level_w)), face_depth(y)) for y in ys]

        def on_surface(x: float, y: float) -> np.ndarray:
            half_width = float(np.interp(y, level_y, level_w))
            depth = face_depth(y) * math.sqrt(max(0.0, 1 - (x / half_width) ** 2)) if half_width > abs(x) else 0.0
            return np.array([x, y, depth])

        ex_x = half["biocular"]
        y_eye = p["N"][0]  # eye corners level with the nasion (Ex-N is checked in `profile_check`)
        y_alar = p["Sn"][0]
        points = {
            "nasion": np.array([0.0, *p["N"]]),
            "pronasale": np.array([0.0, *p["Prn"]]),
            "subnasale": np.array([0.0, *p["Sn"]]),
            "labrale_superius": np.array([0.0, *p["Ls"]]),
            "pogonion": np.array([0.0, *p["Pg"]]),
            "menton": np.array([0.0, *p["Me"]]),
            "trichion": np.array([0.0, *p["Tr"]]),
        }
        for side, sign in (("right", -1.0), ("left", 1.0)):
            points[f"alare_{side}"] = on_surface(sign * half["nasal"], y_alar)
            points[f"exocanthion_{side}"] = on_surface(sign * ex_x, y_eye)
            points[f"endocanthion_{side}"] = on_surface(sign * half["intercanthal"], y_eye)
            points[f"cheilion_{side}"] = on_surface(sign * half["mouth"], y_mouth)
            points[f"zygion_{side}"] = on_surface(sign * half["bizygomatic"], 0.0)
            tragion_x = DELI_2013_CM["Tr-Tl"] / 2
            points[f"tragion_{side}"] = np.array([sign * tragion_x, 0.0, 0.0])
            points[f"ear_rim_{side}"] = np.array([sign * (tragion_x + EAR_PROTRUSION_CM), 0.0, 0.0])
        self.points = points
        self.face_depth = face_depth
        self.on_surface = on_surface
        self.half_width_at = lambda y: float(np.interp(y, level_y, level_w))

    def ring(self, y: float, samples: int = 91) -> np.ndarray:
        """The front half of the face's cross-section at height `y`, as (samples, 3) points."""
        angles = np.linspace(0, np.pi, samples)
        half_width, depth = self.half_width_at(y), self.face_depth(y)
        return np.stack([-half_width * np.cos(angles), np.full_like(angles, y), depth * np.sin(angles)], axis=1)

    def outline(self, samples: int = 91) -> np.ndarray:
        """Points on every cross-section, (N, 3): whatever the viewpoint, the silhouette is among them."""
        return np.concatenate([self.ring(y, samples) for y, _, _ in self.sections])


# --- the camera -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """A pinhole camera `distance_cm` from the nose tip, level with it, aimed so the nose tip lands
    at `offset_frac` of the way from the frame's centre to its left/right edge."""

    distance_cm: float
    focal_mm: float = DEFAULT_FOCAL_MM
    offset_frac: float = 0.0

    def __post_init__(self):
        if not 0 < self.distance_cm < math.inf:
            raise PortraitkitError(f"The camera distance must be a positive number of cm, got {self.distance_cm}.")
        if not 0 < self.focal_mm < math.inf:
            raise PortraitkitError(f"The focal length must be a positive number of mm, got {self.focal_mm}.")
        if not -1.0 <= self.offset_frac <= 1.0:
            raise PortraitkitError(f"--offset-frac is a fraction of the half frame, from -1 to 1; got {self.offset_frac}.")

    @property
    def field_of_view_deg(self) -> float:
        return math.degrees(2 * math.atan(FRAME_HALF_WIDTH_MM / self.focal_mm))

    @property
    def off_axis_deg(self) -> float:
        return math.degrees(math.atan(self.offset_frac * FRAME_HALF_WIDTH_MM / self.focal_mm))

    def project(self, head: Head, points: np.ndarray) -> np.ndarray:
        """Image positions in mm on the 36 x 24 mm frame (x right, y up) of head points (N, 3) in cm.

        The subject faces the camera wherever they are in the frame (as in a selfie), so an
        off-axis head is the on-axis head swung round the camera's centre by the off-axis angle.
        """
        tip = head.points["pronasale"]
        relative = np.asarray(points, dtype=np.float64) - [0.0, tip[1], tip[2] + self.distance_cm]
        # camera coordinates: x right, y up, depth = distance in front of the camera
        x, y, depth = relative[:, 0], relative[:, 1], -relative[:, 2]
        angle = math.radians(self.off_axis_deg)
        x, depth = x * math.cos(angle) + depth * math.sin(angle), -x * math.sin(angle) + depth * math.cos(angle)
        if np.any(depth <= 0):
            raise PortraitkitError("The camera is inside the head: use a larger distance.")
        return np.stack([self.focal_mm * x / depth, self.focal_mm * y / depth], axis=1)


@dataclass(frozen=True)
class DistantCamera:
    """The limit of a camera infinitely far away (with a lens long enough to frame the face): every
    depth is at the same scale, so widths keep their true proportions. Ward et al.'s reference."""

    distance_cm: float = math.inf

    def project(self, head: Head, points: np.ndarray) -> np.ndarray:
        """Head points (N, 3) to their true (x, y) offsets from the nose tip, in cm: with no finite
        frame, only ratios of these sizes mean anything."""
        relative = np.asarray(points, dtype=np.float64) - head.points["pronasale"]
        return relative[:, :2].copy()


def camera_at(distance_cm: float, focal_mm: float = DEFAULT_FOCAL_MM, offset_frac: float = 0.0) -> "Camera | DistantCamera":
    """A camera at `distance_cm` from the nose tip; `math.inf` gives the distant (orthographic) limit."""
    return DistantCamera() if distance_cm == math.inf else Camera(distance_cm, focal_mm, offset_frac)


# --- what the camera sees ---------------------------------------------------------------------


@dataclass(frozen=True)
class Appearance:
    """Apparent sizes on the frame (mm), at one camera set-up."""

    face_width: float  # the outline at the height of the cheekbones
    face_height: float  # hairline to chin
    nose_width: float  # alare to alare
    nose_length: float  # nasion to nose tip
    ear_visible: float  # how far the ear rims reach beyond the face's outline, both sides

    @property
    def nose_to_face_width(self) -> float:
        return self.nose_width / self.face_width


def appear(head: Head, camera: Camera) -> Appearance:
    pts = head.points
    names = ["alare_right", "alare_left", "nasion", "pronasale", "trichion", "menton", "ear_rim_right", "ear_rim_left"]
    projected = dict(zip(names, camera.project(head, np.stack([pts[n] for n in names]))))
    outline = camera.project(head, head.outline())
    cheeks = camera.project(head, head.ring(0.0, samples=721))  # the cheekbones' level
    left, right = cheeks[:, 0].min(), cheeks[:, 0].max()
    ear_visible = max(0.0, left - projected["ear_rim_right"][0]) + max(0.0, projected["ear_rim_left"][0] - right)
    return Appearance(
        face_width=float(right - left),
        face_height=float(outline[:, 1].max() - outline[:, 1].min()),
        nose_width=float(np.linalg.norm(projected["alare_left"] - projected["alare_right"])),
        nose_length=float(np.linalg.norm(projected["pronasale"] - projected["nasion"])),
        ear_visible=float(ear_visible),
    )


@dataclass(frozen=True)
class Distortion:
    """Changes at `distance_cm` against `reference_cm`, in %, with the face framed at the same width.

    Every quantity is relative to the face width, which is how a viewer judges a face that
    fills the picture (Ward et al. do the same: "keeping the bizygomatic breadth constant").
    """

    distance_cm: float
    reference_cm: float
    focal_mm: float
    offset_frac: float
    head: str
    nose_to_face_width: float
    nose_length: float
    ear_visible: float
    edge_stretch: float  # face width/height at this offset against the frame's centre
    field_of_view_deg: float

    def to_dict(self) -> dict:
        return {
            "distance_cm": self.distance_cm,
            "reference_cm": self.reference_cm,
            "focal_mm": self.focal_mm,
            "offset_frac": self.offset_frac,
            "head": self.head,
            "field_of_view_deg": round(self.field_of_view_deg, 2),
            "nose_to_face_width_change_pct": round(self.nose_to_face_width, 2),
            "nose_length_change_pct": round(self.nose_length, 2),
            "ear_visible_change_pct": round(self.ear_visible, 2),
            "edge_stretch_pct": round(self.edge_stretch, 2),
        }


def _change(value: float, reference: float) -> float:
    return 100.0 * (value / reference - 1.0) if reference else float("nan")


def edge_stretch_pct(head: Head, distance_cm: float, focal_mm: float, offset_frac: float) -> float:
    """How much wider (horizontal offset) a face looks at `offset_frac` than at the centre, in %.

    A rectilinear lens keeps straight lines straight by stretching everything away from the
    centre: a round object at angle t off the axis comes out about 1/cos(t) times longer along
    the radius. The angle grows with the field of view, so a wide lens stretches faces at the
    edges while a longer lens at the same framing barely does.
    """
    on = appear(head, Camera(distance_cm, focal_mm, 0.0))
    off = appear(head, Camera(distance_cm, focal_mm, offset_frac))
    return _change(off.face_width / off.face_height, on.face_width / on.face_height)


def distortion(
    distance_cm: float,
    reference_cm: float = REFERENCE_CM,
    focal_mm: float = DEFAULT_FOCAL_MM,
    offset_frac: float = 0.0,
    head: Head | str = "women",
) -> Distortion:
    """The selfie effect at `distance_cm` against `reference_cm` (both to the nose tip).

    Nose and ear changes are for a face in the middle of the frame, where they depend on the
    distance alone; `edge_stretch` is the extra change of a face at `offset_frac`, which is
    where the focal length (through the field of view) comes in.
    """
    head = Head(head) if isinstance(head, str) else head
    near = appear(head, Camera(distance_cm, focal_mm, 0.0))
    if not reference_cm > 0:  # also NaN
        raise PortraitkitError(f"The reference distance must be a positive number of cm (or inf), got {reference_cm}.")
    far = appear(head, camera_at(reference_cm, focal_mm))
    return Distortion(
        distance_cm=distance_cm,
        reference_cm=reference_cm,
        focal_mm=focal_mm,
        offset_frac=offset_frac,
        head=head.sex,
        nose_to_face_width=_change(near.nose_to_face_width, far.nose_to_face_width),
        nose_length=_change(near.nose_length / near.face_width, far.nose_length / far.face_width),
        ear_visible=_change(near.ear_visible / near.face_width, far.ear_visible / far.face_width),
        edge_stretch=edge_stretch_pct(head, distance_cm, focal_mm, offset_frac),
        field_of_view_deg=Camera(distance_cm, focal_mm).field_of_view_deg,
    )


def distance_for_framing(focal_mm: float, face_fraction: float = 0.25, head: Head | str = "women") -> float:
    """Camera distance (cm, to the nose tip) at which the face fills `face_fraction` of the frame's width.

    This is how focal length really acts on a face: to frame it the same way, a longer lens
    must stand further back, and the distance is what changes the face's proportions.
    """
    head = Head(head) if isinstance(head, str) else head
    if not 0 < face_fraction < 1:
        raise PortraitkitError(f"face_fraction is the share of the frame's width, between 0 and 1; got {face_fraction}.")
    target = face_fraction * 2 * FRAME_HALF_WIDTH_MM
    near, far = 1.0, 100000.0  # the apparent width falls steadily with distance: bisect on a log scale
    for _ in range(60):
        middle = math.sqrt(near * far)
        if appear(head, Camera(middle, focal_mm)).face_width > target:
            near = middle
        else:
            far = middle
    return math.sqrt(near * far)


def distance_for_nose_change(change_pct: float, head: Head | str = "women") -> float | None:
    """The camera distance (cm, to the nose tip) at which the nose looks `change_pct` % wider
    against the face than from far away: the distance a measured widening points to. None for no
    widening, or one beyond what 15 cm would show."""
    if not change_pct > 0:
        return None
    near, far = 15.0, 10000.0  # the widening falls steadily with distance: bisect on a log scale
    if distortion(near, math.inf, head=head).nose_to_face_width < change_pct:
        return None
    for _ in range(50):
        middle = math.sqrt(near * far)
        if distortion(middle, math.inf, head=head).nose_to_face_width > change_pct:
            near = middle
        else:
            far = middle
    return math.sqrt(near * far)
