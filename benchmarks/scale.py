"""Throughput of the archive path on Ray Data against the single-process path, on the same faces.

    python -m benchmarks.scale [--json PATH] [--faces 1920] [--batch-size 64] [--rounds 1] [--gpu-faces 20000]

The archive is ``--faces`` real LFW faces degraded to 16×16 (``tests/fixtures/sdk_lfw_lr16.npy``, tiled), one
PNG file each, in a temporary folder. Each contender reads the files, enhances them and writes 128×128 PNG
files into a fresh folder, so all of them do the same work per face:
- ``single``: one process, one ``FaceEnhancer(threads=1)``, the loop of ``iafsr enhance`` (read, enhance,
  write, ``--batch-size`` faces at a time);
- ``ray_1`` / ``ray_2``: ``iafsr_sdk.scale.enhance_archive`` on a local Ray instance started beforehand, with
  1 and 2 CPU actors; each actor takes one CPU and runs onnxruntime with 1 intra-op thread. The time
  includes everything one call does: listing, starting the actors (process, model load), the batches,
  the summary.
``enhance_only`` is ``FaceEnhancer.enhance`` on in-memory faces with 1 thread: the per-core figure that a
cluster of CPU nodes multiplies. Contenders take turns round after round; each figure is the median.
Ray-path overhead per face = (ray_1 seconds - single seconds) / faces, also as a share of single's time per
face. One untimed Ray call comes first (a Ray session's first Dataset also starts Ray Data's own actors).
Where CUDA works the same is measured with one GPU (single process and one GPU actor, batch 256).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime
from PIL import Image

from benchmarks import load_average, write_results
from iafsr_sdk.cli import _enhance_chunk
from iafsr_sdk.enhancer import FaceEnhancer, _cuda_driver_present

log = logging.getLogger("benchmarks.scale")

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "fixtures" / "sdk_lfw_lr16.npy"


def make_archive(folder: Path, count: int) -> list[Path]:
    faces = np.load(FACES)
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        path = folder / f"face{index:06d}.png"
        Image.fromarray(faces[index % len(faces)]).save(path)
        paths.append(path)
    return paths


def single_process(paths: list[Path], out: Path, batch: int, device: str) -> float:
    """Seconds for the plain CLI loop over ``paths`` (model load included, as in a run of the command)."""
    start = time.perf_counter()
    enhancer = FaceEnhancer(device=device, threads=1 if device == "cpu" else None, batch_size=batch)
    out.mkdir(parents=True)
    failures: list = []
    for first in range(0, len(paths), batch):
        _enhance_chunk(enhancer, [(p, out / p.name) for p in paths[first:first + batch]], failures)
    if failures:
        raise RuntimeError(f"single-process run failed on {failures[:3]}")
    return time.perf_counter() - start


def ray_path(source: Path, out: Path, batch: int, workers: int, device: str) -> float:
    from iafsr_sdk.scale import enhance_archive

    start = time.perf_counter()
    summary = enhance_archive(source, out, device=device, batch_size=batch, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    if summary.failures or summary.written != summary.total:
        raise RuntimeError(f"Ray run wrote {summary.written} of {summary.total}: {summary.failures[:3]}")
    return seconds


def enhance_only(faces: np.ndarray, batch: int, device: str, rounds: int) -> float:
    """Faces/s of ``FaceEnhancer.enhance`` alone on in-memory faces (1 intra-op thread on the CPU)."""
    enhancer = FaceEnhancer(device=device, threads=1 if device == "cpu" else None, batch_size=batch)
    enhancer.enhance(faces[:batch])
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        enhancer.enhance(faces)
        times.append(time.perf_counter() - start)
    return len(faces) / statistics.median(times)


def compare(paths: list[Path], work: Path, contenders: dict[str, Callable[[Path], float]],
            rounds: int) -> dict[str, float]:
    """Median seconds of each contender; each run writes into a fresh folder, deleted afterwards."""
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        for name, run in contenders.items():
            out = work / f"{name}_{round_index}"
            seconds[name].append(run(out))
            written = sum(1 for p in out.iterdir() if p.suffix == ".png")
            if written != len(paths):
                raise RuntimeError(f"{name} wrote {written} of {len(paths)} files")
            shutil.rmtree(out)
            log.info("round %d %-7s %7.1f s  %6.1f faces/s", round_index + 1, name, seconds[name][-1],
                     len(paths) / seconds[name][-1])
    return {name: statistics.median(values) for name, values in seconds.items()}


def summarise(count: int, seconds: dict[str, float], base: str, ray_one: str) -> dict[str, Any]:
    result: dict[str, Any] = {f"{name}_faces_per_s": count / t for name, t in seconds.items()}
    result.update({f"{name}_seconds": t for name, t in seconds.items()})
    result["ray_overhead_ms_per_face"] = 1e3 * (seconds[ray_one] - seconds[base]) / count
    result["ray_overhead_pct"] = 100 * (seconds[ray_one] / seconds[base] - 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Ray Data archive path against the single-process path.")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--faces", type=int, default=1920, help="faces in the archive (default 1920)")
    parser.add_argument("--batch-size", type=int, default=64, help="faces per call on the CPU (default 64)")
    parser.add_argument("--rounds", type=int, default=1, help="turns of each contender (median reported)")
    parser.add_argument("--gpu-faces", type=int, default=20000, help="faces in the GPU archive (default 20000)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)
    import ray

    cores = os.cpu_count() or 1
    results: dict[str, Any] = {
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": cores,
                    "load_average": load_average(),
                    "onnxruntime": onnxruntime.__version__, "ray": ray.__version__},
        "settings": {"faces": args.faces, "batch_size": args.batch_size, "rounds": args.rounds,
                     "threads": "onnxruntime intra-op threads = 1 in every contender; 1 CPU per Ray actor"},
    }
    work = Path(tempfile.mkdtemp(prefix="iafsr_scale_"))
    try:
        paths = make_archive(work / "lr", args.faces)
        faces = np.resize(np.load(FACES), (min(args.faces, 512), 16, 16, 3))
        results["cpu_enhance_only_faces_per_s"] = enhance_only(faces, args.batch_size, "cpu", 3)
        log.info("enhance only, 1 thread: %.1f faces/s", results["cpu_enhance_only_faces_per_s"])
        ray.init(num_cpus=max(2, cores), include_dashboard=False, log_to_driver=False)
        # Untimed: the first Dataset of a Ray session also starts Ray Data's own actors; later calls pay
        # only for their own (listing, actor start-up, model load), which the figures include.
        make_archive(work / "warm_up", 2 * args.batch_size)
        ray_path(work / "warm_up", work / "warm_up_sr", args.batch_size, 2, "cpu")
        contenders = {
            "single": lambda out: single_process(paths, out, args.batch_size, "cpu"),
            "ray_1": lambda out: ray_path(work / "lr", out, args.batch_size, 1, "cpu"),
            "ray_2": lambda out: ray_path(work / "lr", out, args.batch_size, 2, "cpu"),
        }
        seconds = compare(paths, work, contenders, args.rounds)
        results["cpu"] = summarise(len(paths), seconds, "single", "ray_1")
        results["cpu"]["ray_2_over_ray_1"] = seconds["ray_1"] / seconds["ray_2"]
        log.info("Ray overhead at 1 actor: %+.2f ms per face (%+.1f %%); 2 actors: ×%.2f of 1 actor",
                 results["cpu"]["ray_overhead_ms_per_face"], results["cpu"]["ray_overhead_pct"],
                 results["cpu"]["ray_2_over_ray_1"])
        gpu_ready = "CUDAExecutionProvider" in onnxruntime.get_available_providers() and _cuda_driver_present()
        if gpu_ready and ray.cluster_resources().get("GPU", 0) >= 1:
            gpu_paths = make_archive(work / "lr_gpu", args.gpu_faces)
            gpu_faces = np.resize(np.load(FACES), (4096, 16, 16, 3))
            results["gpu_enhance_only_faces_per_s"] = enhance_only(gpu_faces, 256, "cuda", 3)
            seconds = compare(gpu_paths, work, {
                "single": lambda out: single_process(gpu_paths, out, 256, "cuda"),
                "ray_1_gpu": lambda out: ray_path(work / "lr_gpu", out, 256, 1, "cuda"),
            }, args.rounds)
            results["gpu"] = summarise(len(gpu_paths), seconds, "single", "ray_1_gpu")
            log.info("GPU: %s", ", ".join(f"{k} {v:.1f}" for k, v in results["gpu"].items()))
        else:
            log.info("no usable GPU: CPU figures only")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    write_results(results, args.json)


if __name__ == "__main__":
    main()
