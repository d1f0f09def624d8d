"""Derive the small committed example frames from LFW photos.

    python -m examples.make_frames [--data ../shared/data] [--cache data/cache/lfw]

Writes ``examples/frames/crowd.png``: 8 LFW photos of different people (fixed seed), each shrunk with the
antialiased bicubic of :func:`iafsr_sdk.faces.resize` so that its face's aligned crop is 12 to 26 px wide,
laid out on a 288×144 grey frame, as a camera far away would see them; and ``examples/frames/portrait.jpg``,
one LFW photo at its own size (a face large enough to be aligned without enhancement). The landmarks of the
crowd's faces, from the LFW cache (``python -m training.prepare``) moved into the frame, go to
``tests/fixtures/frames_crowd_truth.json`` for the tests. LFW is for non-commercial research only.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from iafsr_sdk.detect import face_size
from iafsr_sdk.faces import resize

ROOT = Path(__file__).resolve().parents[1]
FRAMES = ROOT / "examples" / "frames"
TRUTH = ROOT / "tests" / "fixtures" / "frames_crowd_truth.json"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
FRAME_SIZE = (144, 288)  # height, width
FACE_SIZES = (12, 14, 16, 18, 20, 22, 24, 26)  # aligned crop widths, frame pixels
BACKGROUND = 118
SEED = 7

log = logging.getLogger("examples.make_frames")


def read_index(cache: Path) -> tuple[list[str], np.ndarray]:
    lines = [line.split("\t") for line in (cache / "index.tsv").read_text().splitlines()[1:]]
    detected = [fields for fields in lines if fields[2] == "detected"]
    return [fields[1] for fields in detected], np.array([[float(v) for v in fields[5:15]] for fields in detected])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=ROOT / "data" / "cache" / "lfw")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    paths, landmarks = read_index(args.cache)
    people: dict[str, int] = {}
    for row, path in enumerate(paths):
        people.setdefault(path.split("/")[0], row)
    rows = np.random.default_rng(SEED).choice(sorted(people.values()), len(FACE_SIZES) + 1, replace=False)
    images = args.data / "lfw" / "images"

    frame = np.full(FRAME_SIZE + (3,), BACKGROUND, np.uint8)
    truth = []
    columns = len(FACE_SIZES) // 2
    cell_h, cell_w = FRAME_SIZE[0] // 2, FRAME_SIZE[1] // columns
    for index, (row, size) in enumerate(zip(rows, FACE_SIZES)):
        photo = np.asarray(Image.open(images / paths[row]).convert("RGB"))
        points = landmarks[row].reshape(5, 2)
        side = round(photo.shape[1] * size / face_size(points))
        small = resize(photo, side)
        top = (index // columns) * cell_h + (cell_h - side) // 2
        left = (index % columns) * cell_w + (cell_w - side) // 2
        frame[top:top + side, left:left + side] = small
        moved = (points + 0.5) * side / photo.shape[1] - 0.5 + [left, top]
        truth.append({"photo": paths[row], "face_size": size, "landmarks": np.round(moved, 3).tolist()})
    FRAMES.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(FRAMES / "crowd.png", optimize=True)
    TRUTH.write_text(json.dumps({"frame": "examples/frames/crowd.png", "faces": truth}, indent=1) + "\n")
    shutil.copyfile(images / paths[rows[-1]], FRAMES / "portrait.jpg")
    log.info("wrote %s, %s and %s", FRAMES / "crowd.png", FRAMES / "portrait.jpg", TRUTH)


if __name__ == "__main__":
    main()
