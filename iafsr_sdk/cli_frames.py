"""``iafsr frames IN OUT``: the faces of camera frames, found, aligned and, where small, enhanced.

IN is an image file or a folder of them (not recursive); OUT is a folder (created if missing). Per frame
``<name>`` it receives ``<name>_faceNN.png`` (128×128, enhanced or, for faces large enough, aligned straight
from the frame), ``<name>_faceNN_lr.png`` (the 16×16 crop that was enhanced), ``<name>.json`` (frame size and
per face: box, landmarks, score, face size, whether it was enhanced, file names) and ``<name>_preview.jpg``
(the frame with the boxes drawn). A frame without faces is not an error: its JSON lists none. Frames that
cannot be read or processed (corrupt, more than ``MAX_FRAME_PIXELS``) are listed at the end and make the exit
status 1; the others are still written. Exit status 2: bad arguments, or OpenCV, the detector, the model or
the device could not be set up.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from .detect import MAX_FRAME_PIXELS, NATIVE_SIZE, FaceDetector, FrameFace, enhance_frame

log = logging.getLogger("iafsr")

FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
PREVIEW_MIN, PREVIEW_MAX = 512, 1600  # longest side of the preview image, in pixels
ENHANCED_COLOUR, NATIVE_COLOUR = (255, 140, 0), (40, 200, 80)


def read_frame(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (grayscale, palette and RGBA converted, EXIF rotation applied);
    refuses images of more than ``MAX_FRAME_PIXELS`` before decoding them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's decompression-bomb and palette warnings: sizes are checked here
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_FRAME_PIXELS:
                    raise ValueError(f"frame is {width}×{height}, more than {MAX_FRAME_PIXELS / 1e6:g} megapixels")
                return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except Image.DecompressionBombError as error:
        raise ValueError(f"frame too large: {error}") from None
    except UnidentifiedImageError:
        raise ValueError("not a readable image") from None
    except OSError as error:
        raise ValueError(f"cannot read image: {error}") from None


def list_frames(source: Path, target: Path) -> list[Path]:
    """The frame files to process; raises ValueError for unusable arguments."""
    if target.exists() and not target.is_dir():
        raise ValueError(f"OUT must be a folder; {target} is a file")
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise ValueError(f"no image files ({', '.join(sorted(FRAME_SUFFIXES))}) in {source}")
        return files
    raise ValueError(f"IN does not exist: {source}")


def output_prefixes(frames: list[Path]) -> list[str]:
    """File name stems for the outputs; frames whose stems collide keep their suffix (``a_jpg``, ``a_png``)."""
    stems = [path.stem for path in frames]
    return [path.name.replace(".", "_") if stems.count(path.stem) > 1 else path.stem for path in frames]


def draw_preview(frame: np.ndarray, faces: list[FrameFace]) -> Image.Image:
    """The frame with each face's box, landmarks and index; resized so its longest side is within
    [PREVIEW_MIN, PREVIEW_MAX] (tiny frames enlarged with nearest neighbours)."""
    height, width = frame.shape[:2]
    longest = max(height, width)
    scale = PREVIEW_MIN / longest if longest < PREVIEW_MIN else min(1.0, PREVIEW_MAX / longest)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC
    image = Image.fromarray(frame).resize(size, resample) if scale != 1 else Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    line = max(1, round(longest * scale / 400))
    for index, face in enumerate(faces):
        colour = ENHANCED_COLOUR if face.enhanced else NATIVE_COLOUR
        x, y, w, h = face.box * scale
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=line)
        for px, py in (face.landmarks + 0.5) * scale:
            draw.ellipse([px - line, py - line, px + line, py + line], fill=colour)
        draw.text((x + line, y - 12 - line if y > 14 else y + h + line), str(index), fill=colour)
    return image


def save_frame_results(out: Path, prefix: str, source: Path, frame: np.ndarray, faces: list[FrameFace]) -> dict:
    """Write the crops, the preview and the JSON of one frame; returns the JSON record."""
    entries = []
    for index, face in enumerate(faces):
        name = f"{prefix}_face{index:02d}"
        Image.fromarray(face.face).save(out / f"{name}.png")
        if face.lr is not None:
            Image.fromarray(face.lr).save(out / f"{name}_lr.png")
        entries.append({
            "box": [round(float(v), 2) for v in face.box],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
            "score": round(face.score, 4),
            "face_size": round(face.size, 2),
            "enhanced": face.enhanced,
            "face": f"{name}.png",
            "lr": f"{name}_lr.png" if face.lr is not None else None,
        })
    draw_preview(frame, faces).save(out / f"{prefix}_preview.jpg", quality=90)
    record = {"frame": str(source), "width": int(frame.shape[1]), "height": int(frame.shape[0]),
              "preview": f"{prefix}_preview.jpg", "faces": entries}
    (out / f"{prefix}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def run_frames(args: argparse.Namespace) -> int:
    from .enhancer import FaceEnhancer

    source, out = Path(args.input), Path(args.output)
    try:
        frames = list_frames(source, out)
    except ValueError as error:
        log.error("%s", error)
        return EXIT_USAGE
    try:
        detector = FaceDetector(min_face=args.min_face, score_threshold=args.score_threshold)
    except (ValueError, OSError, ModuleNotFoundError) as error:
        log.error("cannot set up the face detector: %s", error)
        return EXIT_USAGE
    try:
        enhancer = FaceEnhancer(model=args.model, device=args.device, precision=args.precision)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        log.error("cannot set up the enhancer: %s", error)
        return EXIT_USAGE
    out.mkdir(parents=True, exist_ok=True)

    failures: list[tuple[Path, str]] = []
    counts = {"frames": 0, "faces": 0, "enhanced": 0}
    for path, prefix in tqdm(list(zip(frames, output_prefixes(frames))), unit="frame", desc="frames",
                             disable=args.quiet or None):
        try:
            frame = read_frame(path)
            faces = enhance_frame(frame, enhancer, detector, native_size=args.native_size)
            save_frame_results(out, prefix, path, frame, faces)
        except (ValueError, TypeError, OSError, RuntimeError) as error:
            failures.append((path, str(error)))
            continue
        counts["frames"] += 1
        counts["faces"] += len(faces)
        counts["enhanced"] += sum(face.enhanced for face in faces)

    sys.stdout.write(f"{counts['frames']} of {len(frames)} frames: {counts['faces']} faces, {counts['enhanced']} "
                     f"enhanced, {counts['faces'] - counts['enhanced']} aligned at 128 directly, into {out} "
                     f"({', '.join(enhancer.providers)})\n")
    if failures:
        sys.stderr.write(f"{len(failures)} failed:\n")
        for path, reason in sorted(failures):
            sys.stderr.write(f"  {path}: {reason}\n")
        return EXIT_FAILURES
    return EXIT_OK


def add_frames_command(commands: Any, add_model_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``iafsr frames`` on the CLI's subcommands."""
    frames = commands.add_parser("frames", help="find, align and enhance the faces of camera frames")
    frames.add_argument("input", metavar="IN", help="an image file or a folder of images")
    frames.add_argument("output", metavar="OUT", help="a folder (created if missing)")
    frames.add_argument("--min-face", type=float, default=10,
                        help="smallest face box to look for, in frame pixels (default 10; larger is faster)")
    frames.add_argument("--score-threshold", type=float, default=0.6, help="detector score threshold (default 0.6)")
    frames.add_argument("--native-size", type=float, default=NATIVE_SIZE,
                        help=f"faces whose aligned crop is at least this wide in frame pixels are aligned at 128 "
                             f"without enhancement (default {NATIVE_SIZE}; inf enhances every face)")
    frames.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_model_options(frames)
    frames.set_defaults(run=run_frames)
