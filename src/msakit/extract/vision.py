"""Facial-expression features from MediaPipe FaceMesh landmarks.

For every kept video frame, FaceMesh (tracking mode, one face) gives 468 (478 refined) 3-D
landmarks. From them we measure distances that move with expressions and divide them by the
inter-ocular distance (IOD, between the two eye centres), so that they do not depend on how far
the speaker sits from the camera. Signed measures (lip corners, brows) are projected on the face's
own "up" axis, so they do not change when the head rolls.

Frames where no face is found are kept: their row is all zeros with ``face_present = 0``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from msakit.extract.config import VisionConfig
from msakit.extract.media import ExtractionError, iter_video_frames

# FaceMesh landmark indices ("left"/"right" are the speaker's own sides).
RIGHT_EYE = {"outer": 33, "inner": 133, "upper": 159, "lower": 145}
LEFT_EYE = {"outer": 263, "inner": 362, "upper": 386, "lower": 374}
MOUTH = {"right_corner": 61, "left_corner": 291, "upper_inner": 13, "lower_inner": 14}
RIGHT_BROW_MID, LEFT_BROW_MID = 105, 334
RIGHT_BROW_INNER, LEFT_BROW_INNER = 107, 336
NOSE_TIP, CHIN, FOREHEAD = 1, 152, 10
N_LANDMARKS = 468

EXPRESSION_FEATURES = [
    "face_present",
    "mouth_open",
    "mouth_width",
    "lip_corner_raise_left",
    "lip_corner_raise_right",
    "eye_open_left",
    "eye_open_right",
    "brow_raise_left",
    "brow_raise_right",
    "brow_inner_gap",
    "nose_to_chin",
    "head_yaw_deg",
    "head_pitch_deg",
    "head_roll_deg",
    "face_x",
    "face_y",
    "face_scale",
]
FACE_PRESENT = 0  # column of the face flag


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def expression_features(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """The expression row of one face.

    Args:
        points: ``(K, 3)`` FaceMesh landmarks as MediaPipe gives them (x, y in [0, 1] of the
            image width/height, z in about the same scale as x, smaller = nearer).
        width, height: the image size in pixels.

    Returns:
        ``(len(EXPRESSION_FEATURES),)`` float32.
    """
    # Isotropic right-handed frame: x right, y up, z towards the camera, in pixels.
    p = np.stack([points[:, 0] * width, -points[:, 1] * height, -points[:, 2] * width], axis=1)
    right_eye = p[[RIGHT_EYE["outer"], RIGHT_EYE["inner"]]].mean(0)
    left_eye = p[[LEFT_EYE["outer"], LEFT_EYE["inner"]]].mean(0)
    iod = float(np.linalg.norm(left_eye - right_eye))
    if iod < 1e-6:
        raise ValueError("degenerate landmarks (eyes coincide)")

    # Face axes: x from the speaker's right eye to the left eye (image left -> right for a
    # frontal face), y from chin to forehead made orthogonal to x, z = x cross y (out of face).
    x_axis = _unit(left_eye - right_eye)
    up = p[FOREHEAD] - p[CHIN]
    y_axis = _unit(up - np.dot(up, x_axis) * x_axis)
    z_axis = np.cross(x_axis, y_axis)

    def dist(a: int, b: int) -> float:
        return float(np.linalg.norm(p[a] - p[b])) / iod

    mouth_centre = (p[MOUTH["upper_inner"]] + p[MOUTH["lower_inner"]]) / 2
    right_eye_centre, left_eye_centre = right_eye, left_eye

    def height_above(point: np.ndarray, reference: np.ndarray) -> float:
        return float(np.dot(point - reference, y_axis)) / iod

    yaw = math.degrees(math.atan2(z_axis[0], z_axis[2]))
    pitch = math.degrees(math.atan2(z_axis[1], z_axis[2]))
    roll = math.degrees(math.atan2(x_axis[1], x_axis[0]))
    row = [
        1.0,
        dist(MOUTH["upper_inner"], MOUTH["lower_inner"]),
        dist(MOUTH["right_corner"], MOUTH["left_corner"]),
        height_above(p[MOUTH["left_corner"]], mouth_centre),
        height_above(p[MOUTH["right_corner"]], mouth_centre),
        dist(LEFT_EYE["upper"], LEFT_EYE["lower"]),
        dist(RIGHT_EYE["upper"], RIGHT_EYE["lower"]),
        height_above(p[LEFT_BROW_MID], left_eye_centre),
        height_above(p[RIGHT_BROW_MID], right_eye_centre),
        dist(RIGHT_BROW_INNER, LEFT_BROW_INNER),
        dist(NOSE_TIP, CHIN),
        yaw,
        pitch,
        roll,
        float(points[NOSE_TIP, 0]),
        float(points[NOSE_TIP, 1]),
        iod / width,
    ]
    return np.asarray(row, dtype=np.float32)


def normalised_landmarks(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(468 * 3,)`` landmarks centred on the nose tip and divided by the IOD (pixels)."""
    p = np.stack([points[:, 0] * width, points[:, 1] * height, points[:, 2] * width], axis=1)
    p = p[:N_LANDMARKS]
    right_eye = p[[RIGHT_EYE["outer"], RIGHT_EYE["inner"]]].mean(0)
    left_eye = p[[LEFT_EYE["outer"], LEFT_EYE["inner"]]].mean(0)
    iod = max(float(np.linalg.norm(left_eye - right_eye)), 1e-6)
    return ((p - p[NOSE_TIP]) / iod).reshape(-1).astype(np.float32)


def _flush_c_streams() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # pragma: no cover - no C library to flush
        pass


@contextlib.contextmanager
def _native_stderr_silenced():
    """Silence file descriptor 2 while FaceMesh runs.

    MediaPipe's C++ core (TensorFlow Lite, absl) prints notes straight to fd 2, out of reach of
    Python's logging; they say nothing a user can act on. Failures still surface as exceptions.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. captured): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        _flush_c_streams()  # C-level buffers still hold the notes: drop them into /dev/null
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass
class VisionResult:
    """Vision features of one clip.

    Attributes:
        features: ``(T, D)`` float32, one row per kept frame.
        times: ``(T,)`` frame times in seconds.
        face_frames: how many of the ``T`` frames had a face.
    """

    features: np.ndarray
    times: np.ndarray
    face_frames: int

    @property
    def fps(self) -> float:
        if len(self.times) < 2:
            return 0.0
        return float((len(self.times) - 1) / (self.times[-1] - self.times[0]))


class VisionFeatureExtractor:
    """Runs FaceMesh over a clip's frames. One instance per process; a fresh tracker per clip."""

    def __init__(self, config: VisionConfig):
        self.config = config
        self.feature_names = list(EXPRESSION_FEATURES)
        if config.landmarks:
            self.feature_names += [f"landmark{i}.{axis}" for i in range(N_LANDMARKS)
                                   for axis in "xyz"]

    @property
    def dim(self) -> int:
        return len(self.feature_names)

    def empty(self) -> np.ndarray:
        """The one all-zero row (``face_present = 0``) standing for a clip without video."""
        return np.zeros((1, self.dim), dtype=np.float32)

    def extract(self, path, where: str = "<clip>") -> VisionResult:
        """Features of every kept frame of the video at ``path``."""
        from mediapipe.python.solutions import face_mesh

        c = self.config
        rows, times, faces = [], [], 0
        with _native_stderr_silenced(), face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=c.refine_landmarks,
            min_detection_confidence=c.min_detection_confidence,
            min_tracking_confidence=c.min_tracking_confidence,
        ) as mesh:
            for frame in iter_video_frames(path, c.fps):
                height, width = frame.image.shape[:2]
                result = mesh.process(frame.image)
                row = np.zeros(self.dim, dtype=np.float32)
                if result.multi_face_landmarks:
                    marks = result.multi_face_landmarks[0].landmark
                    points = np.array([(m.x, m.y, m.z) for m in marks], dtype=np.float64)
                    try:
                        n = len(EXPRESSION_FEATURES)
                        row[:n] = expression_features(points, width, height)
                        if c.landmarks:
                            row[n:] = normalised_landmarks(points, width, height)
                        faces += 1
                    except ValueError:
                        row[:] = 0.0  # degenerate face: treat as not found
                rows.append(row)
                times.append(frame.time)
        if not rows:
            raise ExtractionError(f"{where}: the video track has no decodable frames", "vision")
        return VisionResult(np.stack(rows), np.asarray(times, dtype=np.float64), faces)
