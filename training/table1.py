"""The paper's Table I and Fig. 5 for our setting, a picture grid, and the learning curves.

    python -m training.table1                      # from the committed weights/<method>/generator.pt
    python -m training.table1 --learning-curve     # also LFW accuracy of the snapshots in runs/<method>/

Writes ``results/table1.md`` and ``results/table1.json`` (rows HR-HR, Bicubic and every method; columns LFW
ACC / VR@1 % / VR@0.1 % and CelebA rank-1 for SFace, the training F, and dlib, the held-out judge),
``results/fig5_gaps.png`` (mean angle and magnitude gap between F(HR) and F(SR) per method, over the LFW
faces degraded in the verification protocol), ``results/grid.png`` (LR, Bicubic, the IAFSR rows, HR for a few LFW
faces; archived weights are read back from the history for it) and, with ``--learning-curve``,
``results/learning_curve.md`` / ``.png``. Each method's evaluation is kept in ``results/eval/<method>.json``
with the sha256 of its weights, and reused while the weights are unchanged. Rows
whose weights left the working tree (archived in ``results/weights.json``) keep their cached scores; to score
one again, bring its weights back with ``python -m training.weights restore NAME``.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import torch

from iafsr_sdk.faces import HR_SIZE, degrade
from training import evaluation as ev
from training.models import load_generator, sha256_of
from training.prepare import DEFAULT_DATA, DEFAULT_OUT
from training.weights import read_archive, restore, restore_command

log = logging.getLogger("training.table1")

ROOT = Path(__file__).resolve().parents[1]
# (row title, folder under weights/ and runs/), in the paper's order, then the variants outside the paper
METHODS = (
    ("SR-net", "srnet"),
    ("SRGAN", "srgan"),
    ("SR+Ou", "sr_ou"),
    ("SR+Angle", "sr_angle"),
    ("IAFSR", "iafsr"),
    ("SR-net, edge shift", "srnet_shift"),
    ("SRGAN, edge shift", "srgan_shift"),
    ("SR+Ou, edge shift", "sr_ou_shift"),
    ("SR+Angle, edge shift", "sr_angle_shift"),
    ("IAFSR, edge shift", "iafsr_shift"),
    ("SR-net, edge shift, long stage 1", "srnet_shift_long"),
    ("IAFSR, edge shift, long stage 1", "iafsr_shift_long"),
    ("IAFSR, edge shift, long stage 1, β1 = 1000", "iafsr_balanced"),
    ("IAFSR, edge shift, long stage 1, β1 = 1000, 6 epochs of stage 2", "iafsr_balanced_long"),
    ("IAFSR, edge shift, long stage 1, β1 = 1000, 6 + 6 epochs of stage 2", "iafsr_balanced_longer"),
)
GRID_FACES = 6
# The picture grid's methods (the paper's IAFSR, its edge-shift and long-stage-1 variants, the β1 = 1000 runs with
# the shipped one last), archived weights read back from the history for it.
GRID_METHODS = {"iafsr": "IAFSR (paper)", "iafsr_shift": "edge shift", "iafsr_shift_long": "long stage 1",
                "iafsr_balanced": "b1=1000", "iafsr_balanced_long": "6 epochs",
                "iafsr_balanced_longer": "6+6 ep. (shipped)"}


def generator_sr(path: Path, batch_size: int = 128) -> ev.SRFunction:
    """The generator in ``path`` as an SR function on uint8 faces, with the SDK's uint8 rounding."""
    generator, _ = load_generator(path)
    generator = generator.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def super_resolve(lr_faces: np.ndarray) -> np.ndarray:
        outputs = []
        for start in range(0, len(lr_faces), batch_size):
            lr = torch.from_numpy(np.ascontiguousarray(lr_faces[start:start + batch_size])).permute(0, 3, 1, 2)
            sr = generator(lr.float().div(255).contiguous(memory_format=torch.channels_last))
            outputs.append((sr.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return np.concatenate(outputs)

    return super_resolve


def evaluate_cached(name: str, key: str, fingerprint: str, sr_fn: ev.SRFunction | None, recognizers: dict,
                    cache: Path, data: Path, out: Path, protocols: tuple[str, ...] = ("lfw", "celeba")) -> dict:
    """``ev.evaluate`` of one row, with the PSNR and SSIM of its LFW faces, kept in ``<out>/eval/<key>.json``
    while ``fingerprint`` holds."""
    path = out / "eval" / f"{key}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if (saved.get("fingerprint") == fingerprint and saved.get("recognizers") == list(recognizers)
                and all(protocol in saved for protocol in protocols)):
            if sr_fn is None or "image_quality" in saved:
                log.info("%s: reusing %s", name, path)
                return saved
            saved["image_quality"] = ev.image_quality(sr_fn, cache, data)
            path.write_text(json.dumps(saved, indent=1) + "\n")
            return saved
    result = ev.evaluate(sr_fn, name, recognizers, protocols=protocols, cache_root=cache, data_root=data)
    if sr_fn is not None and "image_quality" not in result:
        result["image_quality"] = ev.image_quality(sr_fn, cache, data)
    result["fingerprint"] = fingerprint
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def plot_gaps(gaps: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(gaps)
    recognizers = list(next(iter(gaps.values())))
    figure, axes = plt.subplots(len(recognizers), 2, figsize=(12, 3.6 * len(recognizers)), squeeze=False)
    for row, recognizer in enumerate(recognizers):
        for column, (key, label) in enumerate((("mean_magnitude_gap", "mean |‖F(HR)‖ − ‖F(SR)‖|"),
                                               ("mean_angle_deg", "mean angle F(HR), F(SR) (°)"))):
            axis = axes[row, column]
            values = [gaps[name][recognizer][key] for name in names]
            axis.bar(range(len(names)), values, color="tab:blue")
            axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            axis.set_ylabel(label)
            axis.set_title(f"{recognizer}", loc="left")
            for index, value in enumerate(values):
                axis.text(index, value, f"{value:.3g}", ha="center", va="bottom", fontsize=7)
    figure.suptitle("Fig. 5: feature gaps between HR and super-resolved faces (the degraded LFW faces, 16×16 input)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def archived_sr(key: str) -> ev.SRFunction | None:
    """The archived weights of ``key`` read back from the history (sha256-checked) as an SR function; None
    with a warning where the history lacks them (a shallow clone)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        try:
            return generator_sr(restore(key, out=Path(folder) / "generator.pt"))
        except RuntimeError as error:
            log.warning("%s left out of the picture grid: %s", key, error)
            return None


def picture_grid(sr_functions: dict, cache: Path, path: Path) -> None:
    from PIL import Image, ImageDraw

    all_faces = np.load(Path(cache) / "lfw" / "faces.npy", mmap_mode="r")
    sample = ev.fixed_sample(len(all_faces))
    faces = np.asarray(all_faces[sample[np.linspace(0, len(sample) - 1, GRID_FACES).astype(int)]])
    lr_faces = degrade(faces)
    columns = [("LR (x8)", np.repeat(np.repeat(lr_faces, 8, axis=1), 8, axis=2))]
    columns += [(name, sr_fn(lr_faces)) for name, sr_fn in sr_functions.items()]
    columns.append(("HR", faces))
    header = 18
    canvas = Image.new("RGB", (HR_SIZE * len(columns), header + HR_SIZE * len(faces)), "white")
    draw = ImageDraw.Draw(canvas)
    for column, (title, images) in enumerate(columns):
        draw.text((column * HR_SIZE + 3, 3), title, fill="black")
        for row, image in enumerate(images):
            canvas.paste(Image.fromarray(image), (column * HR_SIZE, header + row * HR_SIZE))
    canvas.save(path)


def learning_curve(runs: Path, weights: Path, names: list[str], recognizers: dict, cache: Path, data: Path,
                   out: Path) -> list[dict]:
    """LFW LR-HR verification (SFace) of every snapshot of the runs ``names``. A run whose snapshots are no
    longer in ``runs/`` (an ignored folder) keeps the points already scored in ``<out>/eval/curve_*.json``."""
    points = []
    for key in names:
        snapshots = sorted((runs / key / "snapshots").glob("step_*.pt"))
        if snapshots:
            for snapshot in snapshots:
                config = torch.load(snapshot, map_location="cpu", weights_only=True)["config"]
                result = evaluate_cached(f"{key}@{config['step']}", f"curve_{key}_{config['step']:06d}",
                                         sha256_of(snapshot), generator_sr(snapshot), recognizers, cache, data, out,
                                         protocols=("lfw",))
                points.append(curve_point(key, config["step"], config["samples"], result))
            continue
        scored = {}  # step -> path of its scored point
        for path in (out / "eval").glob(f"curve_{key}_*.json"):
            match = re.fullmatch(rf"curve_{re.escape(key)}_(\d{{6}})", path.stem)
            if match:
                scored[int(match[1])] = path
        if not scored:
            log.warning("%s: no snapshots in %s and no scored points in %s", key, runs / key, out / "eval")
            continue
        batch_size = json.loads((weights / key / "run.json").read_text())["config"]["batch_size"]
        for step, path in sorted(scored.items()):
            points.append(curve_point(key, step, step * batch_size, json.loads(path.read_text())))
    return points


def curve_point(run: str, step: int, samples: int, result: dict) -> dict:
    lfw = result["lfw"]["sface"]
    return {"run": run, "step": step, "samples": samples, "lfw_accuracy": lfw["accuracy"],
            "vr@far=0.001": lfw["vr@far=0.001"]["vr"]}


def write_learning_curve(points: list[dict], runs: Path, weights: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4))
    for run in dict.fromkeys(point["run"] for point in points):
        mine = [point for point in points if point["run"] == run]
        axes[0].plot([p["samples"] for p in mine], [100 * p["lfw_accuracy"] for p in mine], "o-", label=run)
        log_path = runs / run / "log.jsonl"
        if not log_path.exists():
            log_path = weights / run / "log.jsonl"  # the published copy of the finished run's log
        if log_path.exists():
            records = [json.loads(line) for line in log_path.read_text().splitlines()]
            validation = [record for record in records if "val_cos" in record]
            axes[1].plot([r["samples"] for r in validation], [r["val_cos"] for r in validation], ".-", label=run)
    axes[0].set_xlabel("training samples seen in the run")
    axes[0].set_ylabel("LFW 16×16 LR-HR accuracy, SFace (%)")
    axes[1].set_xlabel("training samples seen in the run")
    axes[1].set_ylabel("validation mean cos(F(SR), F(HR))")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "learning_curve.png", dpi=110)
    plt.close(figure)
    lines = ["# Learning curves", "",
             "LFW LR-HR verification (16×16, SFace, 10-fold accuracy) of the EMA weights saved during each run "
             "(`python -m training.table1 --learning-curve`). Samples count from each run's own start; a run "
             "that starts from other weights (every stage 2, and a continued stage 1) starts from the last "
             "point of the run those weights come from. Checkpoints were selected on the validation split of "
             "the training pool, never on these figures.", "",
             "| run | step | samples | LFW ACC (%) | VR@0.1 % (%) |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {p['run']} | {p['step']} | {p['samples']} | {100 * p['lfw_accuracy']:.2f} | "
              f"{100 * p['vr@far=0.001']:.2f} |" for p in points]
    (out / "learning_curve.md").write_text("\n".join(lines) + "\n")


def cached_row(title: str, key: str, entry: dict, out: Path) -> dict | None:
    """The cached scores of a row whose weights are archived, if they were computed from those weights."""
    path = out / "eval" / f"{key}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == entry["sha256"]:
            log.info("%s: weights archived, reusing %s (to score again: %s)", title, path, restore_command(key))
            return saved
    log.warning("%s: weights archived and no cached scores of them: %s, then run again", title, restore_command(key))
    return None


def write_table(rows: list[dict], gaps: dict, methods: list[tuple[str, str]], weights: Path, out: Path,
                seconds: float) -> None:
    provenance = []
    archived = read_archive()
    for title, key in methods:
        run = json.loads((weights / key / "run.json").read_text()) if (weights / key / "run.json").exists() else {}
        best = run.get("best", {})
        where = (f"`weights/{key}/generator.pt`" if (weights / key / "generator.pt").exists()
                 else f"archived at {archived[key]['commit'][:12]} (`{restore_command(key)}`)")
        provenance.append(f"| {title} | {where} | {run.get('recipe', '?')} | "
                          f"{run.get('total_steps', '?')} | {best.get('step', '?')} | {best.get('val_cos', float('nan')):.4f} |")
    lines = [
        "# Table I for our setting",
        "",
        "LFW LR-HR verification (one face of each of the 6,000 pairs degraded 128→16) and CelebA rank-1 "
        "(probes degraded 128→16), scored by SFace (the recognizer F the identity losses use) and by dlib's "
        "ResNet (held out: never used in training; it re-aligns every face with its own landmarks). Protocol "
        "details: `results/baselines.md`. Command: `python -m training.table1`, "
        f"{seconds / 60:.0f} min for the rows not already in `results/eval/`.",
        "",
        ev.markdown_table(rows).rstrip(),
        "",
        "## Weights",
        "",
        "| method | weights | recipe | steps | selected step | validation mean cos |",
        "| --- | --- | --- | --- | --- | --- |",
        *provenance,
        "",
        "## Fig. 5: gaps between F(HR) and F(SR) (`fig5_gaps.png`), over the degraded LFW faces",
        "",
        "| method | recognizer | mean cosine | mean angle (°) | mean magnitude gap | mean ‖F(SR)‖ | mean ‖F(HR)‖ |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, by_recognizer in gaps.items():
        for recognizer, gap in by_recognizer.items():
            lines.append(f"| {name} | {recognizer} | {gap['mean_cosine']:.4f} | {gap['mean_angle_deg']:.2f} | "
                         f"{gap['mean_magnitude_gap']:.4f} | {gap['mean_norm_other']:.3f} | "
                         f"{gap['mean_norm_reference']:.3f} |")
    lines += ["", "`grid.png`: LR (16×16 shown ×8), Bicubic, the IAFSR rows (paper, edge shift, long stage 1, "
              "β1 = 1000: the shipped model) and HR for six LFW faces."]
    (out / "table1.md").write_text("\n".join(lines) + "\n")
    (out / "table1.json").write_text(json.dumps({"rows": rows, "fig5": gaps}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--cache", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--learning-curve", nargs="*", metavar="RUN",
                        help="also score every snapshot of these runs (default: stage1 iafsr) on LFW with SFace")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    recognizers = ev.load_recognizers()
    common = dict(recognizers=recognizers, cache=args.cache, data=args.data, out=args.out)

    rows = [evaluate_cached("HR-HR", "hr_hr", "hr", None, **common),
            evaluate_cached("Bicubic", "bicubic", "bicubic", ev.bicubic_sr, **common)]
    grid_functions = {"Bicubic": ev.bicubic_sr}
    archived, methods, missing = read_archive(), [], []
    for title, key in METHODS:
        path = args.weights / key / "generator.pt"
        if path.exists():
            sr_fn = generator_sr(path)
            rows.append(evaluate_cached(title, key, sha256_of(path), sr_fn, **common))
        elif key in archived and (row := cached_row(title, key, archived[key], args.out)) is not None:
            rows.append(row)
            sr_fn = None
        else:
            missing.append(key)
            continue
        if key in GRID_METHODS:
            grid_functions[GRID_METHODS[key]] = sr_fn or archived_sr(key)
        methods.append((title, key))
    if missing:
        log.warning("no weights yet for %s: their rows are left out", ", ".join(missing))
    gaps = {row["name"]: {name: row["lfw"][name]["gaps"] for name in row["recognizers"]} for row in rows[1:]}
    plot_gaps(gaps, args.out / "fig5_gaps.png")
    picture_grid({title: sr_fn for title, sr_fn in grid_functions.items() if sr_fn is not None}, args.cache,
                 args.out / "grid.png")
    write_table(rows, gaps, methods, args.weights, args.out, time.perf_counter() - started)
    log.info("wrote %s", args.out / "table1.md")
    if args.learning_curve is not None:
        names = args.learning_curve or ["stage1", "iafsr"]
        points = learning_curve(args.runs, args.weights, names, {"sface": recognizers["sface"]}, args.cache,
                                args.data, args.out)
        write_learning_curve(points, args.runs, args.weights, args.out)


if __name__ == "__main__":
    main()
