"""Faces, the shared ground floor of prep, validation and pick: opening any photo safely
(`photos`), finding faces with their 68 landmarks and 128-d identity embeddings (`detect`), and
the limits past which a face is too blurry, too dark or too small to use (`quality`)."""

from portraitkit.faces.detect import SAME_PERSON_THRESHOLD, Face, detect_faces, face_embedding, identity_distance
from portraitkit.faces.photos import open_photo

__all__ = ["SAME_PERSON_THRESHOLD", "Face", "detect_faces", "face_embedding", "identity_distance", "open_photo"]
