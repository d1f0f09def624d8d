"""The camera-frame protocol's helpers: the pair subset and the shrunk photos' geometry."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from iafsr_sdk.detect import face_size
from training.frames_eval import pair_subset, shrink_photo

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_pair_subset_spans_every_fold_and_both_kinds():
    chosen = pair_subset(6000, 50)
    assert len(chosen) == 50 and chosen[0] == 0 and chosen[-1] == 5999
    folds, positions = chosen // 600, chosen % 600
    assert set(folds) == set(range(10)) and (positions < 300).any() and (positions >= 300).any()
    assert (pair_subset(6000, None) == np.arange(6000)).all() and len(pair_subset(100, 500)) == 100


def test_shrunk_photo_has_the_asked_face_size():
    landmarks = json.loads((FIXTURES / "faces_landmarks.json").read_text())
    for name, points in landmarks.items():
        photo = np.asarray(Image.open(FIXTURES / name).convert("RGB"))
        for size in (16, 24, 32):
            frame, moved = shrink_photo(photo, np.array(points), size)
            assert abs(face_size(moved) - size) < 0.3
            assert frame.shape[0] == frame.shape[1] == round(250 * face_size(moved) / face_size(np.array(points)))
