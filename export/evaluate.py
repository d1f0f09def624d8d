"""Identity cost of the exported models: Table I rows of each precision (fp32, fp16, int8) of an ONNX export.

    python -m export.evaluate                                   # the shipped files, all three precisions
    python -m export.evaluate --models my_models/ --precisions fp32 int8 --out results/
    python -m export.evaluate --pixels-only                     # only the pixel differences (minutes)
    python -m export.evaluate --subset 20 --out /tmp/subset     # a quick check of the whole path on a few faces

Each file runs through :class:`iafsr_sdk.FaceEnhancer` on the CPU (uint8 faces in and out, as a product runs
it) and is scored by the project's protocol (:func:`training.table1.evaluate_cached`, which calls
:func:`training.evaluation.evaluate`): LFW LR-HR verification (ACC, VR@FAR 1 % and 0.1 %) and CelebA rank-1
with SFace and dlib. Each row is kept in ``<out>/eval/onnx_<precision>.json`` while the file's sha256 holds.
Beside the rows: the mean and largest absolute difference, in 0..255 levels, of each precision's output to
the fp32 output over the LFW probes (the degraded face of each pair), from the evaluation's own pass: fp32's
outputs of the probes are kept (at most 0.24 GB), the others' compared with them as they come.
``<out>/precision.md`` gets the table.

``--subset N`` copies N matched and N mismatched pairs of two LFW folds and the probes of N CelebA identities
into small caches under ``<out>/subset/`` and evaluates those: a check that the path works, not a result.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from iafsr_sdk.enhancer import CARD_FILE, MODEL_FILES, FaceEnhancer
from iafsr_sdk.faces import degrade
from training import evaluation as ev
from training.prepare import DEFAULT_DATA, DEFAULT_OUT

log = logging.getLogger("export.evaluate")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "iafsr_sdk" / "models"


class ProbeRecorder:
    """``enhancer`` as the evaluation's SR function ((N, 16, 16, 3) uint8 → (N, 128, 128, 3) uint8) that looks
    at its outputs of the LFW probes (keyed by the bytes of the LR face), so that the differences between
    precisions come from the evaluation's own pass. Without ``reference`` (the fp32 recorder) it keeps those
    outputs; with it, only each probe's mean and largest absolute difference to the reference's output, which
    must hold that probe already (:meth:`cover` the reference first)."""

    def __init__(self, enhancer: FaceEnhancer, probe_keys: set[bytes], reference: ProbeRecorder | None = None):
        self.enhancer, self.probe_keys, self.reference = enhancer, probe_keys, reference
        self.outputs: dict[bytes, np.ndarray] = {}
        self.differences: dict[bytes, tuple[float, int]] = {}

    def __call__(self, lr_faces: np.ndarray) -> np.ndarray:
        result = self.enhancer.enhance(lr_faces)
        for face, output in zip(lr_faces, result):
            key = face.tobytes()
            if key not in self.probe_keys:
                continue
            if self.reference is None:
                self.outputs[key] = output
            else:
                difference = np.abs(output.astype(np.int16) - self.reference.outputs[key])
                self.differences[key] = (float(difference.mean()), int(difference.max()))
        return result

    def cover(self, lr_probes: np.ndarray, batch: int = 256) -> None:
        """Run the probes that no evaluation went through (a cached row, ``--pixels-only``)."""
        met = self.outputs if self.reference is None else self.differences
        missing = lr_probes[[face.tobytes() not in met for face in lr_probes]]
        for start in range(0, len(missing), batch):
            self(missing[start:start + batch])


def pixel_differences(recorders: dict[str, ProbeRecorder], lr_probes: np.ndarray) -> dict:
    """Mean and largest absolute difference (0..255) of each precision's uint8 output to fp32's."""
    result = {}
    for name, recorder in recorders.items():
        recorder.cover(lr_probes)  # fp32 comes first: the others compare with its outputs
        if recorder.reference is None:
            continue
        means, largest = zip(*(recorder.differences[face.tobytes()] for face in lr_probes))
        result[name] = {"faces": len(lr_probes), "mean_abs_levels": float(np.mean(means)),
                        "max_abs_levels": max(largest)}
    return result


def make_subset(cache: Path, data: Path, out: Path, count: int) -> tuple[Path, Path]:
    """Small LFW and CelebA caches (and pairs / identity files) holding ``count`` pairs per class of two LFW
    folds and ``count`` CelebA identities; returns their (cache root, data root)."""
    cache_out, data_out = out / "cache", out / "data"
    pairs = ev.read_lfw_pairs(Path(data) / "lfw" / "pairs.txt")
    chosen = [[p for p in pairs if p.fold == fold and p.same == same][:count] for fold in (0, 1) for same in (True, False)]
    lines = [f"2 {count}"]
    for group in chosen:
        for pair in group:
            first, second = pair.first.split("/")[1], pair.second.split("/")[1]
            name1, number1 = first[:-4].rsplit("_", 1)
            name2, number2 = second[:-4].rsplit("_", 1)
            lines.append(f"{name1} {int(number1)} {int(number2)}" if pair.same
                         else f"{name1} {int(number1)} {name2} {int(number2)}")
    (data_out / "lfw").mkdir(parents=True, exist_ok=True)
    (data_out / "lfw" / "pairs.txt").write_text("\n".join(lines) + "\n")
    lfw_paths = {path for group in chosen for pair in group for path in (pair.first, pair.second)}
    _copy_rows(Path(cache) / "lfw", cache_out / "lfw", lfw_paths)

    identity_of = dict(line.split() for line in (Path(data) / "celeba" / "identity.txt").read_text().splitlines()
                       if line.strip())
    paths = ev.read_cache_index(ev.cache_dir(cache, "celeba")).paths
    by_identity: dict[str, list[str]] = {}
    for path in paths:
        by_identity.setdefault(identity_of[path], []).append(path)
    kept = [group for group in by_identity.values() if len(group) >= 2][:count]
    celeba_paths = {path for group in kept for path in group}
    (data_out / "celeba").mkdir(parents=True, exist_ok=True)
    (data_out / "celeba" / "identity.txt").write_text(
        "".join(f"{path} {identity_of[path]}\n" for path in sorted(celeba_paths)))
    _copy_rows(Path(cache) / "celeba", cache_out / "celeba", celeba_paths)
    return cache_out, data_out


def _copy_rows(source: Path, target: Path, paths: set[str]) -> None:
    """A cache folder holding only the rows of ``paths``, renumbered from 0 in their original order."""
    lines = (source / "index.tsv").read_text().splitlines()
    rows = [index for index, line in enumerate(lines[1:]) if line.split("\t")[1] in paths]
    target.mkdir(parents=True, exist_ok=True)
    np.save(target / "faces.npy", np.load(source / "faces.npy", mmap_mode="r")[rows])
    body = ["\t".join([str(new)] + lines[1 + old].split("\t")[1:]) for new, old in enumerate(rows)]
    (target / "index.tsv").write_text("\n".join([lines[0]] + body) + "\n")
    (target / "DONE").write_text("subset\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=MODELS, help="folder of an export (card and ONNX files)")
    parser.add_argument("--precisions", nargs="+", default=list(MODEL_FILES), choices=list(MODEL_FILES))
    parser.add_argument("--cache", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime and torch threads")
    parser.add_argument("--pixels-only", action="store_true", help="only the pixel differences to fp32")
    parser.add_argument("--subset", type=int, metavar="N", help="evaluate N pairs per class of two LFW folds and "
                        "N CelebA identities (a check of the path)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    from training.table1 import evaluate_cached

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cache, data = args.cache, args.data
    if args.subset:
        cache, data = make_subset(cache, data, args.out / "subset", args.subset)
    precisions = list(dict.fromkeys(["fp32", *args.precisions]))
    card = json.loads((args.models / CARD_FILE).read_text())
    hr_probes = ev.lfw_probe_faces(cache, data)
    lr_probes = np.concatenate([degrade(hr_probes[start:start + 256]) for start in range(0, len(hr_probes), 256)])
    del hr_probes
    probe_keys = {face.tobytes() for face in lr_probes}
    recorders: dict[str, ProbeRecorder] = {}
    for p in precisions:
        enhancer = FaceEnhancer(args.models / MODEL_FILES[p], device="cpu", threads=args.threads, precision=p)
        recorders[p] = ProbeRecorder(enhancer, probe_keys, reference=recorders.get("fp32"))
    rows = []
    recognizers = None if args.pixels_only else ev.load_recognizers()
    method = (card.get("metrics") or {}).get("name") or card.get("name", "model")
    for precision, recorder in recorders.items():
        if recognizers and precision in args.precisions:
            sha = hashlib.sha256(recorder.enhancer.model_path.read_bytes()).hexdigest()
            rows.append(evaluate_cached(f"{method}, ONNX {precision}", f"onnx_{precision}", sha, recorder,
                                        recognizers, cache, data, args.out))
        if recorder.reference is None and len(recorders) > 1:
            recorder.cover(lr_probes)  # fp32's outputs of every probe, before the others compare with them
    pixels = pixel_differences(recorders, lr_probes) if len(recorders) > 1 else {}
    for name, difference in pixels.items():
        log.info("%s against fp32 on %d LFW probes: mean %.3f, max %d levels of 255", name, difference["faces"],
                 difference["mean_abs_levels"], difference["max_abs_levels"])
    command = "python -m export.evaluate " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    write_report(rows, pixels, args, command.strip(), time.perf_counter() - started)


def write_report(rows: list[dict], pixels: dict, args: argparse.Namespace, command: str, seconds: float) -> None:
    lines = ["# Identity cost of the exported precisions", "",
             f"`{command}` ({seconds / 60:.0f} min): each ONNX file run by "
             "`FaceEnhancer` on the CPU, uint8 in and out, scored by the Table I protocol "
             "(`results/baselines.md`)." + (f" SUBSET of {args.subset} pairs per class: a check, not a result."
                                           if args.subset else ""), ""]
    if rows:
        lines += [ev.markdown_table(rows).rstrip(), "", "Differences to the fp32 row (points):", "",
                  "| precision | recognizer | LFW ACC. | VR@FAR=1% | VR@FAR=0.1% | CelebA Rank-1 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        reference = rows[0]
        for row in rows[1:]:
            for recognizer in row["recognizers"]:
                a, b = row["lfw"][recognizer], reference["lfw"][recognizer]
                cells = [100 * (a["accuracy"] - b["accuracy"]),
                         100 * (a["vr@far=0.01"]["vr"] - b["vr@far=0.01"]["vr"]),
                         100 * (a["vr@far=0.001"]["vr"] - b["vr@far=0.001"]["vr"]),
                         100 * (row["celeba"][recognizer]["rank1"] - reference["celeba"][recognizer]["rank1"])]
                lines.append(f"| {row['name'].rsplit(' ', 1)[-1]} | {recognizer} | "
                             + " | ".join(f"{value:+.2f}" for value in cells) + " |")
        lines.append("")
    if pixels:
        lines += ["Output against fp32 on the LFW probes (uint8, levels of 255):", "",
                  "| precision | faces | mean abs. difference | max abs. difference |", "| --- | --- | --- | --- |"]
        lines += [f"| {name} | {d['faces']} | {d['mean_abs_levels']:.3f} | {d['max_abs_levels']} |"
                  for name, d in pixels.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.md").write_text("\n".join(lines) + "\n")
    (args.out / "precision.json").write_text(json.dumps({"rows": rows, "pixels": pixels}, indent=1) + "\n")
    log.info("wrote %s", args.out / "precision.md")


if __name__ == "__main__":
    main()
