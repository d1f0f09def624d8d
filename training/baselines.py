"""Baseline rows of Table I (HR-HR and Bicubic) and the resolution analysis of Fig. 2.

    python -m training.baselines [--cache data/cache] [--data ../shared/data] [--out results] [--threads 2]

Writes ``<out>/baselines.md``, ``<out>/baselines.json`` and ``<out>/fig2_resolution.png``. Needs the LFW and
CelebA caches of ``python -m training.prepare``; HR features are cached there per recognizer on the first run.
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

from training import evaluation as ev
from training.prepare import DEFAULT_DATA, DEFAULT_OUT

log = logging.getLogger("training.baselines")

RESOLUTIONS = (8, 12, 16, 24, 32, 48, 64)
DEFAULT_RESULTS = Path(__file__).resolve().parents[1] / "results"
RECOGNIZER_TITLES = {"sface": "SFace (training F)", "dlib": "dlib ResNet (held-out judge)"}


def plot_resolution_gaps(gaps: dict, path: Path, sample_size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("mean_cosine", "mean cosine F(HR)·F(X)"), ("mean_angle_deg", "mean angle (degrees)"),
              ("mean_magnitude_gap", "mean |‖F(HR)‖ − ‖F(X)‖|"))
    figure, axes = plt.subplots(len(gaps), 3, figsize=(12, 3.4 * len(gaps)), squeeze=False)
    for row, (recognizer, by_size) in enumerate(gaps.items()):
        sizes = sorted(by_size)
        for column, (key, label) in enumerate(panels):
            axis = axes[row, column]
            axis.plot(sizes, [by_size[size][key] for size in sizes], "o-")
            axis.set_xscale("log", base=2)
            axis.set_xticks(sizes, [str(size) for size in sizes])
            axis.set_xlabel("face resolution (px), bicubic back to 128")
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
            if column == 0:
                axis.set_title(RECOGNIZER_TITLES.get(recognizer, recognizer), loc="left")
        norm = np.mean([by_size[size]["mean_norm_reference"] for size in sizes])
        axes[row, 2].set_title(f"mean ‖F(HR)‖ = {norm:.2f}", loc="right", fontsize=9)
    figure.suptitle(f"Feature gaps between F(HR) and F(degraded→bicubic), {sample_size} LFW faces")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _judge_fallback_text(rows: list[dict]) -> str:
    """Share of faces in which the dlib judge found no face, per row: LFW faces, then CelebA probes."""
    parts = []
    for row in rows:
        rates = [row[protocol].get("dlib", {}).get("judge_fallback_rate") for protocol in ("lfw", "celeba")]
        if all(rate is not None for rate in rates):
            parts.append(f"{row['name']} {100 * rates[0]:.1f} % / {100 * rates[1]:.1f} %")
    return "; ".join(parts) if parts else "not recorded"


def _seed_spread_section(row: dict) -> list[str]:
    """Markdown lines: how the row's LFW figures move when the degraded face of each pair is drawn again."""
    spreads = {name: row["lfw"][name]["seed_spread"] for name in row["recognizers"]
               if "seed_spread" in row["lfw"].get(name, {})}
    if not spreads:
        return []
    seeds = next(iter(spreads.values()))["seeds"]
    lines = [f"## Sensitivity to the LR-side seed ({row['name']})", "",
             f"The same {row['name']} row scored with {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}, the table's "
             "seed first) for the choice of the degraded face in each pair: mean ± std (min–max) over the seeds.",
             "", "| Recognizer | LFW ACC. | VR@FAR=1% | VR@FAR=0.1% |", "| --- | --- | --- | --- |"]
    for name, spread in spreads.items():
        cells = [f"{100 * spread[key]['mean']:.2f} ± {100 * spread[key]['std']:.2f} "
                 f"({100 * spread[key]['min']:.2f}–{100 * spread[key]['max']:.2f})"
                 for key in ["accuracy"] + [f"vr@far={far:g}" for far in ev.FAR_TARGETS]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    def widest(key: str) -> float:
        return max(100 * (spread[key]["max"] - spread[key]["min"]) for spread in spreads.values())

    lines += ["", f"Across the draws the accuracy spans at most {widest('accuracy'):.2f} points, VR@FAR=1 % "
              f"{widest('vr@far=0.01'):.2f} and VR@FAR=0.1 % {widest('vr@far=0.001'):.2f} points: differences "
              "between methods smaller than that are within the choice of the degraded faces.", ""]
    return lines


def write_markdown(path: Path, report: dict) -> None:
    rows, gaps, celeba = report["rows"], report["fig2"]["gaps"], report["rows"][0]["celeba"]
    lfw = report["rows"][0]["lfw"]
    first_recognizer = rows[0]["recognizers"][0]
    allowed = {far: lfw[first_recognizer][f"vr@far={far:g}"]["negatives_above"] for far in ev.FAR_TARGETS}
    lines = [
        "# Baselines: HR-HR and Bicubic (16→128)",
        "",
        f"Command: `{report['command']}` — run time {report['seconds'] / 60:.1f} min on {report['machine']}; "
        + ("HR features taken from the caches of an earlier run." if all(report["hr_features_cached"].values())
           else "HR features computed on this run (then cached): "
           + ", ".join(f"{key} {'cached' if cached else 'computed'}"
                       for key, cached in report["hr_features_cached"].items()) + "."),
        "",
        "## Table I rows",
        "",
        ev.markdown_table(rows).rstrip(),
        "",
        f"LFW: {lfw['pairs']} pairs of the official View 2 `pairs.txt` (10 folds of matched + mismatched); "
        f"the Bicubic row degrades {rows[1]['lfw']['lr_faces']} distinct faces. "
        f"CelebA: gallery {celeba['gallery']} faces (one per identity), {celeba['probes']} probes; "
        f"{celeba['skipped_identities']} identities left out (a single face, or no detected face).",
        "",
        "## Protocol",
        "",
        "- Alignment: YuNet (5 landmarks) on the original photo, similarity transform onto the ArcFace 5-point "
        "template scaled to 128×128 (`python -m training.prepare`); RGB throughout. Faces YuNet misses are "
        "aligned on the set's mean landmarks and still evaluated: " + ", ".join(
            f"{name} {summary['fallback']} of {summary['photos']}" for name, summary in report["caches"].items()) + ".",
        "- Recognizers: SFace (training F) sees the 128 crop resized to 112 inside the model. dlib (held-out "
        "judge) re-aligns every 128 crop on its own: HOG face detector on the crop extended by 32 replicated "
        "pixels, dlib's 5-point shape predictor, `get_face_chip(150, padding=0.25)`, then the torch port of "
        "dlib's ResNet; where no face is detected a fixed box fitted on HR crops is used. Share of faces on "
        "that fallback, LFW / CelebA (HR-HR: all HR faces of the set; Bicubic: the degraded faces): "
        + _judge_fallback_text(rows) + ".",
        f"- LR side: in each LFW pair one face is degraded, chosen by `numpy.random.default_rng({ev.LR_SIDE_SEED})"
        f".integers(0, 2, {lfw['pairs']})` (`evaluation.LR_SIDE_SEED`); the other stays HR. Degradation: antialiased bicubic "
        "128→16 (Pillow's rule, `iafsr_sdk.faces.degrade`, uint8); Bicubic row: the same resize 16→128.",
        "- Score: cosine of the raw features. Accuracy: 10-fold, threshold maximizing accuracy on 9 folds "
        "(midpoints between distinct scores, lowest on ties), applied to the 10th; mean ± population std over "
        f"the folds. VR@FAR: over all {lfw['pairs']} pairs, threshold = the score of the (k+1)-th highest of the "
        f"{lfw['negatives']} negatives, k = floor(FAR × negatives): k = {allowed[0.01]} at 1 %, only "
        f"k = {allowed[0.001]} at 0.1 % (so VR@0.1 % rests on the {allowed[0.001] + 1} highest-scoring impostor "
        "pairs); accept = score above the threshold.",
        "- CelebA rank-1: identities with ≥ 2 faces; the gallery face of an identity is its detected face with "
        "the smallest yaw proxy (distance of the nose from the line through the eyes' midpoint and the mouth's "
        "midpoint, over the eye distance, from YuNet's landmarks in the photo; lower row on ties), kept HR; all "
        "its other faces are probes, degraded 128→16 and super-resolved (HR-HR: kept HR). A probe is right when "
        "its top-1 gallery face by cosine has its identity. All CelebA identities are evaluation-only.",
        "",
        *_seed_spread_section(rows[1]),
        "## Fig. 2: feature gaps against resolution",
        "",
        f"`fig2_resolution.png`: {report['fig2']['faces']} LFW faces (fixed sample, "
        f"`numpy.random.default_rng({ev.SAMPLE_SEED}).choice({report['fig2']['population']}, "
        f"{report['fig2']['faces']}, replace=False)`), each "
        "degraded 128→s and resized back to 128 with the same bicubic, against its own HR features.",
        "",
        "| Recognizer | px | mean cosine | mean angle (°) | mean magnitude gap | mean ‖F(HR)‖ | mean ‖F(X)‖ |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, by_size in gaps.items():
        for size, gap in by_size.items():
            lines.append(f"| {name} | {size} | {gap['mean_cosine']:.4f} | {gap['mean_angle_deg']:.2f} | "
                         f"{gap['mean_magnitude_gap']:.4f} | {gap['mean_norm_reference']:.4f} | "
                         f"{gap['mean_norm_other']:.4f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=DEFAULT_OUT, help="aligned caches (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="face data root (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="results folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=ev.BATCH_SIZE)
    parser.add_argument("--seed-spread", type=int, default=20,
                        help="also score the Bicubic row with this many LR-side seeds (0: only the fixed one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    recognizers = ev.load_recognizers()
    hr_cached = {f"{set_name}/{name}": ev.hr_features_cached(ev.cache_dir(args.cache, set_name), name, embed)
                 for set_name in ("lfw", "celeba") for name, embed in recognizers.items()}
    common = dict(cache_root=args.cache, data_root=args.data, batch_size=args.batch_size)
    rows = [ev.evaluate(None, "HR-HR", recognizers, **common),
            ev.evaluate(ev.bicubic_sr, "Bicubic", recognizers, seed_spread=args.seed_spread, **common)]

    folder = ev.cache_dir(args.cache, "lfw")
    hr = {name: ev.hr_features(folder, name, embed, args.batch_size) for name, embed in recognizers.items()}
    sample = ev.fixed_sample(len(next(iter(hr.values()))))
    gaps = ev.resolution_gaps(ev.load_faces(folder, sample), {name: f[sample] for name, f in hr.items()},
                              recognizers, RESOLUTIONS, args.batch_size)

    args.out.mkdir(parents=True, exist_ok=True)
    plot_resolution_gaps(gaps, args.out / "fig2_resolution.png", len(sample))
    report = {
        "command": "python -m training.baselines" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "seconds": time.perf_counter() - started,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs (shared), "
                   f"torch {torch.__version__} with {args.threads} threads",
        "hr_features_cached": hr_cached,
        "caches": {name: json.loads((ev.cache_dir(args.cache, name) / "summary.json").read_text())
                   for name in ("lfw", "celeba")},
        "rows": rows,
        "fig2": {"faces": len(sample), "population": len(next(iter(hr.values()))), "seed": ev.SAMPLE_SEED,
                 "resolutions": list(RESOLUTIONS), "gaps": gaps},
    }
    (args.out / "baselines.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(args.out / "baselines.md", report)
    print(ev.markdown_table(rows), end="")
    log.info("wrote %s, %s and %s in %.1f min", args.out / "baselines.md", args.out / "baselines.json",
             args.out / "fig2_resolution.png", report["seconds"] / 60)


if __name__ == "__main__":
    main()
