"""The shared face geometry: alignment onto the template, Pillow-exact resizing, degradation."""
import json
from pathlib import Path

import numpy as np
import pytest

from iafsr_sdk.faces import TEMPLATE_128, align, degrade, resize, similarity_transform, template, warp_affine

FIXTURES = Path(__file__).parent / "fixtures"
Image = pytest.importorskip("PIL.Image")


def fixture_photos():
    landmarks = json.loads((FIXTURES / "faces_landmarks.json").read_text())
    for name, points in sorted(landmarks.items()):
        yield np.asarray(Image.open(FIXTURES / name).convert("RGB")), np.asarray(points)


def test_template_is_arcface_scaled_to_128():
    assert TEMPLATE_128[0] == pytest.approx([38.2946 * 128 / 112, 51.6963 * 128 / 112])
    assert template(112)[4] == pytest.approx([70.7299, 92.2041])


def test_similarity_transform_recovers_a_known_transform():
    angle, scale, shift = np.deg2rad(23.0), 1.7, np.array([40.0, -12.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = np.random.default_rng(0).uniform(0, 100, (5, 2))
    target = source @ rotation.T + shift
    matrix = similarity_transform(source, target)
    assert np.abs(matrix[:, :2] - rotation).max() < 1e-9
    assert np.abs(matrix[:, 2] - shift).max() < 1e-9


def test_similarity_transform_never_reflects():
    source = np.random.default_rng(1).uniform(0, 100, (5, 2))
    mirrored = source * [-1, 1]
    assert np.linalg.det(similarity_transform(source, mirrored)[:, :2]) > 0


def test_align_puts_exact_landmarks_on_the_template():
    # A photo made by moving an aligned face with a known similarity: aligning it back must land its
    # landmarks on the template and give the original crop back.
    photo, points = next(fixture_photos())
    crop, _ = align(photo, points)
    angle, scale = np.deg2rad(-17.0), 1.9
    forward = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 60.0],
                        [scale * np.sin(angle), scale * np.cos(angle), 90.0]])
    moved, _ = warp_affine(crop.astype(np.float64), forward, 400)
    moved_points = TEMPLATE_128 @ forward[:, :2].T + forward[:, 2]
    matrix = similarity_transform(moved_points, TEMPLATE_128)
    landed = moved_points @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(landed - TEMPLATE_128).max() < 1.0
    back, valid = align(moved, moved_points)
    assert valid.all()
    assert np.abs(back[16:-16, 16:-16] - crop[16:-16, 16:-16]).mean() < 4.0


def test_align_real_faces_lands_landmarks_near_the_template():
    for photo, points in fixture_photos():
        crop, valid = align(photo, points)
        assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
        assert valid.mean() > 0.99
        matrix = similarity_transform(points, TEMPLATE_128)
        landed = points @ matrix[:, :2].T + matrix[:, 2]
        # The same least-squares similarity solved independently, as a linear system in (a, b, tx, ty).
        rows = [[x, -y, 1, 0] for x, y in points] + [[y, x, 0, 1] for x, y in points]
        targets = np.concatenate([TEMPLATE_128[:, 0], TEMPLATE_128[:, 1]])
        a, b, tx, ty = np.linalg.lstsq(np.array(rows), targets, rcond=None)[0]
        expected = points @ np.array([[a, -b], [b, a]]).T + [tx, ty]
        assert np.abs(landed - expected).max() < 1e-6
        # real faces are not template-shaped: the fit leaves each point within a few pixels
        assert np.linalg.norm(landed - TEMPLATE_128, axis=1).mean() < 4.0


def test_align_marks_pixels_outside_the_photo():
    photo, points = next(fixture_photos())
    tight = photo[90:170, 85:165]  # a crop that cuts into the face region
    _, valid = align(tight, points - [85, 90])
    assert 0.2 < valid.mean() < 0.95
    assert valid[64, 64]


@pytest.mark.parametrize("bad", [np.zeros((10, 10)), np.zeros((10, 10, 4)), np.zeros((1, 1, 3))])
def test_align_rejects_bad_images(bad):
    with pytest.raises(ValueError, match="image"):
        align(bad, TEMPLATE_128)


def test_align_rejects_bad_landmarks():
    photo, points = next(fixture_photos())
    with pytest.raises(ValueError, match="landmarks"):
        align(photo, points[:4])
    with pytest.raises(ValueError, match="NaN"):
        align(photo, np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="degenerate"):
        align(photo, np.ones((5, 2)))


@pytest.mark.parametrize("size", [16, 37, 112, 150, 300])
def test_resize_matches_pillow_bicubic(size):
    for photo, points in fixture_photos():
        crop, _ = align(photo, points)
        ours = resize(crop, size).astype(int)
        pillow = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC)).astype(int)
        # Pillow's fixed-point weights may round a rare pixel the other way, once per axis
        assert np.abs(ours - pillow).max() <= 2
        assert (ours != pillow).mean() < 0.02


def test_resize_non_square_and_batch():
    photo, _ = next(fixture_photos())
    pillow = np.asarray(Image.fromarray(photo).resize((31, 77), Image.BICUBIC)).astype(int)
    assert np.abs(resize(photo, (77, 31)).astype(int) - pillow).max() <= 1
    batch = np.stack([photo, photo[::-1]])
    assert np.array_equal(resize(batch, 20)[1], resize(photo[::-1], 20))


def test_resize_float_keeps_range_semantics():
    photo, _ = next(fixture_photos())
    as_float = photo.astype(np.float32) / 255
    small = resize(as_float, 16)
    assert small.dtype == np.float32
    # uint8 resizing rounds and clips after each axis; float resizing keeps the bicubic overshoot
    assert np.abs(np.clip(small * 255, 0, 255) - resize(photo, 16)).mean() < 0.5
    assert small.min() < 0 or small.max() > 1 or np.abs(small * 255 - resize(photo, 16)).max() <= 1


def test_resize_rejects_bad_input():
    with pytest.raises(ValueError):
        resize(np.zeros((4, 4)), 2)
    with pytest.raises(TypeError):
        resize(np.zeros((4, 4, 3), np.int32), 2)


def test_degrade_is_resize_to_16():
    photo, points = next(fixture_photos())
    crop, _ = align(photo, points)
    low = degrade(crop)
    assert low.shape == (16, 16, 3) and low.dtype == np.uint8
    assert np.array_equal(low, resize(crop, 16))


def test_torch_degrade_matches_numpy():
    torch = pytest.importorskip("torch")
    from training.resample import degrade as degrade_torch, resize as resize_torch

    crops = np.stack([align(photo, points)[0] for photo, points in fixture_photos()])
    hr = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    low = (degrade_torch(hr) * 255).round().permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(low - degrade(crops).astype(int)).max() <= 1
    up = resize_torch(hr, 150).permute(0, 2, 3, 1).numpy()
    assert np.abs(up - resize(crops.astype(np.float32) / 255, 150)).max() < 1e-5
