"""Throughput of FaceEnhancer.enhance against a bare onnxruntime session and torch eager on the same weights.

    python -m benchmarks.enhancer [--json PATH] [--batches 1 64] [--rounds 5] [--threads N] [--weights PT]

Inputs are real LFW faces degraded to 16×16 (``tests/fixtures/sdk_lfw_lr16.npy``), tiled to each batch size.
- ``sdk``: ``FaceEnhancer.enhance`` on uint8 NHWC faces, uint8 NHWC out (all conversions included), with
  its default of no CPU memory arena; ``sdk_arena``: the same with ``memory_arena=True``.
- ``ort_no_arena`` / ``ort``: a bare ``InferenceSession`` on the same ONNX file with the same options (no
  arena / onnxruntime's stock options), fed a pre-made float32 NCHW array.
- ``torch``: the generator in eval mode under ``torch.inference_mode`` with the same weights (the shipped
  placeholder is rebuilt from its seed; trained weights need ``--weights``), float32 NCHW in and out.
The contenders run interleaved, round after round, so background load hits them alike; each figure is the
median over ``--rounds`` turns. SDK overhead = sdk time / bare time - 1 with the same session options, within this run; the cost of
running without the arena is reported beside it. The resident memory of a process with and without the arena is measured in subprocesses.

Then variants of the session (optimisation level, intra-op threads, execution mode, fp16) against the stock
one, and the share of ``enhance`` spent outside onnxruntime (what a native post-processing kernel could win).
Where CUDA works, the same at batch 256 on the GPU, fp32 and fp16, with and without I/O binding.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime

from iafsr_sdk.enhancer import (CARD_FILE, MODEL_FILES, FaceEnhancer, _cuda_driver_present, _shipped_model_dir,
                                _to_images, _to_network_input)

log = logging.getLogger("benchmarks.enhancer")

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "fixtures" / "sdk_lfw_lr16.npy"


def tiled(faces: np.ndarray, count: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(faces, (count,) + faces.shape[1:]))


def nchw(faces: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def race(contenders: dict[str, Callable[[], Any]], rounds: int, calls: int = 1) -> dict[str, float]:
    """Median seconds per call of each contender.

    Contenders take turns, round after round, so that background load hits them alike. Each turn starts
    with an untimed call: onnxruntime's and torch's worker threads keep spinning for a while after a call,
    which would slow down whichever contender runs next.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            run()
            for _ in range(calls):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def session(path: Path, providers: list, threads: int | None, level: str = "all",
            mode: str = "sequential", arena: bool = True) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.graph_optimization_level = {
        "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    options.execution_mode = (onnxruntime.ExecutionMode.ORT_PARALLEL if mode == "parallel"
                              else onnxruntime.ExecutionMode.ORT_SEQUENTIAL)
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


def torch_generator(card: dict, weights: Path | None, threads: int | None):
    """The torch generator with the ONNX file's weights, or None where torch or the weights are missing."""
    try:
        import torch

        from export.generator import make_generator
    except ImportError as error:
        log.warning("torch baseline skipped: %s", error)
        return None
    if threads:
        torch.set_num_threads(threads)
    if weights is None and not card.get("placeholder"):
        log.warning("torch baseline skipped: trained weights, pass --weights")
        return None
    generator, _ = make_generator(weights, card.get("training", {}).get("seed", 0))
    generator.eval()

    def run(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return generator(torch.from_numpy(lr)).numpy()

    return run


def cpu_comparison(faces: np.ndarray, batches: list[int], rounds: int, threads: int | None,
                   card: dict, weights: Path | None) -> list[dict]:
    model = _shipped_model_dir() / MODEL_FILES["fp32"]
    bare = session(model, ["CPUExecutionProvider"], threads)
    bare_no_arena = session(model, ["CPUExecutionProvider"], threads, arena=False)  # the SDK's options
    run_torch = torch_generator(card, weights, threads)
    rows = []
    for batch in batches:
        enhancer = FaceEnhancer(device="cpu", threads=threads, batch_size=batch)
        enhancer_arena = FaceEnhancer(device="cpu", threads=threads, batch_size=batch, memory_arena=True)
        uint8 = tiled(faces, batch)
        lr = nchw(uint8)
        contenders: dict[str, Callable[[], Any]] = {
            "sdk": lambda: enhancer.enhance(uint8),
            "ort_no_arena": lambda: bare_no_arena.run(None, {"lr": lr}),
            "sdk_arena": lambda: enhancer_arena.enhance(uint8),
            "ort": lambda: bare.run(None, {"lr": lr}),
        }
        if run_torch is not None:
            contenders["torch"] = lambda: run_torch(lr)
        seconds = race(contenders, rounds, calls=1 if batch > 8 else 10)
        row = {"batch": batch, **{f"{name}_faces_per_s": batch / t for name, t in seconds.items()},
               "sdk_overhead_pct": 100 * (seconds["sdk"] / seconds["ort_no_arena"] - 1),
               "sdk_arena_overhead_pct": 100 * (seconds["sdk_arena"] / seconds["ort"] - 1),
               "no_arena_cost_pct": 100 * (seconds["ort_no_arena"] / seconds["ort"] - 1)}
        rows.append(row)
        log.info("batch %3d: %s", batch, ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k != "batch"))
    return rows


def cpu_variants(faces: np.ndarray, batch: int, rounds: int) -> list[dict]:
    """Session settings against the stock session (onnxruntime's defaults), bare runs at one batch size."""
    cores = os.cpu_count() or 1
    lr = nchw(tiled(faces, batch))
    fp32, fp16 = (_shipped_model_dir() / MODEL_FILES[p] for p in ("fp32", "fp16"))
    cpu = ["CPUExecutionProvider"]
    sessions = {
        "stock (all, default threads, sequential)": session(fp32, cpu, None),
        "optimisation basic": session(fp32, cpu, None, level="basic"),
        "optimisation extended": session(fp32, cpu, None, level="extended"),
        "1 intra-op thread": session(fp32, cpu, 1),
        f"{cores} intra-op threads": session(fp32, cpu, cores),
        "parallel execution mode": session(fp32, cpu, None, mode="parallel"),
        "no CPU memory arena (SDK default)": session(fp32, cpu, None, arena=False),
        "fp16 model": session(fp16, cpu, None),
    }
    seconds = race({name: (lambda s=s: s.run(None, {"lr": lr})) for name, s in sessions.items()}, rounds)
    stock = seconds["stock (all, default threads, sequential)"]
    rows = [{"variant": name, "batch": batch, "faces_per_s": batch / t, "vs_stock": stock / t}
            for name, t in seconds.items()]
    for row in rows:
        log.info("%-42s %7.1f faces/s  ×%.2f", row["variant"], row["faces_per_s"], row["vs_stock"])
    return rows


MEMORY_PROBE = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.enable_cpu_mem_arena = sys.argv[2] == "arena"
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
lr = np.random.default_rng(0).random((int(sys.argv[3]), 3, 16, 16), dtype=np.float32)
for _ in range(3):
    session.run(None, {"lr": lr})
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024)
"""


def resident_memory(batch: int) -> dict[str, int]:
    """Resident MB of a process after three runs at ``batch``, with and without onnxruntime's CPU arena."""
    model = str(_shipped_model_dir() / MODEL_FILES["fp32"])
    result = {}
    for setting in ("arena", "no_arena"):
        done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, model, setting, str(batch)],
                              capture_output=True, text=True, check=True)
        result[f"{setting}_rss_mb"] = int(done.stdout.strip())
    log.info("batch %d: resident %d MB with the CPU arena, %d MB without", batch, result["arena_rss_mb"],
             result["no_arena_rss_mb"])
    return result


def pre_post_ms(uint8: np.ndarray, sr: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median milliseconds of the SDK's pre-processing (uint8 NHWC → float NCHW) and post-processing."""
    out = np.empty((len(uint8), 128, 128, 3), np.uint8)
    pre, post = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        _to_network_input(uint8, False)
        pre.append(time.perf_counter() - start)
        fresh = sr.copy()  # post-processing works in place on onnxruntime's output
        start = time.perf_counter()
        _to_images(fresh, out, False)
        post.append(time.perf_counter() - start)
    return 1e3 * statistics.median(pre), 1e3 * statistics.median(post)


def outside_onnxruntime(faces: np.ndarray, batches: list[int], rounds: int) -> list[dict]:
    """Time of the SDK's own pre- and post-processing per call, and its share of a whole enhance call."""
    enhancer = FaceEnhancer(device="cpu")
    rows = []
    for batch in batches:
        uint8 = tiled(faces, batch)
        sr = enhancer._session.run(None, {"lr": _to_network_input(uint8, False)})[0]
        pre, post = pre_post_ms(uint8, sr, rounds * 10)
        whole = 1e3 * race({"enhance": lambda: enhancer.enhance(uint8)}, rounds)["enhance"]
        row = {"batch": batch, "pre_ms": pre, "post_ms": post, "enhance_ms": whole,
               "share_pct": 100 * (pre + post) / whole}
        rows.append(row)
        log.info("batch %3d: pre %.3f ms, post %.3f ms of %.1f ms per call (%.2f %%)", batch, pre, post, whole,
                 row["share_pct"])
    return rows


def gpu(faces: np.ndarray, batch: int, rounds: int) -> list[dict]:
    """CUDA provider at one batch size: fp32 / fp16 files, plain runs and I/O binding, and the SDK, with the
    share of the SDK's host-side pre- and post-processing."""
    rows = []
    lr = nchw(tiled(faces, batch))
    uint8 = tiled(faces, batch)
    for precision in ("fp32", "fp16"):
        path = _shipped_model_dir() / MODEL_FILES[precision]
        cuda = session(path, ["CUDAExecutionProvider", "CPUExecutionProvider"], None)
        if "CUDAExecutionProvider" not in cuda.get_providers():
            log.warning("CUDA could not be started: no GPU figures")
            return []
        binding = cuda.io_binding()
        device_input = onnxruntime.OrtValue.ortvalue_from_numpy(lr, "cuda", 0)
        binding.bind_ortvalue_input("lr", device_input)
        binding.bind_output("sr", "cuda", 0)

        def bound() -> None:
            cuda.run_with_iobinding(binding)
            binding.synchronize_outputs()

        enhancer = FaceEnhancer(device="cuda", precision=precision, batch_size=batch)
        seconds = race({"run (host in/out)": lambda: cuda.run(None, {"lr": lr}), "io binding (device in/out)": bound,
                        "sdk (uint8 host in/out)": lambda: enhancer.enhance(uint8)}, rounds, calls=5)
        pre, post = pre_post_ms(uint8, cuda.run(None, {"lr": lr})[0], rounds * 10)
        for name, t in seconds.items():
            rows.append({"precision": precision, "path": name, "batch": batch, "faces_per_s": batch / t,
                         "ms_per_call": 1e3 * t})
            log.info("cuda %s %-28s batch %d: %8.0f faces/s", precision, name, batch, batch / t)
        share = 100 * (pre + post) / (1e3 * seconds["sdk (uint8 host in/out)"])
        rows.append({"precision": precision, "path": "host pre+post in sdk", "batch": batch, "pre_ms": pre,
                     "post_ms": post, "share_pct": share})
        log.info("cuda %s host pre %.2f ms + post %.2f ms = %.1f %% of the sdk call", precision, pre, post, share)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FaceEnhancer throughput against bare onnxruntime and torch.")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=5, help="turns of each contender (1 timed call per turn "
                        "above batch 8, 10 below)")
    parser.add_argument("--threads", type=int, help="intra-op threads for onnxruntime and torch (default: theirs)")
    parser.add_argument("--weights", type=Path, help="trained generator weights for the torch baseline")
    parser.add_argument("--gpu-batch", type=int, default=256)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)

    faces = np.load(FACES)
    card = json.loads((_shipped_model_dir() / CARD_FILE).read_text())
    results: dict[str, Any] = {
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
                    "onnxruntime": onnxruntime.__version__, "placeholder_model": card.get("placeholder")},
    }
    log.info("== FaceEnhancer vs bare onnxruntime vs torch eager (CPU, faces/s) ==")
    results["cpu"] = cpu_comparison(faces, args.batches, args.rounds, args.threads, card, args.weights)
    log.info("== session variants (bare onnxruntime, CPU, batch %d) ==", max(args.batches))
    results["cpu_variants"] = cpu_variants(faces, max(args.batches), args.rounds)
    if sys.platform.startswith("linux"):
        log.info("== resident memory after batches of %d (CPU) ==", max(args.batches))
        results["memory"] = resident_memory(max(args.batches))
    log.info("== SDK work outside onnxruntime ==")
    results["outside_onnxruntime"] = outside_onnxruntime(faces, args.batches, args.rounds)
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and _cuda_driver_present():
        log.info("== GPU (batch %d) ==", args.gpu_batch)
        results["gpu"] = gpu(faces, args.gpu_batch, args.rounds)
    results["machine"]["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        log.info("wrote %s", args.json)


if __name__ == "__main__":
    main()
