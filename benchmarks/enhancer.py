"""Throughput of FaceEnhancer.enhance (fp32 and int8) against bare onnxruntime sessions and torch eager.

    python -m benchmarks.enhancer [--json PATH] [--batches 1 32] [--rounds 5] [--threads N] [--weights PT]
                                  [--baseline DIR] [--profile]

Inputs are real LFW faces degraded to 16×16 (``tests/fixtures/sdk_lfw_lr16.npy``), tiled to each batch size.
- ``sdk`` / ``sdk_int8``: ``FaceEnhancer.enhance`` on uint8 NHWC faces, uint8 NHWC out (all conversions
  included), with its default session settings, fp32 and int8 model; ``sdk_no_arena``: fp32 with
  ``memory_arena=False``; ``sdk_one_call`` / ``sdk_int8_one_call`` (batches above ``CPU_RUN_FACES``): the
  whole batch in one onnxruntime call instead of calls of ``CPU_RUN_FACES`` faces.
- ``ort`` / ``ort_int8``: a bare ``InferenceSession`` with onnxruntime's stock options on the fp32 / int8 file,
  fed a pre-made float32 NCHW array; ``ort_no_arena``: fp32 without the CPU memory arena.
- ``ort_baseline`` / ``ort_int8_baseline`` (with ``--baseline DIR``): the same bare sessions on the fp32 /
  int8 files of another export (e.g. an earlier release's ``iafsr_sdk/models``), to measure a change of the
  graph within one run.
- ``torch``: the generator in eval mode under ``torch.inference_mode`` with the same weights (the shipped
  placeholder is rebuilt from its seed; trained weights need ``--weights``), float32 NCHW in and out.
The contenders run interleaved, round after round, so background load hits them alike; each figure is the
median over ``--rounds`` turns. Next to each: achieved GFLOP/s (2 × the card's multiply-adds per face, 2.35
GFLOP) and its fraction of this CPU's fp32 FMA peak (physical cores × clock × FLOP per cycle from the widest
vector FMA in /proc/cpuinfo, two FMA units assumed: 64 with AVX-512, 32 with AVX2; ``--peak-gflops``
overrides). SDK overhead = sdk time / fastest bare fp32 time - 1, within this run.

Then variants of the session (optimisation level, threads, spinning, execution mode, arena, I/O binding into a
reused output buffer, fp16, int8) against the stock one, the resident memory of processes running the SDK,
with ``--profile`` the time of each node of the fp32 and int8 files (onnxruntime's profiler), and the share
of ``enhance`` spent outside onnxruntime (what a native post-processing kernel could win).
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
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime

from benchmarks import load_average, write_results
from iafsr_sdk.enhancer import (CARD_FILE, CPU_RUN_FACES, MODEL_FILES, FaceEnhancer, _cuda_driver_present,
                                _shipped_model_dir, _to_images, _to_network_input)

log = logging.getLogger("benchmarks.enhancer")

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "fixtures" / "sdk_lfw_lr16.npy"


def tiled(faces: np.ndarray, count: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(faces, (count,) + faces.shape[1:]))


def nchw(faces: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def race(contenders: dict[str, Callable[[], Any]], rounds: int, calls: int = 1) -> dict[str, float]:
    """Median seconds per call of each contender.

    Contenders take turns, round after round, so that background load hits them alike, in a new random order
    each round, so that no contender always follows the same one. Each turn starts with an untimed call:
    onnxruntime's and torch's worker threads keep spinning for a while after a call, which would slow down
    whichever contender runs next.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        for name in rng.permutation(list(contenders)).tolist():
            run = contenders[name]
            run()
            for _ in range(calls):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def session(path: Path, providers: list, threads: int | None, level: str = "all",
            mode: str = "sequential", arena: bool = True, spinning: bool = True,
            profile_prefix: str | None = None) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = arena
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


def cpu_features() -> dict:
    """Physical cores, clock, vector ISA and VNNI of this CPU from /proc/cpuinfo (Linux; else the logical cores)."""
    info = {"cores": os.cpu_count() or 1, "mhz": None, "isa": "unknown", "vnni": None, "model": platform.processor()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    blocks = [dict(line.split(":", 1) for line in block.splitlines() if ":" in line) for block in text.split("\n\n")]
    blocks = [{key.strip(): value.strip() for key, value in block.items()} for block in blocks if block]
    cores = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    flags = set(blocks[0].get("flags", "").split()) if blocks else set()
    megahertz = [float(b["cpu MHz"]) for b in blocks if "cpu MHz" in b]
    info.update(cores=len(cores) or info["cores"], mhz=max(megahertz) if megahertz else None,
                model=blocks[0].get("model name", info["model"]) if blocks else info["model"])
    if "avx512f" in flags:
        info["isa"] = "avx512"
    elif "avx2" in flags and "fma" in flags:
        info["isa"] = "avx2"
    vnni = [name for name in ("avx512_vnni", "avx_vnni") if name in flags]
    info["vnni"] = ", ".join(vnni) or None
    return info


def fp32_peak_gflops(features: dict, override: float | None) -> float | None:
    """fp32 FMA peak: physical cores × clock × FLOP per cycle (two FMA units of the widest vector width)."""
    if override:
        return override
    flops_per_cycle = {"avx512": 2 * 2 * 16, "avx2": 2 * 2 * 8}.get(features["isa"])
    if flops_per_cycle is None or not features["mhz"]:
        return None
    return features["cores"] * features["mhz"] / 1e3 * flops_per_cycle


def cpu_comparison(faces: np.ndarray, batches: list[int], rounds: int, threads: int | None,
                   card: dict, weights: Path | None, peak: float | None, baseline: Path | None = None) -> list[dict]:
    fp32, int8 = (_shipped_model_dir() / MODEL_FILES[p] for p in ("fp32", "int8"))
    cpu = ["CPUExecutionProvider"]
    bare = session(fp32, cpu, threads)
    bare_no_arena = session(fp32, cpu, threads, arena=False)
    bare_int8 = session(int8, cpu, threads)
    baselines = {}
    if baseline is not None:
        baselines = {"ort_baseline": session(baseline / MODEL_FILES["fp32"], cpu, threads),
                     "ort_int8_baseline": session(baseline / MODEL_FILES["int8"], cpu, threads)}
    run_torch = torch_generator(card, weights, threads)
    gflop_per_face = 2 * card["multiply_adds_per_face"] / 1e9
    rows = []
    for batch in batches:
        enhancers = {"sdk": FaceEnhancer(device="cpu", threads=threads, batch_size=batch),
                     "sdk_int8": FaceEnhancer(device="cpu", threads=threads, batch_size=batch, precision="int8"),
                     "sdk_no_arena": FaceEnhancer(device="cpu", threads=threads, batch_size=batch, memory_arena=False)}
        if batch > CPU_RUN_FACES:  # what the cap of CPU_RUN_FACES faces per call costs, if anything
            enhancers["sdk_one_call"] = FaceEnhancer(device="cpu", threads=threads, batch_size=batch)
            enhancers["sdk_int8_one_call"] = FaceEnhancer(device="cpu", threads=threads, batch_size=batch,
                                                          precision="int8")
            for name in ("sdk_one_call", "sdk_int8_one_call"):
                enhancers[name]._run_faces = batch
        uint8 = tiled(faces, batch)
        lr = nchw(uint8)
        contenders: dict[str, Callable[[], Any]] = {
            name: (lambda e=enhancer: e.enhance(uint8)) for name, enhancer in enhancers.items()}
        contenders.update({"ort": lambda: bare.run(None, {"lr": lr}),
                           "ort_no_arena": lambda: bare_no_arena.run(None, {"lr": lr}),
                           "ort_int8": lambda: bare_int8.run(None, {"lr": lr})})
        contenders.update({name: (lambda s=s: s.run(None, {"lr": lr})) for name, s in baselines.items()})
        if run_torch is not None:
            contenders["torch"] = lambda: run_torch(lr)
        seconds = race(contenders, rounds, calls=1 if batch > 8 else 10)
        fastest_fp32 = min(seconds["ort"], seconds["ort_no_arena"])
        row: dict[str, Any] = {"batch": batch}
        for name, t in seconds.items():
            row[f"{name}_faces_per_s"] = batch / t
            row[f"{name}_gflops"] = gflop_per_face * batch / t
            if peak:
                row[f"{name}_peak_fraction"] = gflop_per_face * batch / t / peak
        row.update({"sdk_overhead_pct": 100 * (seconds["sdk"] / fastest_fp32 - 1),
                    "sdk_int8_speedup": seconds["sdk"] / seconds["sdk_int8"],
                    "ort_int8_speedup": seconds["ort"] / seconds["ort_int8"],
                    "no_arena_cost_pct": 100 * (seconds["ort_no_arena"] / seconds["ort"] - 1)})
        if baselines:
            row.update({"ort_vs_baseline": seconds["ort_baseline"] / seconds["ort"],
                        "ort_int8_vs_baseline": seconds["ort_int8_baseline"] / seconds["ort_int8"]})
        rows.append(row)
        log.info("batch %d:", batch)
        for name in seconds:
            fraction = f", {100 * row[f'{name}_peak_fraction']:.0f} % of fp32 peak" if peak else ""
            log.info("  %-13s %7.1f faces/s  %6.1f GFLOP/s%s", name, row[f"{name}_faces_per_s"],
                     row[f"{name}_gflops"], fraction)
        log.info("  sdk vs fastest bare fp32 %+.1f %%, int8 speed-up sdk ×%.2f, bare ×%.2f, no-arena cost %+.1f %%",
                 row["sdk_overhead_pct"], row["sdk_int8_speedup"], row["ort_int8_speedup"], row["no_arena_cost_pct"])
        if baselines:
            log.info("  against %s: fp32 ×%.2f, int8 ×%.2f", baseline, row["ort_vs_baseline"],
                     row["ort_int8_vs_baseline"])
    return rows


def cpu_variants(faces: np.ndarray, batch: int, rounds: int) -> list[dict]:
    """Session settings against the stock session (onnxruntime's defaults), bare runs at one batch size."""
    cores = cpu_features()["cores"]
    lr = nchw(tiled(faces, batch))
    fp32, fp16, int8 = (_shipped_model_dir() / MODEL_FILES[p] for p in ("fp32", "fp16", "int8"))
    cpu = ["CPUExecutionProvider"]
    sessions = {
        "stock (all, default threads, sequential)": session(fp32, cpu, None),
        "optimisation basic": session(fp32, cpu, None, level="basic"),
        "optimisation extended": session(fp32, cpu, None, level="extended"),
        "1 intra-op thread": session(fp32, cpu, 1),
        f"{cores} intra-op threads (physical cores)": session(fp32, cpu, cores),
        f"{cores} intra-op threads, no spinning": session(fp32, cpu, cores, spinning=False),
        "parallel execution mode": session(fp32, cpu, None, mode="parallel"),
        "no CPU memory arena": session(fp32, cpu, None, arena=False),
        "fp16 model": session(fp16, cpu, None),
        "int8 model": session(int8, cpu, None),
        "int8 model, optimisation extended": session(int8, cpu, None, level="extended"),
    }
    contenders = {name: (lambda s=s: s.run(None, {"lr": lr})) for name, s in sessions.items()}
    # No arena, the output bound to one reused buffer: what I/O binding alone wins back.
    bound_session = session(fp32, cpu, None, arena=False)
    binding = bound_session.io_binding()
    output = np.empty((batch, 3, 128, 128), np.float32)
    binding.bind_cpu_input("lr", lr)
    binding.bind_output("sr", "cpu", 0, np.float32, list(output.shape), output.ctypes.data)
    contenders["no CPU memory arena, output bound to a reused buffer"] = lambda: bound_session.run_with_iobinding(binding)
    seconds = race(contenders, rounds)
    stock = seconds["stock (all, default threads, sequential)"]
    rows = [{"variant": name, "batch": batch, "faces_per_s": batch / t, "vs_stock": stock / t}
            for name, t in seconds.items()]
    for row in rows:
        log.info("%-55s %7.1f faces/s  ×%.2f", row["variant"], row["faces_per_s"], row["vs_stock"])
    return rows


MEMORY_PROBE = """
import sys, numpy as np
from iafsr_sdk import FaceEnhancer
enhancer = FaceEnhancer(device="cpu", precision=sys.argv[1], memory_arena=sys.argv[2] == "arena")
faces = np.random.default_rng(0).integers(0, 256, (int(sys.argv[3]), 16, 16, 3), dtype=np.uint8)
for _ in range(3):
    enhancer.enhance(faces)
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024)
"""


def resident_memory(batch: int) -> dict[str, int]:
    """Resident MB of a process after three ``enhance`` calls of ``batch`` faces, per model and arena setting."""
    result = {}
    for precision, setting in (("fp32", "arena"), ("fp32", "no_arena"), ("int8", "arena")):
        done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, precision, setting, str(batch)],
                              capture_output=True, text=True, check=True)
        result[f"sdk_{precision}_{setting}_rss_mb"] = int(done.stdout.strip())
    log.info("enhance of %d faces: resident %s", batch, ", ".join(f"{k} {v} MB" for k, v in result.items()))
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


def node_profile(path: Path, lr: np.ndarray, threads: int | None, calls: int = 20) -> list[dict]:
    """Milliseconds per call of each node of ``path`` on ``lr`` (onnxruntime's profiler, after one untimed call),
    slowest first."""
    with tempfile.TemporaryDirectory() as folder:
        profiled = session(path, ["CPUExecutionProvider"], threads, profile_prefix=str(Path(folder) / "profile"))
        for _ in range(calls + 1):
            profiled.run(None, {"lr": lr})
        events = json.loads(Path(profiled.end_profiling()).read_text())
    times: dict[tuple[str, str], list[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            key = (event["name"][:-len("_kernel_time")], event["args"]["op_name"])
            times.setdefault(key, []).append(event["dur"] / 1e3)
    # Each node's first run is the untimed call.
    nodes = [{"node": name, "op": op, "ms": sum(values[1:]) / calls} for (name, op), values in times.items()]
    return sorted(nodes, key=lambda node: -node["ms"])


def profiles(faces: np.ndarray, batches: list[int], threads: int | None, top: int = 8) -> list[dict]:
    """Per-node times of the shipped fp32 and int8 files at each batch size; logs the slowest ``top`` nodes."""
    rows = []
    for batch in batches:
        lr = nchw(tiled(faces, batch))
        for precision in ("fp32", "int8"):
            nodes = node_profile(_shipped_model_dir() / MODEL_FILES[precision], lr, threads)
            total = sum(node["ms"] for node in nodes)
            log.info("%s, batch %d: %.2f ms in %d nodes per call", precision, batch, total, len(nodes))
            for node in nodes[:top]:
                log.info("  %-40s %-16s %7.3f ms  %4.1f %%", node["node"], node["op"], node["ms"],
                         100 * node["ms"] / total)
            rows.append({"precision": precision, "batch": batch, "total_ms": total, "nodes": nodes})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FaceEnhancer throughput against bare onnxruntime and torch.")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5, help="turns of each contender (1 timed call per turn "
                        "above batch 8, 10 below)")
    parser.add_argument("--threads", type=int, help="intra-op threads for onnxruntime and torch (default: theirs)")
    parser.add_argument("--weights", type=Path, help="trained generator weights for the torch baseline")
    parser.add_argument("--baseline", type=Path, help="a folder with the fp32 and int8 files of another export, "
                        "raced as bare sessions beside the shipped ones")
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--peak-gflops", type=float, help="this CPU's fp32 peak, if the estimate from "
                        "/proc/cpuinfo is wrong (e.g. one 512-bit FMA unit per core, or a turbo clock)")
    parser.add_argument("--profile", action="store_true", help="also the time of each node of the fp32 and "
                        "int8 files at each batch size (onnxruntime's profiler)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)

    faces = np.load(FACES)
    card = json.loads((_shipped_model_dir() / CARD_FILE).read_text())
    features = cpu_features()
    peak = fp32_peak_gflops(features, args.peak_gflops)
    results: dict[str, Any] = {
        "machine": {"processor": features["model"] or platform.machine(), "cpu_count": os.cpu_count(),
                    "physical_cores": features["cores"], "mhz": features["mhz"], "vector_isa": features["isa"],
                    "vnni": features["vnni"], "fp32_peak_gflops": peak,
                    "load_average": load_average(),
                    "onnxruntime": onnxruntime.__version__, "placeholder_model": card.get("placeholder")},
    }
    log.info("CPU: %s, %d physical cores at %s MHz, %s, VNNI: %s; fp32 FMA peak %s GFLOP/s", features["model"],
             features["cores"], features["mhz"], features["isa"], features["vnni"] or "none",
             f"{peak:.0f}" if peak else "unknown")
    log.info("== FaceEnhancer fp32 / int8 vs bare onnxruntime vs torch eager (CPU, faces/s) ==")
    results["cpu"] = cpu_comparison(faces, args.batches, args.rounds, args.threads, card, args.weights, peak,
                                    args.baseline)
    log.info("== session variants (bare onnxruntime, CPU, batch %d) ==", max(args.batches))
    results["cpu_variants"] = cpu_variants(faces, max(args.batches), args.rounds)
    if sys.platform.startswith("linux"):
        log.info("== resident memory after batches of %d (CPU) ==", max(args.batches))
        results["memory"] = resident_memory(max(args.batches))
    if args.profile:
        log.info("== slowest nodes (onnxruntime's profiler, CPU) ==")
        results["profile"] = profiles(faces, args.batches, args.threads)
    log.info("== SDK work outside onnxruntime ==")
    results["outside_onnxruntime"] = outside_onnxruntime(faces, args.batches, args.rounds)
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and _cuda_driver_present():
        log.info("== GPU (batch %d) ==", args.gpu_batch)
        results["gpu"] = gpu(faces, args.gpu_batch, args.rounds)
    write_results(results, args.json)


if __name__ == "__main__":
    main()
