"""Turn the face photos into aligned 128×128 caches.

    python -m training.prepare [--data ../shared/data] [--out data/cache] [--sets lfw celeba utkface]

For each set, ``<out>/<set>/`` receives ``faces.npy`` (N, 128, 128, 3) uint8 RGB, ``masks.npy`` (N, 128, 128)
uint8 (1 where the pixel came from inside the photo), ``index.tsv`` (one row per photo, in sorted path
order: path, status, detector score, valid fraction, 5 landmarks) and ``DONE`` when complete. Every photo
gets a row: where YuNet finds no face, the set's mean landmarks (relative to the photo size) are used and
the status says ``fallback``; such faces count in evaluation and are left out of training. Work is saved in
chunks under ``parts/``, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from iafsr_sdk.faces import HR_SIZE, align
from training.detection import FaceDetector, pick_face

log = logging.getLogger("training.prepare")

# set name -> (image folder inside the data root, file pattern, detection padding for tight crops)
SETS = {
    "lfw": ("lfw/images", "*/*.jpg", 0.0),
    "celeba": ("celeba/images", "*.jpg", 0.0),
    "utkface": ("utkface/images", "*.jpg", 0.5),
}
CHUNK = 500
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "cache"


def list_photos(data_root: Path, name: str) -> list[str]:
    folder, pattern, _ = SETS[name]
    root = data_root / folder
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}: pass --data pointing at the face data")
    return sorted(str(path.relative_to(root)) for path in root.glob(pattern))


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return image


def detect_chunk(detector: FaceDetector, root: Path, paths: list[str]) -> dict[str, np.ndarray]:
    faces = np.zeros((len(paths), HR_SIZE, HR_SIZE, 3), np.uint8)
    masks = np.zeros((len(paths), HR_SIZE, HR_SIZE), np.uint8)
    landmarks = np.full((len(paths), 5, 2), np.nan)
    relative = np.full((len(paths), 5, 2), np.nan)
    scores = np.zeros(len(paths))
    for row, name in enumerate(paths):
        image_bgr = read_rgb(root / name)
        face = pick_face(detector.detect(image_bgr), image_bgr.shape)
        if face is None:
            continue
        image = image_bgr[:, :, ::-1]
        faces[row], valid = align(image, face.landmarks)
        masks[row] = valid
        landmarks[row] = face.landmarks
        relative[row] = face.landmarks / [image.shape[1], image.shape[0]]
        scores[row] = face.score
    return dict(faces=faces, masks=masks, landmarks=landmarks, relative=relative, scores=scores)


def prepare_set(name: str, data_root: Path, out_root: Path) -> dict:
    out = out_root / name
    if (out / "DONE").exists():
        log.info("%s: already prepared in %s", name, out)
        return json.loads((out / "summary.json").read_text())
    photos = list_photos(data_root, name)
    folder, _, pad = SETS[name]
    root = data_root / folder
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    detector = FaceDetector(pad=pad)
    chunks = [photos[start:start + CHUNK] for start in range(0, len(photos), CHUNK)]
    for number, chunk in enumerate(tqdm(chunks, desc=f"{name}: detect+align", unit="chunk")):
        part = parts / f"{number:04d}.npz"
        if part.exists():
            continue
        arrays = detect_chunk(detector, root, chunk)
        np.savez(parts / f"{number:04d}.tmp.npz", paths=np.array(chunk), **arrays)
        (parts / f"{number:04d}.tmp.npz").rename(part)

    loaded = [np.load(parts / f"{number:04d}.npz") for number in range(len(chunks))]
    landmarks = np.concatenate([part["landmarks"] for part in loaded])
    relative = np.concatenate([part["relative"] for part in loaded])
    scores = np.concatenate([part["scores"] for part in loaded])
    detected = ~np.isnan(landmarks[:, 0, 0])
    mean_relative = relative[detected].mean(0)

    faces = np.lib.format.open_memmap(out / "faces.npy", "w+", np.uint8, (len(photos), HR_SIZE, HR_SIZE, 3))
    masks = np.lib.format.open_memmap(out / "masks.npy", "w+", np.uint8, (len(photos), HR_SIZE, HR_SIZE))
    start = 0
    for part in loaded:
        count = len(part["paths"])
        faces[start:start + count] = part["faces"]
        masks[start:start + count] = part["masks"]
        start += count
    for row in tqdm(np.flatnonzero(~detected), desc=f"{name}: fallback alignment", unit="face"):
        image = read_rgb(root / photos[row])[:, :, ::-1]
        landmarks[row] = mean_relative * [image.shape[1], image.shape[0]]
        faces[row], masks[row] = align(image, landmarks[row])
    faces.flush()
    masks.flush()

    valid_fraction = masks.reshape(len(photos), -1).mean(1)
    with open(out / "index.tsv", "w") as index:
        index.write("row\tpath\tstatus\tscore\tvalid_fraction\t" + "\t".join(
            f"{axis}{point}" for point in range(5) for axis in "xy") + "\n")
        for row, path in enumerate(photos):
            status = "detected" if detected[row] else "fallback"
            coords = "\t".join(f"{value:.2f}" for value in landmarks[row].ravel())
            index.write(f"{row}\t{path}\t{status}\t{scores[row]:.3f}\t{valid_fraction[row]:.4f}\t{coords}\n")
    summary = {
        "set": name,
        "photos": len(photos),
        "detected": int(detected.sum()),
        "fallback": int((~detected).sum()),
        "mean_valid_fraction": float(valid_fraction.mean()),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "DONE").write_text("ok\n")
    shutil.rmtree(parts)
    log.info("%s: %d photos, %d faces detected, %d aligned with the mean landmarks (listed as fallback in %s)",
             name, len(photos), summary["detected"], summary["fallback"], out / "index.tsv")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="face data root (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache root (default: %(default)s)")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["lfw", "celeba", "utkface"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in args.sets:
        prepare_set(name, args.data, args.out)


if __name__ == "__main__":
    main()
