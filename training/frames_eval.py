"""LFW verification from camera frames: faces found, aligned and enhanced at low resolution.

    python -m training.frames_eval [--sizes 16 24 32] [--pairs N] [--device cpu] [--out results]

Table I aligns every LFW face on the 250×250 photo and degrades the aligned crop; a camera far away never
hands anyone that. Here the LR side of each pair (the same faces as Table I, ``evaluation.LR_SIDE_SEED``) is
made by shrinking the whole photo with the antialiased bicubic of :func:`iafsr_sdk.faces.resize` so that the
face's aligned crop is ``size`` px wide (16: the geometry of the aligned protocol), and that frame goes through
:func:`iafsr_sdk.detect.enhance_frame`: YuNet on the small frame, the face nearest the centre kept
(:func:`training.detection.pick_face`, as the caches were made), its 16×16 crop warped straight from the frame,
enhanced by the shipped model. Where no face is found the crop falls back to the set's mean landmarks (the
caches' rule for HR). The HR side is the aligned HR face, as in Table I. Rows per size:

- Bicubic: the frame's 16×16 crop, resized to 128 with the same bicubic.
- IAFSR: the shipped model on that crop (what ``enhance_frame`` returns).
- IAFSR, true landmarks: the same from a crop at the HR landmarks scaled down: what a perfect detector gives.
- No enhancement: the face aligned at 128 straight from the frame (``enhance_frame``'s path for large faces).

Also: the detection rate (a face whose landmarks lie within half the eye distance of the truth), and the
landmark error against the HR landmarks scaled down, in frame pixels and in % of the crop side.
Writes ``<out>/frames.md``, ``frames.json`` and ``frames.png`` (frames with the box found, crops before and
after). ``--pairs N`` evaluates N of the 6,000 pairs, spread over the folds, into ``runs/frames_eval/`` unless
``--out`` is given (a check of the script, not a result).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from iafsr_sdk.detect import FaceDetector, crop_face, enhance_frame, face_size
from iafsr_sdk.enhancer import FaceEnhancer
from iafsr_sdk.faces import HR_SIZE, LR_SIZE, resize
from training import evaluation as ev
from training.detection import pick_face
from training.prepare import DEFAULT_DATA, DEFAULT_OUT

log = logging.getLogger("training.frames_eval")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "results"
SMOKE_RESULTS = ROOT / "runs" / "frames_eval"
METHODS = ("bicubic", "iafsr", "iafsr_true_landmarks", "native")
METHOD_TITLES = {"bicubic": "Bicubic", "iafsr": "IAFSR (shipped)", "iafsr_true_landmarks": "IAFSR, true landmarks",
                 "native": "No enhancement (aligned at 128)"}
PROTOCOL = """\
The LR side of each pair (the same faces as Table I: `numpy.random.default_rng(2020)`) is made by shrinking the
whole 250×250 LFW photo (antialiased bicubic, Pillow's rule) so that the face's aligned crop is N px wide —
at 16 px the geometry of Table I, where the aligned 128×128 crop is degraded to 16×16. That frame goes through
`iafsr_sdk.detect.enhance_frame`: YuNet (the detector input upscaled for small faces), the face nearest the
centre kept (as the caches were made), its 16×16 crop warped straight from the frame with the antialiased
bicubic of `degrade`, enhanced by the shipped model. Where no face is found, the crop falls back to the mean
LFW landmarks (the caches' rule). The HR side stays the aligned HR face, as in Table I. Rows per size:

- **Bicubic**: the frame's 16×16 crop resized to 128 with the same bicubic.
- **IAFSR (shipped)**: the shipped model on that crop — what `enhance_frame` returns for small faces.
- **IAFSR, true landmarks**: the same from a crop at the HR landmarks scaled down (a perfect detector).
- **No enhancement (aligned at 128)**: the face aligned at 128 straight from the frame — `enhance_frame`'s path
  for faces of at least `NATIVE_SIZE` px.

Detection: *found* when the kept face's landmarks are within half the eye distance of the truth (the HR
landmarks scaled down to the frame), *other face* when a face elsewhere was kept; the landmark error is the mean
distance over the 5 points of the found faces.\
"""
CHUNK = 256
PICTURE_FACES = 3
PICTURE_SEED = 5


def pair_subset(count: int, wanted: int | None) -> np.ndarray:
    """Indices of ``wanted`` pairs spread evenly over the ordered list (all folds, matched and mismatched)."""
    if wanted is None or wanted >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, wanted).round().astype(int))


def shrink_photo(photo: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The photo shrunk so that its face's aligned crop is ``size`` px wide, and the landmarks moved with it."""
    side = max(2, round(photo.shape[1] * size / face_size(landmarks)))
    height = max(2, round(photo.shape[0] * side / photo.shape[1]))
    scale = np.array([side / photo.shape[1], height / photo.shape[0]])
    return resize(photo, (height, side)), (landmarks + 0.5) * scale - 0.5


def process_frame(frame: np.ndarray, truth: np.ndarray, fallback: np.ndarray, enhancer: FaceEnhancer,
                  detector: FaceDetector) -> dict:
    """One frame through ``enhance_frame``: the kept face's crops and its detection record."""
    faces = enhance_frame(frame, enhancer, detector, native_size=None)
    face = pick_face(faces, frame.shape)
    eye_distance = float(np.linalg.norm(truth[1] - truth[0]))
    if face is None:
        landmarks = fallback
        lr = crop_face(frame, landmarks, LR_SIZE)[0]
        sr = enhancer.enhance(lr)
        record = {"status": "missed", "error": None, "box": None}
    else:
        landmarks, lr, sr = face.landmarks, face.lr, face.face
        error = float(np.linalg.norm(landmarks - truth, axis=1).mean())
        record = {"status": "found" if error < 0.5 * eye_distance else "other face", "error": error,
                  "box": face.box.tolist()}
    record.update(faces=len(faces), size=face_size(truth), lr=lr, sr=sr,
                  native=crop_face(frame, landmarks, HR_SIZE)[0], lr_true=crop_face(frame, truth, LR_SIZE)[0])
    return record


def embed_batches(embed, faces: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([embed(faces[start:start + batch_size]) for start in range(0, len(faces), batch_size)])


def hr_side_features(folder: Path, recognizers: dict, rows: np.ndarray, everything: bool,
                     batch_size: int) -> dict[str, np.ndarray]:
    """HR features indexed by cache row: the cached file where there is one (made for a full run), else only
    ``rows`` (a subset run), the other rows zero."""
    features = {}
    for name, embed in recognizers.items():
        if everything or ev.hr_features_cached(folder, name, embed):
            features[name] = ev.hr_features(folder, name, embed, batch_size)
            continue
        count = len(ev.read_cache_index(folder).paths)
        features[name] = np.zeros((count, 128), np.float32)
        features[name][rows] = embed_batches(embed, ev.load_faces(folder, rows), batch_size)
    return features


def detection_summary(records: list[dict]) -> dict:
    status = [record["status"] for record in records]
    errors = np.array([record["error"] for record in records if record["status"] == "found"])
    relative = np.array([100 * record["error"] / record["size"] for record in records if record["status"] == "found"])
    summary = {"frames": len(records), "found": status.count("found"), "other_face": status.count("other face"),
               "missed": status.count("missed"), "detection_rate": status.count("found") / max(1, len(records)),
               "mean_frame_side": float(np.mean([record["frame_side"] for record in records]))}
    if len(errors):
        summary.update(error_px_mean=float(errors.mean()), error_px_median=float(np.median(errors)),
                       error_px_p90=float(np.percentile(errors, 90)), error_pct_mean=float(relative.mean()))
    return summary


def evaluate_size(size: int, lr_rows: np.ndarray, paths: list[str], landmarks: np.ndarray, images: Path,
                  mean_relative: np.ndarray, enhancer: FaceEnhancer, detector: FaceDetector,
                  recognizers: dict, batch_size: int, picture_rows: set[int]) -> tuple[dict, dict, list[dict]]:
    """Features of every method for the LR rows at one face size, the detection records, picture material."""
    features = {method: {name: np.zeros((len(lr_rows), 128), np.float32) for name in recognizers}
                for method in METHODS}
    records, picture = [], []
    for start in tqdm(range(0, len(lr_rows), CHUNK), desc=f"{size} px", unit="chunk"):
        chunk = lr_rows[start:start + CHUNK]
        crops: dict[str, list[np.ndarray]] = {"lr": [], "iafsr": [], "native": [], "lr_true": []}
        for row in chunk:
            photo = np.asarray(Image.open(images / paths[row]).convert("RGB"))
            frame, truth = shrink_photo(photo, landmarks[row], size)
            fallback = (mean_relative * [photo.shape[1], photo.shape[0]] + 0.5) * (
                np.array([frame.shape[1], frame.shape[0]]) / [photo.shape[1], photo.shape[0]]) - 0.5
            record = process_frame(frame, truth, fallback, enhancer, detector)
            for key, value in (("lr", record.pop("lr")), ("iafsr", record.pop("sr")),
                               ("native", record.pop("native")), ("lr_true", record.pop("lr_true"))):
                crops[key].append(value)
            record.update(row=int(row), frame_side=int(frame.shape[1]))
            records.append(record)
            if row in picture_rows:
                picture.append({"row": int(row), "frame": frame, "box": record["box"], "lr": crops["lr"][-1],
                                "bicubic": resize(crops["lr"][-1], HR_SIZE), "iafsr": crops["iafsr"][-1],
                                "native": crops["native"][-1]})
        lr = np.stack(crops["lr"])
        made = {"bicubic": resize(lr, HR_SIZE), "iafsr": np.stack(crops["iafsr"]),
                "iafsr_true_landmarks": enhancer.enhance(np.stack(crops["lr_true"])),
                "native": np.stack(crops["native"])}
        for method, faces in made.items():
            for name, embed in recognizers.items():
                features[method][name][start:start + len(chunk)] = embed_batches(embed, faces, batch_size)
    return features, detection_summary(records), picture


def reference_rows() -> dict[str, dict]:
    """Table I's aligned-at-HR rows (full 6,000 pairs): HR-HR, Bicubic and the shipped model."""
    shipped_card = json.loads((ROOT / "iafsr_sdk" / "models" / "iafsr_generator.json").read_text())
    method = shipped_card.get("training", {}).get("config", {}).get("method", "")
    rows = {}
    for key, name in (("HR-HR", "hr_hr"), ("Bicubic", "bicubic"), ("IAFSR (shipped)", method)):
        path = DEFAULT_RESULTS / "eval" / f"{name}.json"
        if path.exists():
            rows[key] = json.loads(path.read_text()).get("lfw", {})
        elif key == "IAFSR (shipped)":
            rows[key] = shipped_card.get("metrics", {}).get("lfw", {})
    return rows


def metric_cells(metrics: dict) -> list[str]:
    return [f"{100 * metrics['accuracy']:.2f} ± {100 * metrics['accuracy_std']:.2f}",
            f"{100 * metrics['vr@far=0.01']['vr']:.2f}", f"{100 * metrics['vr@far=0.001']['vr']:.2f}"]


def draw_picture(picture: dict[int, list[dict]], hr_faces: dict[int, np.ndarray], path: Path) -> None:
    """Per size and face: the frame with the box found (enlarged), the 16×16 crop (enlarged), bicubic,
    IAFSR, no enhancement, and the HR face."""
    cell, label_h = HR_SIZE, 14
    columns = ["frame, box found", "16x16 crop", "bicubic", "IAFSR", "no enhancement", "HR (aligned)"]
    rows = [(size, item) for size, items in picture.items() for item in items]
    canvas = Image.new("RGB", (cell * len(columns), label_h + (cell + label_h) * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(columns):
        draw.text((column * cell + 3, 1), title, fill=(0, 0, 0))
    for index, (size, item) in enumerate(rows):
        top = label_h + index * (cell + label_h)
        frame = item["frame"]
        scale = cell / max(frame.shape[:2])
        enlarged = Image.fromarray(frame).resize((round(frame.shape[1] * scale), round(frame.shape[0] * scale)),
                                                 Image.Resampling.NEAREST)
        if item["box"] is not None:
            x, y, w, h = np.array(item["box"]) * scale
            ImageDraw.Draw(enlarged).rectangle([x, y, x + w, y + h], outline=(255, 140, 0), width=2)
        tiles = [enlarged, Image.fromarray(item["lr"]).resize((cell, cell), Image.Resampling.NEAREST)]
        tiles += [Image.fromarray(item[key]) for key in ("bicubic", "iafsr", "native")]
        tiles.append(Image.fromarray(hr_faces[item["row"]]))
        for column, tile in enumerate(tiles):
            canvas.paste(tile, (column * cell, top))
        draw.text((3, top + cell), f"{size} px face, frame {frame.shape[1]}x{frame.shape[0]}", fill=(0, 0, 0))
    canvas.save(path, optimize=True)


def write_report(report: dict, path: Path) -> None:
    lines = ["# Faces from camera frames: LFW verification with detection and alignment at low resolution", "",
             f"`{report['command']}` — {report['pairs']} pairs ({report['lr_faces']} LR-side faces), "
             f"{report['seconds'] / 60:.0f} min on {report['machine']}.", ""]
    if report["pairs"] < 6000:
        lines += [f"**A check of the script on {report['pairs']} of the 6,000 pairs, not a result.**", ""]
    lines += [PROTOCOL, "", "## Detection at low resolution", "",
              "| face (crop px) | mean frame side (px) | found | other face | missed "
              "| landmark error, px (mean / median / 90 %) | error, % of crop |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for size, entry in report["sizes"].items():
        d = entry["detection"]
        errors = (f"{d['error_px_mean']:.2f} / {d['error_px_median']:.2f} / {d['error_px_p90']:.2f}"
                  if "error_px_mean" in d else "–")
        percent = f"{d['error_pct_mean']:.1f}" if "error_pct_mean" in d else "–"
        lines.append(f"| {size} | {d['mean_frame_side']:.0f} | {100 * d['detection_rate']:.2f} % | {d['other_face']} | "
                     f"{d['missed']} | {errors} | {percent} |")
    lines += ["", "## LFW verification (LR side from frames, HR side aligned at HR)", "",
              "| Recognizer | Setting | Method | LFW ACC. | VR@FAR=1% | VR@FAR=0.1% |",
              "| --- | --- | --- | --- | --- | --- |"]
    for recognizer in report["recognizers"]:
        for name, lfw in report["table1"].items():
            if recognizer in lfw:
                lines.append(f"| {recognizer} | Table I, aligned at HR then degraded | {name} | "
                             + " | ".join(metric_cells(lfw[recognizer])) + " |")
        for size, entry in report["sizes"].items():
            for method in METHODS:
                lines.append(f"| {recognizer} | frames, {size} px faces | {METHOD_TITLES[method]} | "
                             + " | ".join(metric_cells(entry["metrics"][method][recognizer])) + " |")
    lines += ["", "## What alignment at low resolution costs", ""] + report["notes"] + [
        "", "`frames.png`: per face size, LFW frames with the box found (enlarged), the 16×16 crop, bicubic, "
        "IAFSR, no enhancement and the HR face.", ""]
    path.write_text("\n".join(lines))


def closing_notes(report: dict) -> list[str]:
    """At 16 px, the frames rows against Table I's aligned-at-HR rows of the same method, in points; and the
    share of that cost that the landmarks explain."""
    entry, reference = report["sizes"].get("16"), report["table1"]
    if entry is None:
        return ["- No 16 px run: nothing to compare with Table I."]
    notes = []
    for recognizer in report["recognizers"]:
        parts = []
        for method, reference_name in (("iafsr", "IAFSR (shipped)"), ("bicubic", "Bicubic")):
            if recognizer in reference.get(reference_name, {}):
                ours, theirs = entry["metrics"][method][recognizer], reference[reference_name][recognizer]
                deltas = [100 * (ours[key]["vr"] - theirs[key]["vr"]) for key in ("vr@far=0.01", "vr@far=0.001")]
                parts.append(f"{METHOD_TITLES[method]} {100 * (ours['accuracy'] - theirs['accuracy']):+.2f} "
                             f"(VR@1 % {deltas[0]:+.2f}, VR@0.1 % {deltas[1]:+.2f})")
        detected = entry["metrics"]["iafsr"][recognizer]
        perfect = entry["metrics"]["iafsr_true_landmarks"][recognizer]
        notes.append(f"- {recognizer}: 16 px faces from frames against Table I (aligned at HR, then degraded), "
                     f"accuracy in points: " + "; ".join(parts) + f". With the true landmarks instead of YuNet's, "
                     f"IAFSR's accuracy moves by {100 * (perfect['accuracy'] - detected['accuracy']):+.2f}: the part "
                     f"of the cost due to landmark error; the rest comes from the frame's resampling and misses.")
    return notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=DEFAULT_OUT, help="aligned caches (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="face data root (default: %(default)s)")
    parser.add_argument("--out", type=Path, help=f"results folder (default: {DEFAULT_RESULTS}, or {SMOKE_RESULTS} "
                                                 "with --pairs)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32], help="face sizes (aligned crop px)")
    parser.add_argument("--pairs", type=int, help="evaluate only this many pairs, spread over the folds")
    parser.add_argument("--device", default="auto", help="FaceEnhancer device (default auto)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for the recognizers")
    parser.add_argument("--batch-size", type=int, default=ev.BATCH_SIZE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.pairs is not None and args.pairs < 20:
        parser.error("--pairs must be at least 20 (every fold needs pairs)")
    out = args.out or (SMOKE_RESULTS if args.pairs else DEFAULT_RESULTS)
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    folder = ev.cache_dir(args.cache, "lfw")
    index = ev.read_cache_index(folder)
    pairs = ev.read_lfw_pairs(Path(args.data) / "lfw" / "pairs.txt")
    all_rows = ev.pair_rows(pairs, index.paths)
    side = ev.choose_lr_side(len(pairs))  # the same LR faces as Table I
    chosen = pair_subset(len(pairs), args.pairs)
    rows, side = all_rows[chosen], side[chosen]
    same = np.array([pairs[i].same for i in chosen])
    folds = np.array([pairs[i].fold for i in chosen])
    probe_rows = rows[np.arange(len(rows)), side]
    other_rows = rows[np.arange(len(rows)), 1 - side]
    lr_rows = np.unique(probe_rows)
    position = {int(row): i for i, row in enumerate(lr_rows)}
    probe_positions = np.array([position[int(row)] for row in probe_rows])
    log.info("%d pairs, %d LR-side faces, sizes %s", len(rows), len(lr_rows), args.sizes)

    recognizers = ev.load_recognizers()
    hr = hr_side_features(folder, recognizers, np.unique(other_rows), len(chosen) == len(pairs), args.batch_size)
    enhancer = FaceEnhancer(device=args.device)
    detector = FaceDetector()
    relative = index.landmarks[index.detected] / 250.0  # LFW photos are 250×250
    mean_relative = relative.mean(0)
    images = Path(args.data) / "lfw" / "images"
    picture_rows = set(np.random.default_rng(PICTURE_SEED).choice(lr_rows, PICTURE_FACES, replace=False).tolist())

    report: dict = {"command": "python -m training.frames_eval" + "".join(
                        f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
                    "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs (shared), "
                               f"torch {torch.__version__} with {args.threads} threads, enhancer on "
                               f"{', '.join(enhancer.providers)}",
                    "pairs": len(rows), "lr_faces": len(lr_rows), "recognizers": list(recognizers),
                    "detector": repr(detector), "table1": reference_rows(), "sizes": {}}
    picture = {}
    for size in args.sizes:
        features, detection, picture[size] = evaluate_size(size, lr_rows, index.paths, index.landmarks, images,
                                                           mean_relative, enhancer, detector, recognizers,
                                                           args.batch_size, picture_rows)
        metrics = {method: {name: ev.verification_metrics(
                       ev.cosine_rows(features[method][name][probe_positions], hr[name][other_rows]), same, folds)
                   for name in recognizers} for method in METHODS}
        report["sizes"][str(size)] = {"detection": detection, "metrics": metrics}
        accuracy = {method: {name: round(m["accuracy"], 4) for name, m in by_name.items()}
                    for method, by_name in metrics.items()}
        log.info("%d px: detection %s; accuracy %s", size, detection, accuracy)
    report["seconds"] = time.perf_counter() - started
    report["notes"] = closing_notes(report)

    out.mkdir(parents=True, exist_ok=True)
    (out / "frames.json").write_text(json.dumps(report, indent=1) + "\n")
    write_report(report, out / "frames.md")
    hr_faces = dict(zip(sorted(picture_rows), ev.load_faces(folder, np.array(sorted(picture_rows)))))
    draw_picture(picture, hr_faces, out / "frames.png")
    log.info("wrote %s, %s and %s", out / "frames.md", out / "frames.json", out / "frames.png")


if __name__ == "__main__":
    main()
