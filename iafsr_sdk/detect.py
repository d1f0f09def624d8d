"""Faces in camera frames: find them, align them at the frame's own resolution, enhance the small ones.

    from iafsr_sdk import find_faces, enhance_frame
    faces = find_faces(frame)              # boxes, 5 landmarks, scores, for faces from about 10 px wide up
    for face in enhance_frame(frame):      # per face: .face (128×128), .lr (16×16 or None), .enhanced, .box, ...
        ...

Detection is YuNet (``models/face_detection_yunet_2023mar_int8bq.onnx``, MIT, with its card and license
beside it) through OpenCV's ``cv2.FaceDetectorYN``; it needs the ``detect`` extra
(``pip install "iafsr[detect]"``). Alignment (:func:`crop_face`) needs numpy only.

Small faces are looked for on an upscaled copy of the frame, cut into tiles so that working memory stays
bounded whatever the frame size; landmarks come back in frame pixels (pixel centres at integers). The crops
themselves are always sampled from the original frame: :func:`crop_face` warps it straight onto the template
at 16×16 with the antialiased bicubic filter of :func:`iafsr_sdk.faces.degrade`, never through an
upscaled copy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .faces import HR_SIZE, LR_SIZE, _bicubic, similarity_transform, template

log = logging.getLogger("iafsr_sdk")

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
YUNET_CARD = "face_detection_yunet.json"
# Box width, in detector pixels, that the smallest faces are brought to before YuNet looks at them: so
# upscaled, 99 of 100 LFW photos shrunk to 9-12 px face boxes have their face found; unscaled, about 1 in 10.
DETECTOR_FACE = 40
# Where several scales find the same face, the one that saw its box nearest this width (detector pixels)
# gives it: YuNet's landmarks are most accurate from about 50 to 150 px (LFW, against 16 to 32 px faces).
PREFERRED_BOX = 80
# Detector input is cut into tiles of at most TILE × TILE pixels that overlap by OVERLAP pixels.
TILE = 1024
OVERLAP = 256
# Faces whose aligned crop is at least this many frame pixels wide are aligned at 128×128 directly rather
# than enhanced: from about 18 px up, the face's own pixels keep more identity (both recognizers, LFW) than
# the model makes from 16×16 (results/baselines.md, Fig. 2, against the shipped model's feature gaps).
NATIVE_SIZE = 20
# The CLI refuses image files above this many pixels before decoding them.
MAX_FRAME_PIXELS = 64_000_000
_RANGE_SLACK = 1e-3
# Output pixels warped per chunk in crop_face times taps per pixel: bounds its working memory (~50 MB).
_WARP_CHUNK = 1 << 20


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face in a frame. Coordinates are frame pixels, pixel centres at integers."""

    box: np.ndarray  # (4,) x, y, width, height
    landmarks: np.ndarray  # (5, 2): eye on the image's left, other eye, nose tip, mouth corners left, right
    score: float

    @property
    def size(self) -> float:
        """The side, in frame pixels, of the face's aligned crop (:func:`face_size`)."""
        return face_size(self.landmarks)


@dataclass(frozen=True, eq=False)
class FrameFace(DetectedFace):
    """A face of :func:`enhance_frame`: ``face`` is 128×128×3 uint8, enhanced from ``lr`` (the 16×16 aligned
    crop taken from the frame) when ``enhanced``; otherwise aligned at 128 straight from the frame and ``lr``
    is None."""

    face: np.ndarray = None  # type: ignore[assignment]
    lr: Optional[np.ndarray] = None
    enhanced: bool = False


# ----------------------------------------------------------------------------------------------------------
# Alignment at the frame's resolution


def lr_template(size: int = LR_SIZE) -> np.ndarray:
    """The 5 template points as :func:`iafsr_sdk.faces.degrade` leaves them in a ``size``×``size`` face:
    the 128×128 template resampled with pixel centres at integers (at 16: ``(T128 + 0.5) / 8 - 0.5``)."""
    return (template(HR_SIZE) + 0.5) * (size / HR_SIZE) - 0.5


def face_size(landmarks: np.ndarray) -> float:
    """The side, in pixels of the landmarks' image, of the face's crop aligned on the 128×128 template
    (the whole crop, not the face box: a face box is about 0.7 of it). 16 means the face is as large as the
    model's input."""
    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float64), template(HR_SIZE))
    return HR_SIZE / math.hypot(matrix[0, 0], matrix[1, 0])


def crop_face(frame: np.ndarray, landmarks: np.ndarray, size: int = LR_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The face aligned on the template at ``size``×``size``, sampled straight from ``frame``.

    The similarity warp of the 5 ``landmarks`` onto :func:`lr_template` with antialiased bicubic filtering
    (Keys a = −0.5, widened by the reduction factor when shrinking: Pillow's rule, as in
    :func:`iafsr_sdk.faces.resize`), along the crop's axes. For a frame that is itself an aligned 128×128 face
    it gives ``degrade(face, size)`` (to rounding inside, and within a few levels on the outer ring, where
    ``resize`` renormalises its clipped filter and this repeats the edge pixels). Faces smaller than ``size``
    are interpolated with the same bicubic. ``frame`` is (H, W, 3) uint8 or float; returns the crop (same
    dtype) and the boolean mask of crop pixels whose centre falls inside the frame.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) frame, got shape {frame.shape}")
    if frame.dtype != np.uint8 and not np.issubdtype(frame.dtype, np.floating):
        raise TypeError(f"expected a uint8 or floating point frame, got {frame.dtype}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected (5, 2) landmarks, got shape {landmarks.shape}")
    matrix = similarity_transform(landmarks, lr_template(size))  # frame -> crop
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    stretch = max(scale, 1.0)  # kernel argument = crop-pixel distance / stretch
    # The filter's support is a square of half-side 2 × stretch crop pixels along the crop's axes; its
    # bounding box in the frame, plus one pixel for the floor below.
    half_side = 2.0 * stretch / scale
    reach = int(math.ceil(half_side * (abs(matrix[0, 0]) + abs(matrix[1, 0])) / scale)) + 1
    offsets = np.arange(-reach, reach + 1, dtype=np.float64)
    height, width = frame.shape[:2]

    ys, xs = np.mgrid[0:size, 0:size].reshape(2, -1).astype(np.float64)
    centre_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    centre_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    inside = ((centre_x > -0.5) & (centre_x < width - 0.5) & (centre_y > -0.5) & (centre_y < height - 0.5))
    floor_x, floor_y = np.floor(centre_x), np.floor(centre_y)
    # Distances from each output pixel to the taps, along the crop's axes: a per-pixel base plus a tap grid.
    base_u = matrix[0, 0] * floor_x + matrix[0, 1] * floor_y + matrix[0, 2] - xs
    base_v = matrix[1, 0] * floor_x + matrix[1, 1] * floor_y + matrix[1, 2] - ys
    grid_u = matrix[0, 0] * offsets[None, :] + matrix[0, 1] * offsets[:, None]  # (k, k): [row offset, col offset]
    grid_v = matrix[1, 0] * offsets[None, :] + matrix[1, 1] * offsets[:, None]
    work = np.float32 if frame.dtype in (np.uint8, np.float16, np.float32) else np.float64
    out = np.empty((size * size, 3), dtype=work)
    chunk = max(1, _WARP_CHUNK // len(offsets) ** 2)
    for start in range(0, size * size, chunk):
        part = slice(start, start + chunk)
        d_u = ((base_u[part, None, None] + grid_u[None]) / stretch).astype(work)
        d_v = ((base_v[part, None, None] + grid_v[None]) / stretch).astype(work)
        weights = _bicubic(d_u) * _bicubic(d_v)
        weights /= weights.sum(axis=(1, 2), keepdims=True)
        rows = np.clip(floor_y[part, None] + offsets[None, :], 0, height - 1).astype(np.intp)  # (n, k)
        cols = np.clip(floor_x[part, None] + offsets[None, :], 0, width - 1).astype(np.intp)
        # The frame repeats its edge pixels outside.
        pixels = frame[rows[:, :, None], cols[:, None, :]].astype(work)  # (n, k, k, 3)
        out[part] = np.einsum("nij,nijc->nc", weights, pixels)
    out = out.reshape(size, size, 3)
    if frame.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8), inside.reshape(size, size)
    return out.astype(frame.dtype), inside.reshape(size, size)


# ----------------------------------------------------------------------------------------------------------
# Frames


def as_frame(frame: Any, channel_order: str = "rgb") -> np.ndarray:
    """A frame as (H, W, 3) uint8 RGB: grayscale (H, W) or (H, W, 1) is repeated to 3 channels, RGBA loses
    its alpha, BGR(A) is reordered, floats in [0, 1] are scaled to 0..255. Raises TypeError or ValueError
    naming what is wrong."""
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"expected a numpy array frame, got {type(frame).__name__}")
    if frame.dtype != np.uint8 and not np.issubdtype(frame.dtype, np.floating):
        raise TypeError(f"expected a uint8 or floating point frame, got {frame.dtype}")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) frame, got shape {frame.shape}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise ValueError(f"frame too small: shape {frame.shape}")
    if frame.dtype != np.uint8:
        if not np.isfinite(frame).all():
            raise ValueError("frame contains NaN or Inf")
        low, high = float(frame.min()), float(frame.max())
        if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
            raise ValueError(f"floating point frames must be in [0, 1], got values in [{low:g}, {high:g}]")
        frame = np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
    if frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    colour = frame[:, :, :3]
    return colour[:, :, ::-1] if channel_order == "bgr" else colour


def _yunet_bytes() -> bytes:
    folder = Path(str(resources.files(__package__).joinpath("models")))
    card = json.loads((folder / YUNET_CARD).read_text(encoding="utf-8"))
    data = (folder / card["file"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != card["sha256"]:
        raise ValueError(f"{folder / card['file']}: sha256 differs from its card {folder / YUNET_CARD}")
    return data


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as error:
        raise ModuleNotFoundError('face detection needs OpenCV: pip install "iafsr[detect]" '
                                  "(opencv-python-headless >= 4.11)", name="cv2") from error
    return cv2


def _nms(boxes: np.ndarray, priority: np.ndarray, threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression: lowest ``priority`` first, boxes overlapping a kept
    one by more than ``threshold`` IoU dropped."""
    order = list(np.argsort(priority, kind="stable"))
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    kept: list[int] = []
    while order:
        best = order.pop(0)
        kept.append(best)
        rest = np.array(order, dtype=np.intp)
        if not len(rest):
            break
        overlap_w = np.clip(np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]), 0, None)
        overlap_h = np.clip(np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]), 0, None)
        overlap = overlap_w * overlap_h
        iou = overlap / np.maximum(area[best] + area[rest] - overlap, 1e-12)
        order = [index for index, value in zip(order, iou) if value <= threshold]
    return kept


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering ``length`` with tiles of ``tile`` overlapping by at least ``overlap``."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [int(round(value)) for value in np.linspace(0, length - tile, count)]


class FaceDetector:
    """YuNet over a frame at several scales, tiled. Reuse one for a stream of frames; calls are serialised.

    ``min_face``: the smallest face box to look for, in frame pixels (a face whose aligned crop is 16 px wide
    has a box about 12 px wide); smaller values mean a larger upscale of the detector input, so more time.
    ``score_threshold``, ``nms_threshold``: YuNet's. ``tile``, ``overlap``: detector input tiling.
    """

    def __init__(self, min_face: float = 10, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 tile: int = TILE, overlap: int = OVERLAP):
        if not min_face > 0:
            raise ValueError(f"min_face must be positive, got {min_face}")
        if not 0 < score_threshold <= 1 or not 0 < nms_threshold <= 1:
            raise ValueError(f"thresholds must be in (0, 1], got {score_threshold} and {nms_threshold}")
        if not 64 <= 2 * overlap <= tile:
            raise ValueError(f"need 32 <= overlap <= tile / 2, got tile {tile}, overlap {overlap}")
        cv2 = _import_cv2()
        self._cv2 = cv2
        self.min_face = float(min_face)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.tile, self.overlap = int(tile), int(overlap)
        self.upscale = max(1, math.ceil(DETECTOR_FACE / self.min_face))
        model = np.frombuffer(_yunet_bytes(), dtype=np.uint8)
        # OpenCV 5 warns on stderr, at every load, that its graph engine ignores the (default) CPU target.
        opencv_log_level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._net = cv2.FaceDetectorYN.create("onnx", model, np.zeros(0, np.uint8), (320, 320),
                                                  self.score_threshold, self.nms_threshold, 5000)
        except cv2.error as error:
            raise RuntimeError(f"OpenCV {cv2.__version__} cannot load the YuNet model (needs "
                               f"opencv-python-headless >= 4.11): {error}") from error
        finally:
            cv2.utils.logging.setLogLevel(opencv_log_level)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"FaceDetector(min_face={self.min_face:g}, score_threshold={self.score_threshold:g}, "
                f"nms_threshold={self.nms_threshold:g}, tile={self.tile}, overlap={self.overlap})")

    def _levels(self, height: int, width: int) -> list[float]:
        """Detector scales (detector pixels per frame pixel): the upscale for small faces, the frame itself,
        and a reduced copy that fits one tile where the frame does not (for faces larger than the overlap)."""
        longest = max(height, width)
        levels = [float(self.upscale)] if self.upscale > 1 else []
        levels.append(1.0)
        if longest > self.tile:
            levels.append(self.tile / longest)
        return levels

    def _run(self, image_bgr: np.ndarray) -> np.ndarray:
        height, width = image_bgr.shape[:2]
        try:
            self._net.setInputSize((width, height))
            _, faces = self._net.detect(image_bgr)
        except self._cv2.error as error:
            raise RuntimeError(f"YuNet failed on a {width}×{height} input: {error}") from error
        return np.zeros((0, 15), np.float32) if faces is None else faces

    def _tile_image(self, frame: np.ndarray, scale: float, left: int, top: int, tile_w: int,
                    tile_h: int) -> np.ndarray:
        """The detector input of one tile at ``scale`` >= 1, RGB: only the frame region under it is upscaled."""
        if scale == 1:
            return frame[top:top + tile_h, left:left + tile_w]
        x0 = max(0, int((left + 0.5) / scale - 0.5) - 2)
        y0 = max(0, int((top + 0.5) / scale - 0.5) - 2)
        x1 = min(frame.shape[1], int(math.ceil((left + tile_w - 0.5) / scale - 0.5)) + 3)
        y1 = min(frame.shape[0], int(math.ceil((top + tile_h - 0.5) / scale - 0.5)) + 3)
        warp = np.array([[scale, 0, scale * (x0 + 0.5) - 0.5 - left], [0, scale, scale * (y0 + 0.5) - 0.5 - top]])
        return self._cv2.warpAffine(np.ascontiguousarray(frame[y0:y1, x0:x1]), warp, (tile_w, tile_h),
                                    flags=self._cv2.INTER_CUBIC, borderMode=self._cv2.BORDER_REPLICATE)

    def _level(self, frame: np.ndarray, scale: float) -> list[np.ndarray]:
        """Detections from one scale: rows of box, landmarks and score in frame pixels, and the box width
        in detector pixels."""
        height, width = frame.shape[:2]
        if scale < 1:  # the whole frame reduced into one tile
            level_w, level_h = max(1, round(width * scale)), max(1, round(height * scale))
            image = self._cv2.resize(np.ascontiguousarray(frame), (level_w, level_h),
                                     interpolation=self._cv2.INTER_AREA)
            tiles = [(0, 0, image)]
        else:
            level_w, level_h = width * int(scale), height * int(scale)
            tiles = [(left, top, None) for top in _starts(level_h, self.tile, self.overlap)
                     for left in _starts(level_w, self.tile, self.overlap)]
        sx, sy = level_w / width, level_h / height
        found = []
        for left, top, image in tiles:
            if image is None:
                image = self._tile_image(frame, scale, left, top, min(self.tile, level_w - left),
                                         min(self.tile, level_h - top))
            tile_h, tile_w = image.shape[:2]
            for face in self._run(np.ascontiguousarray(image[:, :, ::-1])).astype(np.float64):
                bx, by, bw, bh = face[:4]
                # A face cut by an inner tile edge is whole in the neighbouring tile (or at a coarser scale).
                if ((left > 0 and bx < 2) or (top > 0 and by < 2)
                        or (left + tile_w < level_w and bx + bw > tile_w - 2)
                        or (top + tile_h < level_h and by + bh > tile_h - 2)):
                    continue
                points = (face[4:14].reshape(5, 2) + [left + 0.5, top + 0.5]) / [sx, sy] - 0.5
                box = np.array([(bx + left) / sx, (by + top) / sy, bw / sx, bh / sy])
                found.append(np.concatenate([box, points.ravel(), face[14:15], [bw]]))
        return found

    def find(self, frame: Any, channel_order: str = "rgb") -> list[DetectedFace]:
        """Faces of one frame, best score first. ``frame`` as :func:`as_frame` takes it. No face: []."""
        frame = as_frame(frame, channel_order)
        rows: list[np.ndarray] = []
        with self._lock:
            for scale in self._levels(*frame.shape[:2]):
                rows.extend(self._level(frame, scale))
        if not rows:
            return []
        table = np.array(rows)
        log.debug("YuNet: %d detections at scales %s, frame %s", len(table), self._levels(*frame.shape[:2]),
                  frame.shape)
        kept = _nms(table[:, :4], np.abs(np.log(table[:, 15] / PREFERRED_BOX)), self.nms_threshold)
        kept.sort(key=lambda index: -table[index, 14])
        return [DetectedFace(box=table[i, :4].copy(), landmarks=table[i, 4:14].reshape(5, 2).copy(),
                             score=float(table[i, 14])) for i in kept]


def find_faces(frame: Any, *, channel_order: str = "rgb", detector: FaceDetector | None = None,
               **options: Any) -> list[DetectedFace]:
    """Faces of one frame: box, 5 landmarks and score each, best score first; [] where there is none.

    ``frame`` is (H, W, 3) RGB (``channel_order="bgr"`` for OpenCV's order), grayscale or RGBA, uint8 or float
    in [0, 1]. ``options`` go to :class:`FaceDetector` (``min_face``, ``score_threshold``, ...) when no
    ``detector`` is given; pass one to reuse it across frames.
    """
    if detector is None:
        detector = FaceDetector(**options)
    elif options:
        raise TypeError(f"options {sorted(options)} apply to a new detector, not to the one given")
    return detector.find(frame, channel_order)


def enhance_frame(frame: Any, enhancer: Any = None, detector: FaceDetector | None = None, *,
                  native_size: float | None = NATIVE_SIZE, channel_order: str = "rgb") -> list[FrameFace]:
    """Every face of a frame, aligned and, where small, enhanced to 128×128; best score first.

    Faces whose aligned crop is narrower than ``native_size`` frame pixels (:func:`face_size`; None: all
    faces) are cropped at 16×16 straight from the frame (:func:`crop_face`) and enhanced by ``enhancer`` (a
    :class:`iafsr_sdk.FaceEnhancer`; the shipped model on the default device when None). Larger faces need
    no enhancement: they are cropped at 128×128 from the frame the same way, with ``enhanced`` False and no
    ``lr``. Crops come back in the frame's ``channel_order``, uint8. A frame with no face gives [].
    """
    rgb = as_frame(frame, channel_order)
    detector = FaceDetector() if detector is None else detector
    found = detector.find(rgb)
    small = [native_size is None or face.size < native_size for face in found]
    lr_crops = [crop_face(rgb, face.landmarks, LR_SIZE)[0] if is_small else None
                for face, is_small in zip(found, small)]
    enhanced: list[np.ndarray] = []
    if any(small):
        if enhancer is None:
            from .enhancer import FaceEnhancer

            enhancer = FaceEnhancer()
        enhanced = list(enhancer.enhance(np.stack([crop for crop in lr_crops if crop is not None])))
    results = []
    for face, is_small, lr in zip(found, small, lr_crops):
        out = enhanced.pop(0) if is_small else crop_face(rgb, face.landmarks, HR_SIZE)[0]
        if channel_order == "bgr":
            out = np.ascontiguousarray(out[:, :, ::-1])
            lr = None if lr is None else np.ascontiguousarray(lr[:, :, ::-1])
        results.append(FrameFace(box=face.box, landmarks=face.landmarks, score=face.score, face=out, lr=lr,
                                 enhanced=is_small))
    return results
