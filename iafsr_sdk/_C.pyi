"""Native kernels of iafsr (compiled). Prefer :mod:`iafsr_sdk.ops`, which validates, copies strided views and
allocates outputs; these raw functions validate too, but take caller-allocated outputs and reject views that
are not C-contiguous.

Arrays are numpy arrays (host) or objects exposing ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA
tensors). dtypes: float32 (host and CUDA) or float16 (CUDA only); all arrays of a call on one device.
``stream`` is a ``cudaStream_t`` as an int (0: the legacy default stream); it is ignored for host arrays.
Errors: ``ValueError`` (shapes, layout, parameters), ``TypeError`` (dtypes, devices, non-arrays),
``iafsr_sdk.CudaUnavailableError`` (CUDA array without CUDA support, driver, device or kernel image).
The GIL is released while a kernel runs.
"""
from typing import Any, Dict

CUDA_MATCH_MAX_K: int
"""Largest ``k`` the CUDA ``match`` kernel takes."""

def build_info() -> Dict[str, Any]:
    """How this extension was built (recorded at build time): version, cuda, cuda_version, cudart, cuda_archs
    (space-separated), compiler, cxx_flags, nvcc, nvcc_flags."""

def cuda_device_count() -> int:
    """Number of usable CUDA devices; 0 without CUDA support, driver or device."""

def cuda_status() -> str:
    """One line on CUDA availability and, if unavailable, why."""

def num_threads() -> int:
    """Threads the CPU kernels use: ``IAFSR_NUM_THREADS`` if set to a positive integer, else the usable CPUs."""

def simd_level() -> str:
    """Vector code path of the CPU kernels in use: ``"avx512"``, ``"avx2"`` or ``"baseline"``."""

def _set_simd_level(level: str) -> str:
    """Forces ``"baseline"``, ``"avx2"``, ``"avx512"`` (if the CPU has it) or ``"auto"``; for tests."""

def _register_exceptions(cuda_unavailable: type) -> None:
    """Sets the exception class raised for CUDA being unavailable (done by iafsr_sdk._ext)."""

def pixel_shuffle_prelu(x: Any, slope: Any, r: int, out: Any, stream: int = 0) -> None:
    """out = PReLU(PixelShuffle(x, r), slope). x: (N, C*r*r, H, W); slope: (C,) or (1,), dtype of x;
    out: (N, C, H*r, W*r), dtype of x."""

def pixel_shuffle_prelu_backward(
    grad_out: Any, x: Any, slope: Any, r: int, grad_x: Any, grad_slope: Any, stream: int = 0
) -> None:
    """Gradients of pixel_shuffle_prelu. grad_out: (N, C, H*r, W*r); grad_x like x; grad_slope like slope."""

def l2_norm(x: Any, out: Any, stream: int = 0) -> None:
    """out[i] = ||x[i]||. x: (N, D); out: (N,) float32."""

def l2_normalize(x: Any, eps: float, out: Any, stream: int = 0) -> None:
    """out[i] = x[i] / max(||x[i]||, eps). eps finite and >= 0; out like x."""

def cosine_similarity(a: Any, b: Any, out: Any, stream: int = 0) -> None:
    """out[i] = cos(a[i], b[i]), 0 where a row has zero norm. a, b: (N, D); out: (N,) float32."""

def cosine_matrix(a: Any, b: Any, out: Any, stream: int = 0) -> None:
    """out[i, j] = cos(a[i], b[j]), 0 for zero-norm rows. a: (N, D); b: (M, D); out: (N, M) float32."""

def identity_loss(
    f_sr: Any, f_hr: Any, cos_loss: Any, mag_loss: Any, grad_cos: Any, grad_mag: Any, stream: int = 0
) -> None:
    """Per row: cos_loss = 1 - cos(f_sr, f_hr), mag_loss = | ||f_sr|| - ||f_hr|| | ((N,) float32), and their
    gradients with respect to f_sr, grad_cos and grad_mag (like f_sr). See iafsr_sdk.ops.identity_loss."""

def match(probes: Any, gallery: Any, k: int, indices: Any, scores: Any, stream: int = 0) -> None:
    """Top-k gallery rows by cosine per probe, best first, ties to the lower index, NaN ranked as -inf.
    probes: (N, D); gallery: (M, D); 1 <= k <= M (<= CUDA_MATCH_MAX_K on CUDA);
    indices: (N, k) int64; scores: (N, k) float32."""
