"""Benchmarks of the native kernels against their unfused baselines, measured in the same run.

    python -m benchmarks.kernels [--json PATH] [--repeats N] [--skip-match] [--skip-gpu]

CPU
  * Fused PixelShuffle(2)+PReLU, forward and backward, N=32, 256 -> 64 channels, 32x32 -> 64x64, against
    torch.nn.functional.pixel_shuffle + prelu (and autograd for the backward), with the achieved bandwidth
    next to a plain memory copy of the output-size array (numpy), both into a preallocated array and
    allocating a new one.
  * match (top-1 and top-5) of 20,000 probes against 3,661 gallery rows of 128 dims, against numpy
    normalize + matmul + argmax (argpartition for k > 1). Each method runs in its own subprocess, which
    reports its time and its peak resident memory above what it held before the call: /proc/self/status
    VmHWM after resetting it through /proc/self/clear_refs (Linux), which sees every allocation (numpy,
    BLAS, the extension), unlike tracemalloc.
GPU (when CUDA is usable, with cupy or torch)
  * The CUDA kernels against a device-to-device copy of the same size, and match on the device.

Times are the minimum and the median over repeats, the baselines interleaved with the kernels so that
load from other processes hits both alike. Bandwidth counts the bytes each call must read and write.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional


def _prefer_installed_package() -> None:
    """`python -m` puts the checkout first on sys.path; its iafsr_sdk lacks the compiled _C unless it was built
    in place, so an installed iafsr_sdk is preferred (as the tests do)."""
    root = str(Path(__file__).resolve().parent.parent)
    for entry in ("", root):
        while entry in sys.path:
            sys.path.remove(entry)
    sys.path.append(root)


_prefer_installed_package()

import numpy as np  # noqa: E402

from iafsr_sdk import ops  # noqa: E402
from iafsr_sdk._ext import build_info, cuda_available, cuda_status, extension  # noqa: E402

PS_SHAPE = (32, 256, 32, 32)  # N, C_in, H, W; r = 2 -> (32, 64, 64, 64)
MATCH_SHAPE = (20_000, 3_661, 128)


def timed(functions: Dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None] = lambda: None,
          warmup: int = 2) -> Dict[str, Dict[str, float]]:
    """Seconds per call of each function: min and median, the functions interleaved round by round."""
    for f in functions.values():
        for _ in range(warmup):
            f()
        sync()
    samples: Dict[str, List[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, f in functions.items():
            start = time.perf_counter()
            f()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {name: {"min_s": min(v), "median_s": statistics.median(v)} for name, v in samples.items()}


def row(table: List[dict], name: str, stats: Dict[str, float], moved_bytes: Optional[int] = None, **extra) -> dict:
    entry = {"name": name, "min_ms": stats["min_s"] * 1e3, "median_ms": stats["median_s"] * 1e3, **extra}
    if moved_bytes is not None:
        entry["bytes"] = moved_bytes
        entry["gb_per_s_best"] = moved_bytes / stats["min_s"] / 1e9
        entry["gb_per_s_median"] = moved_bytes / stats["median_s"] / 1e9
    table.append(entry)
    return entry


# ---------------------------------------------------------------------------------------------------- CPU

def one_thread(f: Callable[[], object]) -> Callable[[], object]:
    """`f` with the kernels limited to one thread (IAFSR_NUM_THREADS is read at each call)."""
    def run() -> object:
        previous = os.environ.get("IAFSR_NUM_THREADS")
        os.environ["IAFSR_NUM_THREADS"] = "1"
        try:
            return f()
        finally:
            if previous is None:
                del os.environ["IAFSR_NUM_THREADS"]
            else:
                os.environ["IAFSR_NUM_THREADS"] = previous
    return run


def bench_pixel_shuffle_cpu(repeats: int) -> dict:
    C = extension()
    rng = np.random.default_rng(0)
    n, c, h, w = PS_SHAPE
    x = rng.standard_normal(PS_SHAPE, dtype=np.float32)
    slope = rng.uniform(0.05, 0.3, c // 4).astype(np.float32)
    out = np.empty((n, c // 4, 2 * h, 2 * w), np.float32)
    grad = rng.standard_normal(out.shape, dtype=np.float32)
    grad_x, grad_slope = np.empty_like(x), np.empty_like(slope)
    copy_dst = np.empty_like(out)
    size = out.nbytes
    fwd: Dict[str, Callable[[], object]] = {
        "fused, ops facade (allocates)": lambda: ops.pixel_shuffle_prelu(x, slope, 2),
        "fused, _C into preallocated out": lambda: C.pixel_shuffle_prelu(x, slope, 2, out),
        "fused, _C into preallocated out, 1 thread": one_thread(lambda: C.pixel_shuffle_prelu(x, slope, 2, out)),
        "copy, numpy copyto into preallocated": lambda: np.copyto(copy_dst, out),
        "copy, numpy ndarray.copy (allocates)": lambda: out.copy(),
    }
    bwd: Dict[str, Callable[[], object]] = {
        "fused backward, ops facade (allocates)": lambda: ops.pixel_shuffle_prelu_backward(grad, x, slope, 2),
        "fused backward, _C into preallocated": lambda: C.pixel_shuffle_prelu_backward(grad, x, slope, 2, grad_x,
                                                                                        grad_slope),
    }
    torch_info = None
    try:
        import torch
        import torch.nn.functional as F

        xt, st, gt = torch.from_numpy(x), torch.from_numpy(slope), torch.from_numpy(grad)
        fwd["torch pixel_shuffle + prelu (unfused)"] = lambda: F.prelu(F.pixel_shuffle(xt, 2), st)
        fwd["fused, ops facade on torch tensors"] = lambda: ops.pixel_shuffle_prelu(xt, st, 2)
        xg, sg = xt.clone().requires_grad_(True), st.clone().requires_grad_(True)
        yg = F.prelu(F.pixel_shuffle(xg, 2), sg)
        bwd["torch autograd backward (unfused)"] = lambda: torch.autograd.grad(yg, (xg, sg), gt, retain_graph=True)
        torch_info = {"version": torch.__version__, "threads": torch.get_num_threads()}
    except ImportError:
        pass
    table: List[dict] = []
    moved = {"fused": 2 * size + slope.nbytes, "copy": 2 * size, "torch": 2 * size}
    for name, stats in timed(fwd, repeats).items():
        row(table, name, stats, moved[name.split()[0].rstrip(",")], pass_="forward")
    for name, stats in timed(bwd, repeats).items():
        row(table, name, stats, 3 * size + 2 * slope.nbytes, pass_="backward")
    by_name = {r["name"]: r for r in table}
    result = {"shape_in": list(PS_SHAPE), "shape_out": list(out.shape), "rows": table, "torch": torch_info}
    fused, facade = by_name["fused, _C into preallocated out"], by_name["fused, ops facade (allocates)"]
    copyto, copy_alloc = by_name["copy, numpy copyto into preallocated"], by_name["copy, numpy ndarray.copy (allocates)"]
    single = by_name["fused, _C into preallocated out, 1 thread"]
    result["bandwidth_vs_copy"] = {
        "preallocated": fused["gb_per_s_best"] / copyto["gb_per_s_best"],
        "preallocated_1_thread": single["gb_per_s_best"] / copyto["gb_per_s_best"],
        "allocating": facade["gb_per_s_best"] / copy_alloc["gb_per_s_best"],
    }
    if "torch pixel_shuffle + prelu (unfused)" in by_name:
        base = by_name["torch pixel_shuffle + prelu (unfused)"]
        result["speedup_vs_torch_forward"] = {"best": base["min_ms"] / facade["min_ms"],
                                              "median": base["median_ms"] / facade["median_ms"]}
        base_b = by_name["torch autograd backward (unfused)"]
        fused_b = by_name["fused backward, ops facade (allocates)"]
        result["speedup_vs_torch_backward"] = {"best": base_b["min_ms"] / fused_b["min_ms"],
                                               "median": base_b["median_ms"] / fused_b["median_ms"]}
    return result


_MATCH_CHILD = r"""
import json, os, sys, time
sys.path[:] = json.loads(sys.argv[7])  # the parent's import path: the same iafsr_sdk
import numpy as np
method, k, repeats, n, m, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:7])
rng = np.random.default_rng(0)
probes = rng.standard_normal((n, d), dtype=np.float32)
gallery = rng.standard_normal((m, d), dtype=np.float32)

def numpy_match():
    p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = p @ g.T
    if k == 1:
        top = scores.argmax(axis=1)[:, None]
    else:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
    return top, np.take_along_axis(scores, top, axis=1)

if method == "numpy":
    run = numpy_match
else:
    from iafsr_sdk import ops
    run = lambda: ops.match(probes, gallery, k)

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

before = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    how = "VmHWM after clear_refs"
except OSError:
    how = "VmHWM since start (clear_refs not writable)"
start = time.perf_counter()
first = run()
first_s = time.perf_counter() - start
peak = status("VmHWM")
del first
times = []
for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
print(json.dumps({"first_s": first_s, "times_s": times, "peak_delta_bytes": peak - before, "rss_before": before,
                  "method_of_memory": how}))
"""


def bench_match_cpu(repeats: int) -> dict:
    n, m, d = MATCH_SHAPE
    results: Dict[str, dict] = {}
    for k in (1, 5):
        for method in ("numpy", "iafsr"):
            # each method alternates with the other in separate processes, several rounds
            name = f"{method} k={k}"
            runs = []
            for _ in range(3):
                done = subprocess.run([sys.executable, "-c", _MATCH_CHILD, method, str(k), str(repeats), str(n),
                                       str(m), str(d), json.dumps(sys.path)], capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"match benchmark child failed: {done.stderr}")
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            times = [t for r in runs for t in r["times_s"]]
            results[name] = {"min_ms": min(times) * 1e3, "median_ms": statistics.median(times) * 1e3,
                             "first_call_ms": min(r["first_s"] for r in runs) * 1e3,
                             "peak_mb": max(r["peak_delta_bytes"] for r in runs) / 2**20,
                             "memory_method": runs[0]["method_of_memory"]}
    summary = {}
    for k in (1, 5):
        base, ours = results[f"numpy k={k}"], results[f"iafsr k={k}"]
        summary[f"k={k}"] = {"time_ratio_best": ours["min_ms"] / base["min_ms"],
                             "time_ratio_median": ours["median_ms"] / base["median_ms"],
                             "memory_ratio": ours["peak_mb"] / max(base["peak_mb"], 1e-9)}
    return {"shape": {"probes": n, "gallery": m, "dim": d}, "rows": results, "ratios": summary}


# ---------------------------------------------------------------------------------------------------- GPU

def bench_gpu(repeats: int) -> dict:
    try:
        import torch
        if not torch.cuda.is_available():
            raise ImportError
        lib = "torch"
    except ImportError:
        torch = None
        lib = "cupy"
        import cupy  # noqa: F401
    if lib == "torch":
        sync = torch.cuda.synchronize
        dev = lambda a, dtype: torch.tensor(a, dtype=getattr(torch, dtype), device="cuda")  # noqa: E731
        name = torch.cuda.get_device_name()
    else:
        import cupy
        sync = cupy.cuda.Device().synchronize
        dev = lambda a, dtype: cupy.asarray(a, dtype=dtype)  # noqa: E731
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    rng = np.random.default_rng(0)
    n, c, h, w = PS_SHAPE
    results: dict = {"device": name, "library": lib, "rows": []}
    for dtype in ("float32", "float16"):
        x = dev(rng.standard_normal(PS_SHAPE), dtype)
        slope = dev(rng.uniform(0.05, 0.3, c // 4), dtype)
        grad = dev(rng.standard_normal((n, c // 4, 2 * h, 2 * w)), dtype)
        size = int(np.prod(PS_SHAPE)) * (4 if dtype == "float32" else 2)
        fns: Dict[str, Callable[[], object]] = {
            f"{dtype} fused forward": lambda: ops.pixel_shuffle_prelu(x, slope, 2),
            f"{dtype} device copy": (lambda: x.clone()) if lib == "torch" else (lambda: x.copy()),
            f"{dtype} fused backward": lambda: ops.pixel_shuffle_prelu_backward(grad, x, slope, 2),
        }
        if lib == "torch":
            import torch.nn.functional as F
            fns[f"{dtype} torch pixel_shuffle + prelu"] = lambda: F.prelu(F.pixel_shuffle(x, 2), slope)
        for key, stats in timed(fns, repeats, sync, warmup=3).items():
            moved = 3 * size if "backward" in key else 2 * size
            row(results["rows"], key, stats, moved)
    for (pn, gm, d) in ((20_000, 3_661, 128), (100_000, 10_000, 128)):
        probes = dev(rng.standard_normal((pn, d)), "float32")
        gallery = dev(rng.standard_normal((gm, d)), "float32")
        fns = {f"match {pn}x{gm} k={k}": (lambda k=k: ops.match(probes, gallery, k)) for k in (1, 5)}
        if lib == "torch":
            def torch_top(k):
                s = torch.nn.functional.normalize(probes, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
                return torch.topk(s, k, dim=1)
            fns.update({f"torch normalize+matmul+topk {pn}x{gm} k={k}": (lambda k=k: torch_top(k)) for k in (1, 5)})
        for key, stats in timed(fns, max(3, repeats // 4), sync, warmup=1).items():
            row(results["rows"], key, stats)
    return results


# ---------------------------------------------------------------------------------------------------- main

def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpus_usable": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(),
            "python": platform.python_version(), "numpy": np.__version__, "build": build_info(),
            "cuda": cuda_status()}


def print_table(title: str, rows: List[dict]) -> None:
    print(f"\n{title}")
    print(f"  {'':50s} {'best ms':>9s} {'median ms':>10s} {'GB/s best':>10s} {'GB/s med':>9s}")
    for r in rows:
        gb = f"{r['gb_per_s_best']:10.1f} {r['gb_per_s_median']:9.1f}" if "gb_per_s_best" in r else ""
        print(f"  {r['name']:50s} {r['min_ms']:9.2f} {r['median_ms']:10.2f} {gb}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--skip-match", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true")
    args = parser.parse_args(argv)

    report: dict = {"machine": machine()}
    print(f"CPU: {report['machine']['cpu']}, {report['machine']['cpus_usable']} usable CPUs, load average "
          f"{' '.join(f'{v:.2f}' for v in report['machine']['load_average'])}; kernels: "
          f"{report['machine']['build']['cpu_simd']}, {report['machine']['build']['cpu_threads']} threads")

    ps = report["pixel_shuffle_prelu_cpu"] = bench_pixel_shuffle_cpu(args.repeats)
    print_table(f"PixelShuffle(2)+PReLU on the CPU, {tuple(ps['shape_in'])} -> {tuple(ps['shape_out'])} float32",
                ps["rows"])
    ratios = ps["bandwidth_vs_copy"]
    print(f"  fused bandwidth / copy bandwidth (best): {ratios['preallocated']:.2f} (preallocated, all threads), "
          f"{ratios['preallocated_1_thread']:.2f} (preallocated, 1 thread, as the copy), "
          f"{ratios['allocating']:.2f} (allocating)")
    if "speedup_vs_torch_forward" in ps:
        f, b = ps["speedup_vs_torch_forward"], ps["speedup_vs_torch_backward"]
        print(f"  speed-up over torch: forward {f['best']:.2f}x (best) {f['median']:.2f}x (median); "
              f"backward {b['best']:.2f}x (best) {b['median']:.2f}x (median)")

    if not args.skip_match:
        mt = report["match_cpu"] = bench_match_cpu(max(3, args.repeats // 6))
        print(f"\nmatch on the CPU, {mt['shape']['probes']} probes x {mt['shape']['gallery']} gallery x "
              f"{mt['shape']['dim']} dims (memory: peak RSS above the pre-call RSS, one subprocess per run)")
        print(f"  {'':22s} {'best ms':>9s} {'median ms':>10s} {'first call ms':>14s} {'peak MB':>9s}")
        for name, r in mt["rows"].items():
            print(f"  {name:22s} {r['min_ms']:9.1f} {r['median_ms']:10.1f} {r['first_call_ms']:14.1f} "
                  f"{r['peak_mb']:9.1f}")
        for k, r in mt["ratios"].items():
            print(f"  {k}: time iafsr/numpy {r['time_ratio_best']:.2f} (best) {r['time_ratio_median']:.2f} (median), "
                  f"peak memory iafsr/numpy {r['memory_ratio']:.3f}")

    if not args.skip_gpu and cuda_available():
        gpu = report["gpu"] = bench_gpu(args.repeats)
        print_table(f"GPU ({gpu['device']}, arrays from {gpu['library']})", gpu["rows"])
    elif not args.skip_gpu:
        print(f"\nGPU: skipped ({cuda_status()})")

    report["machine"]["load_average_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
