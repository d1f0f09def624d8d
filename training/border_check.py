"""How much the frame the training faces never supervise costs on LFW (SFace LR-HR verification).

    python -m training.border_check --weights weights/iafsr/generator.pt

UTKFace crops reach past the photo at the top and the sides; those pixels are masked out of every loss, so
the generator's output there is unconstrained. This scores the generator with the pixels that fewer than
half of the training faces cover replaced by the bicubic upscaling of the same input; the same generator as
it is has its row in ``results/table1.md`` (``python -m training.table1``).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from training import evaluation as ev
from training.prepare import DEFAULT_DATA, DEFAULT_OUT
from training.table1 import generator_sr

log = logging.getLogger("training.border_check")


def supervised_pixels(cache: Path, every: int = 4) -> np.ndarray:
    """(128, 128) bool: pixels inside the photo for at least half of the UTKFace faces (every ``every``-th)."""
    masks = np.load(Path(cache) / "utkface" / "masks.npy", mmap_mode="r")
    return np.asarray(masks[::every]).astype(np.float32).mean(0) >= 0.5


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    inside = supervised_pixels(args.cache)[None, :, :, None]
    log.info("pixels supervised by at least half of the training faces: %.1f %%", 100 * inside.mean())
    super_resolve = generator_sr(args.weights)

    def frame_from_bicubic(lr_faces: np.ndarray) -> np.ndarray:
        return np.where(inside, super_resolve(lr_faces), ev.bicubic_sr(lr_faces))

    metrics = ev.evaluate_lfw(frame_from_bicubic, ev.load_recognizers(["sface"]), args.cache, args.data)["sface"]
    log.info("frame from bicubic: %s", json.dumps({
        "lfw_accuracy": round(100 * metrics["accuracy"], 2),
        "vr@far=0.01": round(100 * metrics["vr@far=0.01"]["vr"], 2),
        "vr@far=0.001": round(100 * metrics["vr@far=0.001"]["vr"], 2),
        "mean_cosine": round(metrics["gaps"]["mean_cosine"], 4)}))


if __name__ == "__main__":
    main()
