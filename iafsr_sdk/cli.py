"""The ``iafsr`` command.

    iafsr enhance IN OUT [--device auto|cpu|cuda] [--batch-size 64] [--model PATH] [--precision fp32|fp16|int8]
    iafsr enhance IN OUT --ray [ADDRESS] [--workers N] ...   (archives on Ray Data: iafsr_sdk.scale)
    iafsr info [--device ...] [--model PATH] [--json]
    iafsr frames IN OUT [--min-face 10] [--native-size 20] [--device ...]   (camera frames: iafsr_sdk.cli_frames)

``enhance`` reads aligned low-resolution faces (PNG or JPEG; IN a file or a folder, not recursive) and writes
128×128 faces under the same names (OUT a file or a folder). Files that cannot be read or enhanced are
listed at the end and make the exit status 1; the others are still written. Exit status 2: bad arguments,
or the model or device could not be set up. OUT may not be IN nor lie inside it: the input is never written.
With ``--ray``, IN is a folder tree or Parquet and the work runs on a Ray actor pool (``docs/scale.md``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .enhancer import MAX_FACE_SIDE, PRECISIONS, FaceEnhancer, shipped_precisions

log = logging.getLogger("iafsr")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2


def _write(text: str, stream: Any = None) -> None:
    (stream or sys.stdout).write(text + "\n")


def read_face(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; refuses images larger than the SDK accepts before decoding."""
    try:
        with Image.open(path) as image:
            if max(image.size) > MAX_FACE_SIDE:
                raise ValueError(f"image is {image.size[0]}×{image.size[1]}, larger than {MAX_FACE_SIDE} pixels")
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError("not a readable PNG or JPEG image") from None
    except OSError as error:
        raise ValueError(f"cannot read image: {error}") from None


def write_face(path: Path, face: np.ndarray) -> None:
    options = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(face).save(path, **options)


def _plan(source: Path, target: Path) -> list[tuple[Path, Path]]:
    """(input, output) file pairs; raises ValueError for unusable arguments or an output that is an input."""
    from .scale import check_destination

    if source.is_file():
        if target.is_dir() or not target.suffix:
            target = target / source.name
        elif target.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"OUT must be a folder or a .png / .jpg file, got {target}")
        check_destination(source, target)
        return [(source, target)]
    if source.is_dir():
        if target.exists() and not target.is_dir():
            raise ValueError(f"IN is a folder, so OUT must be a folder; {target} is a file")
        check_destination(source, target)
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no .png or .jpg files in {source}")
        return [(path, target / path.name) for path in files]
    raise ValueError(f"IN does not exist: {source}")


def _enhance_chunk(enhancer: FaceEnhancer, chunk: list[tuple[Path, Path]],
                   failures: list[tuple[Path, str]]) -> int:
    """Read, enhance and write one chunk of files; returns how many were written."""
    faces, targets = [], []
    for source, target in chunk:
        try:
            faces.append(read_face(source))
            targets.append((source, target))
        except ValueError as error:
            failures.append((source, str(error)))
    if not faces:
        return 0
    try:
        results = list(enhancer.enhance(faces))
    except (ValueError, TypeError):
        # One bad face spoils the batch: redo them one by one to name it and keep the others.
        results = []
        for face, (source, _) in zip(faces, targets):
            try:
                results.append(enhancer.enhance(face))
            except (ValueError, TypeError) as error:
                failures.append((source, str(error)))
                results.append(None)
    written = 0
    for result, (source, target) in zip(results, targets):
        if result is None:
            continue
        try:
            write_face(target, result)
            written += 1
        except (OSError, ValueError) as error:
            failures.append((source, f"cannot write {target}: {error}"))
    return written


def run_enhance(args: argparse.Namespace) -> int:
    if args.ray is not None:
        from .scale import run_cli

        return run_cli(args)
    if args.workers is not None:
        log.error("--workers needs --ray")
        return EXIT_USAGE
    args.batch_size = args.batch_size or 64
    try:
        pairs = _plan(Path(args.input), Path(args.output))
    except ValueError as error:
        log.error("%s", error)
        return EXIT_USAGE
    try:
        enhancer = FaceEnhancer(model=args.model, device=args.device, batch_size=args.batch_size,
                                precision=args.precision)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        log.error("cannot set up the enhancer: %s", error)
        return EXIT_USAGE
    for folder in {target.parent for _, target in pairs}:
        folder.mkdir(parents=True, exist_ok=True)

    failures: list[tuple[Path, str]] = []
    written = 0
    with tqdm(total=len(pairs), unit="face", desc="enhance", disable=args.quiet or None) as progress:
        for start in range(0, len(pairs), args.batch_size):
            chunk = pairs[start:start + args.batch_size]
            written += _enhance_chunk(enhancer, chunk, failures)
            progress.update(len(chunk))

    _write(f"enhanced {written} of {len(pairs)} faces into {args.output} ({', '.join(enhancer.providers)})")
    if failures:
        _write(f"{len(failures)} failed:", sys.stderr)
        for source, reason in sorted(failures):
            _write(f"  {source}: {reason}", sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK


def run_info(args: argparse.Namespace) -> int:
    import onnxruntime

    from ._ext import build_info, cuda_status

    info: dict[str, Any] = {"onnxruntime": onnxruntime.__version__,
                            "available_providers": onnxruntime.get_available_providers(),
                            "extension": build_info(), "extension_cuda": cuda_status(),
                            "shipped_precisions": shipped_precisions()}
    status = EXIT_OK
    try:
        enhancer = FaceEnhancer(model=args.model, device=args.device, precision=args.precision)
        info["model"] = str(enhancer.model_path)
        info["precision"] = enhancer.precision
        info["providers_in_use"] = enhancer.providers
        info["model_card"] = enhancer.card
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        info["model"] = f"cannot set up the enhancer: {error}"
        status = EXIT_USAGE
    if args.json:
        _write(json.dumps(info, indent=2, ensure_ascii=False, default=str))
        return status
    for key, value in info.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, indent=2, ensure_ascii=False, default=str)
        _write(f"{key}: {value}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iafsr", description="Identity-aware face super-resolution, 16×16 → 128×128.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the SDK decides")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_model_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
        command.add_argument("--model", help="an exported .onnx generator instead of the shipped one")
        command.add_argument("--precision", choices=list(PRECISIONS),
                             help="which shipped model (default fp32; int8 is the fast CPU path)")

    enhance = commands.add_parser("enhance", help="super-resolve aligned low-resolution face images")
    enhance.add_argument("input", metavar="IN", help="an image file or a folder of images (.png, .jpg)")
    enhance.add_argument("output", metavar="OUT", help="an image file or a folder (created if missing)")
    enhance.add_argument("--batch-size", type=int,
                         help="faces per inference call (default 64; with --ray 64 per CPU actor, 256 per GPU)")
    enhance.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                         help="run on Ray Data: a local Ray instance, or the cluster at ADDRESS (e.g. auto); "
                              "IN a folder tree or .parquet, OUT a folder or *.parquet (pip install iafsr[scale])")
    enhance.add_argument("--workers", type=int, help="with --ray: actors (default one per CPU or GPU)")
    enhance.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_model_options(enhance)
    enhance.set_defaults(run=run_enhance)

    info = commands.add_parser("info", help="build, providers and the model card")
    info.add_argument("--json", action="store_true", help="print JSON")
    add_model_options(info)
    info.set_defaults(run=run_info)

    from .cli_frames import add_frames_command

    add_frames_command(commands, add_model_options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        log.error("--batch-size must be at least 1, got %d", args.batch_size)
        return EXIT_USAGE
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
