"""Build of the iafsr_sdk package and its native extension iafsr_sdk._C.

CPU kernels always build. CUDA kernels (csrc/ops/cuda/*.cu) build when nvcc is found, for sm_80 and sm_90
plus PTX for compute_90, with the CUDA runtime linked statically, so one build imports and runs (on the CPU)
on a machine without a GPU or driver. Environment:
  IAFSR_CUDA=auto|0|1     auto (default): CUDA if nvcc is found; 0: never; 1: required (fails without nvcc)
  IAFSR_CUDA_ARCHS="80;90" SASS targets; PTX is added for the highest
  CUDA_HOME               CUDA toolkit to use (else nvcc on PATH, else /usr/local/cuda)
  IAFSR_BUILD_JOBS        parallel compile jobs (default: all CPUs)
Only setuptools and pybind11 are needed to build: no torch, numpy or onnx is imported here.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

VERSION = "0.1.0"
ROOT = Path(__file__).resolve().parent


def report(message):
    print(f"iafsr build: {message}", file=sys.stderr, flush=True)


def nvcc_candidates():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return [Path(home) / "bin" / "nvcc"]  # an explicit CUDA_HOME is the only place looked at
    found = shutil.which("nvcc")
    return ([Path(found)] if found else []) + [Path("/usr/local/cuda/bin/nvcc")]


def toolkit_root(nvcc):
    """The toolkit directory of `nvcc`, also when nvcc is a wrapper script outside it."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return Path(os.environ.get("CUDA_HOME") or os.environ["CUDA_PATH"])
    root = nvcc.resolve().parent.parent
    if (root / "include" / "cuda_runtime.h").is_file():
        return root
    dryrun = subprocess.run([str(nvcc), "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                            capture_output=True, text=True)
    here = re.search(r"_HERE_=(\S+)", dryrun.stdout + dryrun.stderr)
    return Path(here.group(1)).parent if here else root


def find_cuda():
    """(description of the toolkit, or None, and why not)."""
    for nvcc in nvcc_candidates():
        if not (nvcc.is_file() and os.access(nvcc, os.X_OK)):
            continue
        root = toolkit_root(nvcc)
        lib_dirs = [root / "lib64", root / "lib", root / "targets" / "x86_64-linux" / "lib",
                    root / "targets" / "sbsa-linux" / "lib"]
        cudart = next((d / "libcudart_static.a" for d in lib_dirs if (d / "libcudart_static.a").is_file()), None)
        include = next((d for d in [root / "include", root / "targets" / "x86_64-linux" / "include"]
                        if (d / "cuda_runtime.h").is_file()), None)
        if cudart is None or include is None:
            return None, f"{nvcc} was found but its toolkit at {root} lacks libcudart_static.a or cuda_runtime.h"
        version = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
        release = re.search(r"V(\d+\.\d+\.\d+)", version)
        return {"nvcc": str(nvcc), "root": str(root), "cudart": str(cudart), "include": str(include),
                "version": release.group(1) if release else "unknown"}, ""
    looked = ", ".join(str(p) for p in nvcc_candidates()) or "nowhere"
    return None, f"nvcc not found (looked at {looked})"


def cuda_archs():
    archs = [a for a in re.split(r"[;, ]+", os.environ.get("IAFSR_CUDA_ARCHS", "80;90")) if a]
    if not archs or not all(a.isdigit() for a in archs):
        raise SystemExit(f"IAFSR_CUDA_ARCHS must list compute capabilities like '80;90', got {archs!r}")
    return sorted(archs, key=int)


def decide_cuda():
    mode = os.environ.get("IAFSR_CUDA", "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"IAFSR_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        report("CUDA disabled (IAFSR_CUDA=0): building CPU kernels only")
        return None
    cuda, why_not = find_cuda()
    if cuda is None:
        if mode == "1":
            raise SystemExit(
                f"iafsr build: IAFSR_CUDA=1 but {why_not}. Install the CUDA toolkit and put nvcc on PATH, or set "
                "CUDA_HOME to the toolkit directory; or build the CPU-only package with IAFSR_CUDA=0.")
        report(f"CUDA disabled (IAFSR_CUDA=auto and {why_not}): building CPU kernels only")
        return None
    cuda["archs"] = cuda_archs()
    report(f"CUDA enabled (IAFSR_CUDA={mode}): nvcc {cuda['version']} at {cuda['nvcc']}, "
           f"SASS for {' '.join('sm_' + a for a in cuda['archs'])} + PTX compute_{cuda['archs'][-1]}, "
           f"runtime linked statically from {cuda['cudart']}")
    return cuda


def nvcc_flags(cuda):
    flags = ["-O3", "-std=c++17", "-cudart", "static", "-Xcompiler", "-fPIC,-fvisibility=hidden", "-DWITH_CUDA"]
    for arch in cuda["archs"]:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    top = cuda["archs"][-1]
    flags += ["-gencode", f"arch=compute_{top},code=compute_{top}"]
    if os.environ.get("CXX"):
        flags += ["-ccbin", os.environ["CXX"]]
    return flags


def c_string(text):
    return json.dumps(text)  # a valid C string literal for ASCII text


class BuildExtension(build_ext):
    """pybind11's build_ext, plus: .cu sources compiled by nvcc, and a generated header recording the build."""

    cuda = None

    def build_extensions(self):
        cxx = self.compiler.compiler_so
        version = subprocess.run([cxx[0], "--version"], capture_output=True, text=True).stdout.splitlines()
        generated = Path(self.build_temp) / "generated"
        generated.mkdir(parents=True, exist_ok=True)
        info = {
            "VERSION": VERSION,
            "COMPILER": version[0] if version else cxx[0],
            "CXX_FLAGS": " ".join(cxx[1:] + self.extensions[0].extra_compile_args),
            "NVCC": f"{self.cuda['version']} ({self.cuda['nvcc']})" if self.cuda else "",
            "NVCC_FLAGS": " ".join(nvcc_flags(self.cuda)) if self.cuda else "",
            "CUDA_ARCHS": " ".join([f"sm_{a}" for a in self.cuda["archs"]] + [f"compute_{self.cuda['archs'][-1]}"])
            if self.cuda else "",
        }
        header = "".join(f"#define IAFSR_BUILD_{key} {c_string(value)}\n" for key, value in info.items())
        path = generated / "iafsr_build_info.h"
        if not path.is_file() or path.read_text() != header:
            path.write_text(header)
        for ext in self.extensions:
            ext.include_dirs.append(str(generated))
            ext.depends.append(str(path))  # a changed configuration (e.g. IAFSR_CUDA) rebuilds the extension
        report(f"C++ compiler: {info['COMPILER']}")

        if self.cuda:
            self.compiler.src_extensions.append(".cu")
            compile_cxx = self.compiler._compile
            flags = nvcc_flags(self.cuda)
            nvcc = self.cuda["nvcc"]

            def compile_any(obj, src, ext, cc_args, extra_postargs, pp_opts):
                if src.endswith(".cu"):
                    self.spawn([nvcc, "-c", src, "-o", obj, *pp_opts, *flags])
                else:
                    compile_cxx(obj, src, ext, cc_args, extra_postargs, pp_opts)

            self.compiler._compile = compile_any
        super().build_extensions()


def extension(cuda):
    sources = ["csrc/bindings.cpp", "csrc/common.cpp"]
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "ops").glob("*.cpp"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "ops" / "cpu").glob("*.cpp"))
    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "ops" / "cuda").glob("*.cu"))
    headers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.h"))
    headers += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cuh"))
    ext = Pybind11Extension(
        "iafsr_sdk._C",
        sources,
        cxx_std=17,
        depends=headers + cuda_sources,  # also puts them in the sdist
        extra_compile_args=["-O3", "-Wall", "-pthread"],
        extra_link_args=["-pthread"],
    )
    if cuda:
        ext.sources += cuda_sources  # appended only when CUDA is enabled
        ext.define_macros.append(("WITH_CUDA", None))
        ext.include_dirs.append(cuda["include"])
        ext.extra_objects.append(cuda["cudart"])
        ext.libraries += ["dl", "rt", "pthread"]
    return ext


CUDA = decide_cuda()
BuildExtension.cuda = CUDA
ParallelCompile("IAFSR_BUILD_JOBS", default=0).install()

setup(
    ext_modules=[extension(CUDA)],
    cmdclass={"build_ext": BuildExtension},
)
