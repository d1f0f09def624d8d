"""Draw the documentation figures from real aligned LFW faces.

    python -m docs.make_figures [--cache data/cache/lfw] [--model PATH]

- ``docs/template.png``: one aligned 128×128 face, enlarged, with the 5 template points that
  :func:`iafsr_sdk.align` maps a detector's landmarks onto.
- ``docs/before_after.png``: per face, the 16×16 input enlarged with nearest neighbours, the bicubic
  upscaling, the SDK's output and the original 128×128 face. Run it again when new weights are shipped.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from examples.make_samples import FIXTURE_FACES, ROOT, pick_faces
from iafsr_sdk.enhancer import FaceEnhancer
from iafsr_sdk.faces import HR_SIZE, TEMPLATE_128, degrade, resize

log = logging.getLogger("docs.make_figures")

DOCS = ROOT / "docs"
POINT_NAMES = ["eye (image left)", "eye (image right)", "nose tip", "mouth (image left)", "mouth (image right)"]
COLOURS = [(230, 60, 60), (60, 120, 230), (250, 200, 40), (60, 190, 90), (200, 80, 220)]


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_template(face: np.ndarray, path: Path, scale: int = 4) -> None:
    size = HR_SIZE * scale
    legend_height = 150
    canvas = Image.new("RGB", (size, size + legend_height), "white")
    canvas.paste(Image.fromarray(face).resize((size, size), Image.Resampling.BICUBIC), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for (x, y), colour in zip(TEMPLATE_128, COLOURS):
        # Pixel centres at integer coordinates: pixel (x, y) covers [x - 0.5, x + 0.5] before enlarging.
        cx, cy = (x + 0.5) * scale, (y + 0.5) * scale
        draw.ellipse([cx - 7, cy - 7, cx + 7, cy + 7], fill=colour, outline="white", width=2)
    text = font(17)
    draw.text((10, size + 8), "5-point template of the 128x128 crop (x, y in pixels)", fill="black", font=text)
    for row, ((x, y), name, colour) in enumerate(zip(TEMPLATE_128, POINT_NAMES, COLOURS)):
        top = size + 35 + 22 * row
        draw.ellipse([12, top + 3, 26, top + 17], fill=colour)
        draw.text((36, top), f"{name}: ({x:.2f}, {y:.2f})", fill="black", font=text)
    canvas.save(path, optimize=True)
    log.info("wrote %s", path)


def draw_before_after(hr_faces: np.ndarray, sr_faces: np.ndarray, placeholder: bool, path: Path) -> None:
    lr_faces = degrade(hr_faces)
    columns = [
        ("16x16 input", np.stack([Image.fromarray(f).resize((HR_SIZE, HR_SIZE), Image.Resampling.NEAREST)
                                  for f in lr_faces])),
        ("bicubic x8", resize(lr_faces, HR_SIZE)),
        ("iafsr (placeholder)" if placeholder else "iafsr", sr_faces),
        ("original 128x128", hr_faces),
    ]
    gap, header = 6, 30
    width = len(columns) * HR_SIZE + (len(columns) + 1) * gap
    height = header + len(hr_faces) * (HR_SIZE + gap) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for column, (title, faces) in enumerate(columns):
        left = gap + column * (HR_SIZE + gap)
        draw.text((left + 2, 8), title, fill="black", font=font(13))
        for row, face in enumerate(faces):
            canvas.paste(Image.fromarray(np.asarray(face)), (left, header + row * (HR_SIZE + gap)))
    canvas.save(path, optimize=True)
    log.info("wrote %s", path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / "data" / "cache" / "lfw")
    parser.add_argument("--model", type=Path, help="an exported .onnx generator (default: the shipped one)")
    parser.add_argument("--faces", type=int, default=4, help="rows of the before/after figure")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)

    hr_faces, names = pick_faces(args.cache, FIXTURE_FACES)  # the faces of examples/lr come first
    draw_template(hr_faces[0], DOCS / "template.png")
    enhancer = FaceEnhancer(args.model, device="cpu")
    sr_faces = enhancer.enhance(degrade(hr_faces[: args.faces]))
    draw_before_after(hr_faces[: args.faces], sr_faces, enhancer.card.get("placeholder") in (True, "true"),
                      DOCS / "before_after.png")
    log.info("faces: %s", ", ".join(names[: args.faces]))


if __name__ == "__main__":
    main()
