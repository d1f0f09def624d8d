"""Aligned face caches written by :mod:`training.prepare`, and the training pool drawn from them."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path(__file__).resolve().parents[1] / "data" / "cache"
VALIDATION_FACES = 500
VALIDATION_SEED = 20200420
MIN_VALID_FRACTION = 0.5


@dataclass
class FaceSet:
    """One prepared set: ``faces`` (N, 128, 128, 3) uint8, ``masks`` (N, 128, 128) uint8, ``index`` rows."""

    faces: np.ndarray
    masks: np.ndarray
    index: list[dict]

    @property
    def paths(self) -> list[str]:
        return [row["path"] for row in self.index]


def load_set(name: str, cache: Path = DEFAULT_CACHE, in_memory: bool = False) -> FaceSet:
    folder = Path(cache) / name
    if not (folder / "DONE").exists():
        raise FileNotFoundError(f"{folder} is not prepared: run python -m training.prepare --sets {name}")
    mode = None if in_memory else "r"
    with open(folder / "index.tsv", newline="") as handle:
        index = list(csv.DictReader(handle, delimiter="\t"))
    return FaceSet(np.load(folder / "faces.npy", mmap_mode=mode), np.load(folder / "masks.npy", mmap_mode=mode), index)


def training_rows(cache: Path = DEFAULT_CACHE, require_filter: bool = True) -> np.ndarray:
    """Rows of the UTKFace cache usable for training: detected, at least half inside the photo, and
    kept by the identity filter (``keep.txt`` from ``python -m training.filter_pool``)."""
    folder = Path(cache) / "utkface"
    pool = load_set("utkface", cache)
    usable = np.array([row["status"] == "detected" and float(row["valid_fraction"]) >= MIN_VALID_FRACTION
                       for row in pool.index])
    keep_file = folder / "keep.txt"
    if keep_file.exists():
        kept = np.zeros(len(usable), bool)
        kept[np.loadtxt(keep_file, dtype=np.int64, ndmin=1)] = True
        usable &= kept
    elif require_filter:
        raise FileNotFoundError(
            f"{keep_file} is missing: run python -m training.filter_pool first, so that no evaluation "
            "identity reaches training")
    return np.flatnonzero(usable)


def split_pool(rows: np.ndarray, validation: int = VALIDATION_FACES) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) rows: a fixed random ``validation`` faces are held out for model selection."""
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(rows))
    validation = min(validation, len(rows) // 5)
    return np.sort(rows[order[validation:]]), np.sort(rows[order[:validation]])
