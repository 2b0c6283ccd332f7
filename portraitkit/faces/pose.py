"""How far a head is turned (yaw), read from its 68 landmarks, and the range where likeness is judged.

The yaw comes from a cylinder model of the head: the nose tip stands about one head radius in
front of the axis, so its offset from the midpoint of the jaw's two ends, over half the jaw's
width, is sin(yaw). Measured in the face's upright frame (the eye line level), so a tilted head
does not read as a turned one. Rough, faces are not cylinders, but monotonic in the true turn,
which is what a limit needs. Its sign: positive when the nose points to the image's right.

The identity embedding is trusted only up to a turn (`JUDGED_YAW`, measured in docs/judge.md on
real people's photos); past it, and wherever the 68 points did not land on the face (on a
profile they fall in a frontal layout, and the turn read from them means nothing), a face is
"turned too far to judge", whoever it shows.
"""

from __future__ import annotations

import math

import numpy as np

# Judged up to this estimated turn: on 29 real people's photos (docs/judge.md, `python
# benchmarks/bench_judge.py`), the person's photos stay apart from every other person's at each
# estimated turn up to 45 degrees (AUC 1.000 at 0-15, 15-30 and 30-45 degrees: 182, 68 and 22
# photos), their distance growing with the turn (median 0.31 to 0.38, others from 0.63). No
# labelled profiles reached this machine, so nothing beyond is judged (issue 30 measured AUC 0.82
# on profiles). The estimate over-reads real turns (a head turned about 45 degrees read 75).
JUDGED_YAW = 45.0


def roll_degrees(landmarks: np.ndarray) -> float:
    """Angle of the eye line against horizontal; positive when the right-hand eye is lower."""
    left_eye, right_eye = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    return math.degrees(math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))


def upright(landmarks: np.ndarray) -> np.ndarray:
    """The landmarks about their centre, turned so that the eye line is level."""
    angle = math.radians(roll_degrees(landmarks))
    c, s = math.cos(angle), math.sin(angle)
    return (landmarks - landmarks.mean(axis=0)) @ np.array([[c, -s], [s, c]])


def yaw_degrees(landmarks: np.ndarray) -> float:
    """The head's turn from the 68 landmarks (iBUG order), in degrees; 0 faces the camera."""
    points = upright(np.asarray(landmarks, dtype=np.float64))
    jaw_left, jaw_right, nose_tip = points[0], points[16], points[30]
    half_width = max(float(np.linalg.norm(landmarks[16] - landmarks[0])) / 2, 1.0)
    offset = (nose_tip[0] - (jaw_left[0] + jaw_right[0]) / 2) / half_width
    return math.degrees(math.asin(float(np.clip(offset, -1.0, 1.0))))


def turned_too_far(face) -> str | None:
    """Why `face` (faces.detect.Face) cannot be judged for likeness, or None when it can."""
    if not face.landmarks_fit:
        return "turned too far to judge: its landmarks did not land (a head turned towards profile)"
    yaw = yaw_degrees(face.landmarks)
    if abs(yaw) > JUDGED_YAW:
        return f"turned too far to judge: head turned about {abs(yaw):.0f} degrees (likeness is judged up to {JUDGED_YAW:.0f})"
    return None
