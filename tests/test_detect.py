"""Faces in camera frames: the crop geometry, detection on real frames at low resolution, bad input."""
import hashlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iafsr_sdk import detect
from iafsr_sdk.detect import (FaceDetector, as_frame, crop_face, enhance_frame, face_size, find_faces,
                              lr_template)
from iafsr_sdk.faces import HR_SIZE, align, degrade, resize, template

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CROWD = ROOT / "examples" / "frames" / "crowd.png"

needs_cv2 = pytest.mark.skipif(importlib.util.find_spec("cv2") is None,
                               reason='OpenCV is not installed (pip install ".[detect]")')


def fixture_photos():
    landmarks = json.loads((FIXTURES / "faces_landmarks.json").read_text())
    for name, points in sorted(landmarks.items()):
        yield np.asarray(Image.open(FIXTURES / name).convert("RGB")), np.asarray(points)


def shrink(photo: np.ndarray, points: np.ndarray, crop_side: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo resized (antialiased bicubic) so that its face's aligned crop is ``crop_side`` px wide, and
    the landmarks moved with it."""
    side = round(photo.shape[1] * crop_side / face_size(points))
    return resize(photo, side), (points + 0.5) * side / photo.shape[1] - 0.5


def similarity(angle_deg: float, scale: float, shift) -> np.ndarray:
    angle = math.radians(angle_deg)
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return rotation, np.asarray(shift)


@pytest.fixture(scope="module")
def detector():
    if importlib.util.find_spec("cv2") is None:
        pytest.skip("OpenCV is not installed")
    return FaceDetector()


# ----------------------------------------------------------------------------------------------------------
# Crop geometry (numpy only)


def test_lr_template_is_where_degrade_puts_the_template():
    assert np.allclose(lr_template(HR_SIZE), template(HR_SIZE))
    assert np.allclose(lr_template(16), (template(128) + 0.5) / 8 - 0.5)


def test_face_size_is_the_crop_side():
    rotation, shift = similarity(17.0, 0.3, [50.0, 40.0])
    assert face_size(template(128) @ rotation.T + shift) == pytest.approx(128 * 0.3)


def test_crop_of_an_aligned_face_is_degrade():
    faces = [align(photo, points)[0] for photo, points in fixture_photos()]
    for face in faces:
        # Float faces: no rounding on either side, so the interior matches to float precision.
        float_face = face.astype(np.float64) / 255
        crop, inside = crop_face(float_face, template(128), 16)
        assert inside.all()
        assert np.abs(crop - degrade(float_face))[2:-2, 2:-2].max() < 1e-9
        # uint8: Pillow rounds after each axis; the outer ring repeats edge pixels where Pillow renormalises.
        crop8 = crop_face(face, template(128), 16)[0].astype(int)
        difference = np.abs(crop8 - degrade(face).astype(int))
        assert difference[2:-2, 2:-2].max() <= 6 and difference.mean() < 1


@pytest.mark.parametrize("size", [16, 128])
@pytest.mark.parametrize("angle, scale", [(0.0, 0.3), (20.0, 0.3), (-35.0, 0.12), (10.0, 0.9)])
def test_synthetic_landmarks_land_on_the_template(size, angle, scale):
    """One bright blob at each landmark of a synthetic frame, rotated and scaled: in the crop, each blob's
    centroid is on the template point (within 0.25 px; a half-pixel convention error would be 0.44 px)."""
    rotation, shift = similarity(angle, scale, [71.3, 37.8])
    points = template(128) @ rotation.T + shift
    ys, xs = np.mgrid[0:180, 0:200].astype(np.float64)
    sigma = 2.5 * scale / 0.3
    targets = lr_template(size)
    for index, (x, y) in enumerate(points):
        blob = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
        frame = np.repeat(blob[:, :, None], 3, axis=2)
        crop = crop_face(frame, points, size)[0][:, :, 0]
        weights = np.clip(crop, 0, None)
        grid_y, grid_x = np.mgrid[0:size, 0:size]
        centroid = np.array([(weights * grid_x).sum(), (weights * grid_y).sum()]) / weights.sum()
        assert np.linalg.norm(centroid - targets[index]) < 0.25 * max(1, size / 16), (index, centroid)


def test_real_face_in_a_rotated_frame_gives_the_template_crop():
    """An aligned face put into a frame rotated and shrunk (crop 40 px wide): its crop at 16 is degrade()
    of the face, to a few levels, and clearly closer than the same crop shifted by one pixel."""
    photo, points = next(fixture_photos())
    face = align(photo, points)[0]
    rotation, shift = similarity(15.0, 40 / 128, [70.0, 55.0])
    frame_points = template(128) @ rotation.T + shift
    # Render the frame from the face: each frame pixel sampled from a 4× supersampled grid (a camera's area).
    ys, xs = np.mgrid[0:110, 0:150].astype(np.float64)
    inverse = np.linalg.inv(rotation)
    total = np.zeros((110, 150, 3))
    offsets = (np.arange(4) + 0.5) / 4 - 0.5
    for dy in offsets:
        for dx in offsets:
            src = np.stack([xs + dx - shift[0], ys + dy - shift[1]], -1) @ inverse.T
            total += _bilinear(face, src)
    frame = np.clip(np.rint(total / 16), 0, 255).astype(np.uint8)
    crop = crop_face(frame, frame_points, 16)[0].astype(float)
    reference = degrade(face).astype(float)
    error = np.abs(crop - reference)[1:-1, 1:-1].mean()
    shifted = np.abs(crop_face(frame, frame_points + rotation @ [128 / 16, 0], 16)[0].astype(float)
                     - reference)[1:-1, 1:-1].mean()
    assert error < 6 and shifted > 2 * error, (error, shifted)


def _bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of an (H, W, 3) image at (..., 2) points (x, y), edge pixels repeated."""
    height, width = image.shape[:2]
    x = np.clip(points[..., 0], 0, width - 1)
    y = np.clip(points[..., 1], 0, height - 1)
    x0 = np.minimum(np.floor(x).astype(int), width - 2)
    y0 = np.minimum(np.floor(y).astype(int), height - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    pixels = image.astype(np.float64)
    top = pixels[y0, x0] * (1 - fx) + pixels[y0, x0 + 1] * fx
    bottom = pixels[y0 + 1, x0] * (1 - fx) + pixels[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def test_crop_outside_the_frame_repeats_the_edge_and_says_so():
    frame = np.full((80, 40, 3), 200, np.uint8)
    points = template(128) * 0.5 + [-30.0, 0.0]  # the 64 px crop reaches 30 px left of the frame
    crop, inside = crop_face(frame, points, 16)
    assert (crop == 200).all()
    assert not inside[:, 0].any() and inside[:, -1].all()


def test_crop_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        crop_face(np.zeros((10, 10)), template(128))
    with pytest.raises(TypeError, match="int32"):
        crop_face(np.zeros((10, 10, 3), np.int32), template(128))
    with pytest.raises(ValueError, match="landmarks"):
        crop_face(np.zeros((10, 10, 3), np.uint8), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="degenerate"):
        crop_face(np.zeros((10, 10, 3), np.uint8), np.zeros((5, 2)))


# ----------------------------------------------------------------------------------------------------------
# Frames in, bad frames


def test_as_frame_converts_grayscale_rgba_bgr_and_floats():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    assert (as_frame(gray) == gray[:, :, None]).all() and as_frame(gray).shape == (6, 7, 3)
    assert (as_frame(gray[:, :, None]) == as_frame(gray)).all()
    rgba = np.concatenate([rgb, np.zeros((6, 7, 1), np.uint8)], axis=2)
    assert (as_frame(rgba) == rgb).all()
    assert (as_frame(np.ascontiguousarray(rgb[:, :, ::-1]), channel_order="bgr") == rgb).all()
    assert (as_frame(rgb / 255.0) == rgb).all()


@pytest.mark.parametrize("frame, error, match", [
    ([[1, 2], [3, 4]], TypeError, "numpy array"),
    (np.zeros((8, 8, 3), np.int32), TypeError, "int32"),
    (np.zeros((8, 8, 2), np.uint8), ValueError, "shape"),
    (np.zeros((8, 8, 3, 1), np.uint8), ValueError, "shape"),
    (np.zeros((1, 8, 3), np.uint8), ValueError, "too small"),
    (np.full((8, 8, 3), np.nan), ValueError, "NaN"),
    (np.full((8, 8, 3), 200.0), ValueError, r"\[0, 1\]"),
])
def test_as_frame_rejects_bad_frames(frame, error, match):
    with pytest.raises(error, match=match):
        as_frame(frame)


def test_the_package_imports_and_aligns_without_opencv(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    import iafsr_sdk

    assert iafsr_sdk.crop_face is crop_face
    with pytest.raises(ModuleNotFoundError, match=r"iafsr\[detect\]"):
        iafsr_sdk.FaceDetector()


def test_shipped_detector_matches_its_card():
    folder = ROOT / "iafsr_sdk" / "models"
    card = json.loads((folder / detect.YUNET_CARD).read_text())
    data = (folder / card["file"]).read_bytes()
    assert card["file"] == detect.YUNET_FILE and len(data) == card["bytes"]
    assert hashlib.sha256(data).hexdigest() == card["sha256"]
    assert "MIT" in (folder / "LICENSE-yunet.txt").read_text()


# ----------------------------------------------------------------------------------------------------------
# Detection (OpenCV)


@needs_cv2
def test_loading_the_detector_is_silent_and_keeps_opencv_log_level(capfd):
    import cv2

    before = cv2.utils.logging.getLogLevel()
    FaceDetector()
    assert cv2.utils.logging.getLogLevel() == before
    assert capfd.readouterr().err == ""


@needs_cv2
def test_finds_the_fixture_faces_at_full_size(detector):
    for photo, points in fixture_photos():
        faces = detector.find(photo)
        assert len(faces) == 1
        assert np.abs(faces[0].landmarks - points).max() < 1.0
        assert faces[0].size == pytest.approx(face_size(points), rel=1e-3)


@needs_cv2
@pytest.mark.parametrize("crop_side", [12, 16, 24, 32])
def test_finds_small_faces_with_landmarks_within_a_pixel(detector, crop_side):
    for photo, points in fixture_photos():
        frame, truth = shrink(photo, points, crop_side)
        faces = detector.find(frame)
        assert len(faces) >= 1, frame.shape
        error = np.linalg.norm(faces[0].landmarks - truth, axis=1).mean()
        assert error < 1.0 + crop_side / 32, (frame.shape, error)
        assert abs(faces[0].size - crop_side) < 0.25 * crop_side


@needs_cv2
def test_finds_every_face_of_the_example_crowd(detector):
    truth = json.loads((FIXTURES / "frames_crowd_truth.json").read_text())["faces"]
    frame = np.asarray(Image.open(CROWD).convert("RGB"))
    faces = detector.find(frame)
    assert len(faces) == len(truth) == 8
    for expected in truth:
        points = np.array(expected["landmarks"])
        error = min(np.linalg.norm(face.landmarks - points, axis=1).mean() for face in faces)
        assert error < 1.5, (expected["photo"], error)


@needs_cv2
def test_grayscale_rgba_float_and_bgr_frames_find_the_same_face(detector):
    photo, points = next(fixture_photos())
    frame, truth = shrink(photo, points, 20)
    reference = detector.find(frame)[0].landmarks
    rgba = np.concatenate([frame, np.full(frame.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert np.allclose(detector.find(rgba)[0].landmarks, reference)
    assert np.allclose(detector.find(frame / 255.0)[0].landmarks, reference)
    assert np.allclose(detector.find(frame[:, :, ::-1], channel_order="bgr")[0].landmarks, reference)
    gray = frame.mean(axis=2).round().astype(np.uint8)
    assert np.linalg.norm(detector.find(gray)[0].landmarks - truth, axis=1).mean() < 1.5


@needs_cv2
def test_no_face_is_an_empty_result(detector):
    blank = np.full((90, 160, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (90, 160), dtype=np.uint8)
    assert detector.find(blank) == [] and detector.find(noise) == []
    assert enhance_frame(blank, enhancer=object(), detector=detector) == []  # the enhancer is never called


@needs_cv2
def test_tiled_detection_finds_faces_on_tile_edges_once():
    """A frame larger than the tiles, faces across the tile seams: each found once, as untiled."""
    photo, points = next(fixture_photos())
    small, truth = shrink(photo, points, 16)
    frame = np.full((300, 420, 3), 90, np.uint8)
    corners = [(0, 0), (100, 180), (230, 340), (40, 300)]
    for top, left in corners:
        frame[top:top + small.shape[0], left:left + small.shape[1]] = small
    tiled = FaceDetector(tile=128, overlap=64)
    whole = FaceDetector(tile=4096, overlap=256)
    for found in (tiled.find(frame), whole.find(frame)):
        assert len(found) == len(corners)
        for top, left in corners:
            error = min(np.linalg.norm(face.landmarks - truth - [left, top], axis=1).mean() for face in found)
            assert error < 1.5


@needs_cv2
def test_large_frames_use_a_reduced_level_for_large_faces():
    photo, points = next(fixture_photos())
    frame = resize(photo, 1400)  # face crop ~720 px: larger than a tile, found on the reduced copy
    faces = FaceDetector(min_face=40).find(frame)
    assert len(faces) == 1
    truth = (points + 0.5) * 1400 / 250 - 0.5
    # YuNet's landmark error is about 3 % of the crop side at any size (1 px at 32, 20 px at 720).
    assert np.linalg.norm(faces[0].landmarks - truth, axis=1).mean() < 0.05 * face_size(truth)


@needs_cv2
def test_find_faces_options_and_detector_are_exclusive(detector):
    with pytest.raises(TypeError, match="min_face"):
        find_faces(np.zeros((20, 20, 3), np.uint8), detector=detector, min_face=20)
    with pytest.raises(ValueError, match="min_face"):
        FaceDetector(min_face=0)


# ----------------------------------------------------------------------------------------------------------
# enhance_frame


@needs_cv2
def test_enhance_frame_enhances_small_faces_and_aligns_large_ones(detector):
    from iafsr_sdk import FaceEnhancer

    enhancer = FaceEnhancer(device="cpu")
    frame = np.asarray(Image.open(CROWD).convert("RGB"))
    faces = enhance_frame(frame, enhancer, detector)
    assert len(faces) == 8
    assert [face.score for face in faces] == sorted((face.score for face in faces), reverse=True)
    for face in faces:
        assert face.face.shape == (128, 128, 3) and face.face.dtype == np.uint8
        assert face.enhanced == (face.size < detect.NATIVE_SIZE)
        if face.enhanced:
            assert face.lr.shape == (16, 16, 3)
            assert np.array_equal(face.lr, crop_face(frame, face.landmarks, 16)[0])
            assert np.array_equal(face.face, enhancer.enhance(face.lr))
        else:
            assert face.lr is None
            assert np.array_equal(face.face, crop_face(frame, face.landmarks, 128)[0])
    assert {face.enhanced for face in faces} == {True, False}
    everything = enhance_frame(frame, enhancer, detector, native_size=None)
    assert all(face.enhanced for face in everything)
    bgr = enhance_frame(np.ascontiguousarray(frame[:, :, ::-1]), enhancer, detector, channel_order="bgr")
    assert all(np.array_equal(a.face, b.face[:, :, ::-1]) for a, b in zip(faces, bgr))
