"""Derive the small committed real-face samples from the aligned LFW cache.

    python -m examples.make_samples [--cache data/cache/lfw]

Writes ``examples/lr/<name>.png`` (8 faces, 16×16 RGB, for the README's first command) and
``tests/fixtures/sdk_lfw_lr16.npy`` ((64, 16, 16, 3) uint8 RGB, for the export and SDK tests). Each face is
an aligned 128×128 LFW crop degraded by :func:`iafsr_sdk.faces.degrade`, one photo per person, drawn with
a fixed seed, so the files are the same on every run. LFW is for non-commercial research only.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from iafsr_sdk.faces import degrade

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "sdk_lfw_lr16.npy"
EXAMPLES = ROOT / "examples" / "lr"
FIXTURE_FACES = 64
EXAMPLE_FACES = 8
SEED = 0

log = logging.getLogger("examples.make_samples")


def pick_faces(cache: Path, count: int, seed: int = SEED) -> tuple[np.ndarray, list[str]]:
    """``count`` aligned HR faces of different people and their photo names, drawn with ``seed``."""
    paths = [line.split("\t")[1] for line in (cache / "index.tsv").read_text().splitlines()[1:]]
    first_photo_of_person: dict[str, int] = {}
    for row, path in enumerate(paths):
        first_photo_of_person.setdefault(path.split("/")[0], row)
    rows = np.random.default_rng(seed).choice(sorted(first_photo_of_person.values()), count, replace=False)
    faces = np.load(cache / "faces.npy", mmap_mode="r")
    return np.asarray(faces[rows]), [Path(paths[row]).stem for row in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / "data" / "cache" / "lfw")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    hr_faces, names = pick_faces(args.cache, FIXTURE_FACES)
    lr_faces = degrade(hr_faces)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.save(FIXTURE, lr_faces)
    log.info("wrote %s %s", FIXTURE, lr_faces.shape)

    EXAMPLES.mkdir(parents=True, exist_ok=True)
    for face, name in zip(lr_faces[:EXAMPLE_FACES], names[:EXAMPLE_FACES]):
        Image.fromarray(face).save(EXAMPLES / f"{name}.png", optimize=True)
    log.info("wrote %d faces to %s", EXAMPLE_FACES, EXAMPLES)


if __name__ == "__main__":
    main()
