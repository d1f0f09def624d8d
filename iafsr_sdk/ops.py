"""Native kernels of iafsr: fused PixelShuffle+PReLU, row norms, cosine similarity, the identity loss of the
paper and top-k matching.

Arrays
    Inputs may be numpy arrays, torch tensors (CPU or CUDA) or cupy arrays; all arguments of one call must
    come from the same library and device. Outputs are new arrays of that same library and device (numpy in,
    numpy out; cupy in, cupy out; torch in, torch out). CUDA work runs on the caller's current stream
    (``cupy.cuda.get_current_stream()`` / ``torch.cuda.current_stream()``) and is not waited for.
    numpy alone is enough: cupy and torch are used only when their arrays are passed.

dtypes
    float32 everywhere; float16 on CUDA only. Other dtypes raise ``TypeError`` (nothing is converted
    silently). Arithmetic is float32 with float64 accumulation of row sums; scalars per row (norms, cosines,
    losses, scores) are returned as float32, arrays shaped like an input keep its dtype.

Layout
    Views that are not C-contiguous (transposes, slices with steps, broadcasts, negative strides, misaligned
    buffers) are copied to a contiguous array first, so every view gives the right answer at the cost of a copy.
    The raw functions of ``iafsr_sdk._C`` do not copy: they reject such views with ``ValueError``.

Special values
    Empty batches give empty results of the right shape. Zero-norm rows: ``l2_normalize`` gives zeros (the norm
    is clamped to ``eps``), cosine-based results treat the cosine as 0 (see each function). NaN or Inf in a row
    make that row's results NaN or Inf (IEEE propagation); they are never replaced by finite values. In
    ``match`` a NaN score ranks as -inf.

Errors
    Wrong types, dtypes or devices raise ``TypeError``; wrong ranks or shapes and bad parameters raise
    ``ValueError``, naming what was received. CUDA arrays with a build without CUDA, or without a usable
    driver/device, raise :class:`~iafsr_sdk.CudaUnavailableError`; a missing extension raises
    :class:`~iafsr_sdk.ExtensionNotBuiltError` at call time (importing this module always works).

CPU threads
    The CPU kernels use ``IAFSR_NUM_THREADS`` threads if that is set to a positive integer, else every CPU the
    process may run on, and release the GIL while they run. Their vector code (AVX2/FMA, AVX-512) is chosen at
    run time from what the CPU supports; ``IAFSR_SIMD=baseline|avx2|avx512`` caps it.

Gradients
    These functions do not record autograd history; for training, wrap them in a ``torch.autograd.Function``
    (``pixel_shuffle_prelu_backward`` and ``identity_loss`` return the needed gradients).
"""
from __future__ import annotations

import numbers
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ._ext import extension

__all__ = [
    "IdentityLoss",
    "Match",
    "cosine_matrix",
    "cosine_similarity",
    "identity_loss",
    "l2_norm",
    "l2_normalize",
    "match",
    "pixel_shuffle_prelu",
    "pixel_shuffle_prelu_backward",
    "quality",
]

Array = Any
"""A ``numpy.ndarray``, ``cupy.ndarray`` or ``torch.Tensor``."""


class IdentityLoss(NamedTuple):
    """Per-row terms of the identity loss and their gradients with respect to ``f_sr``."""

    cos_loss: Array  # (N,) float32: 1 - cos(f_sr, f_hr)           (paper eq. 1)
    mag_loss: Array  # (N,) float32: | ||f_sr|| - ||f_hr|| |        (paper eq. 2)
    grad_cos: Array  # (N, D): d cos_loss[i] / d f_sr[i]
    grad_mag: Array  # (N, D): d mag_loss[i] / d f_sr[i]


class Match(NamedTuple):
    """Top-k gallery rows per probe, best first."""

    indices: Array  # (N, k) int64 gallery row indices
    scores: Array  # (N, k) float32 cosine similarities


def _aligned_empty(shape: Tuple[int, ...], dtype: str) -> np.ndarray:
    """``numpy.empty`` with the data on a 64-byte (cache line) boundary: lets the kernels write large outputs
    with streaming stores, which need whole lines."""
    itemsize = np.dtype(dtype).itemsize
    nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class _Call:
    """The array arguments of one call: checked to come from one library and device, made contiguous, and
    used as the template for the outputs."""

    def __init__(self, op: str, arrays: Dict[str, Array]):
        self.op = op
        self.library = ""
        self.cuda = False
        self.device: Any = None
        self._first = ""
        self._native: Dict[str, Any] = {}
        for name, value in arrays.items():
            self._add(name, value)

    def _where(self) -> str:
        return f"a CUDA {self.library} array" if self.cuda else f"a host {self.library} array"

    def _add(self, name: str, value: Any) -> None:
        library, cuda, device = self._classify(name, value)
        if not self.library:
            self.library, self.cuda, self.device, self._first = library, cuda, device, name
        elif (library, cuda) != (self.library, self.cuda) or (cuda and device != self.device):
            other = f"a CUDA {library} array" if cuda else f"a host {library} array"
            where = f" on {self.device}" if cuda and library == self.library else ""
            raise TypeError(f"{self.op}: {self._first} is {self._where()}{where} but {name} is {other}"
                            f"{f' on {device}' if where else ''}; pass all arrays from one library and device")
        self._check_dtype(name, value)
        self._native[name] = self._contiguous(value)

    def _classify(self, name: str, value: Any) -> Tuple[str, bool, Any]:
        if isinstance(value, np.ndarray):
            if isinstance(value, np.ma.MaskedArray):
                raise TypeError(f"{self.op}: {name} is a masked array; pass a plain array")
            return "numpy", False, None
        module = type(value).__module__.split(".")[0]
        if module == "cupy" and hasattr(value, "__cuda_array_interface__"):
            return "cupy", True, value.device
        if module == "torch" and hasattr(value, "is_cuda"):
            if value.device.type not in ("cpu", "cuda"):
                raise TypeError(f"{self.op}: {name} is a torch tensor on {value.device}; only cpu and cuda are supported")
            return "torch", bool(value.is_cuda), value.device
        raise TypeError(f"{self.op}: expected {name} to be a numpy array, a cupy array or a torch tensor, "
                        f"got {type(value).__qualname__}")

    def dtype_name(self, value: Any) -> str:
        return str(value.dtype).replace("torch.", "")

    def _check_dtype(self, name: str, value: Any) -> None:
        dtype = self.dtype_name(value)
        if self.library == "numpy" and value.dtype.byteorder == ">":
            dtype = value.dtype.str  # '>f4': not the native float32
        if dtype == "float32" or (dtype == "float16" and self.cuda):
            return
        if dtype == "float16":
            raise TypeError(f"{self.op}: float16 is supported on CUDA only; {name} is a float16 host array "
                            "(convert it to float32)")
        raise TypeError(f"{self.op}: expected {name} to be float32 (or float16 on CUDA), got {dtype}")

    def _contiguous(self, value: Any) -> Any:
        if self.library == "numpy":
            return np.require(value, requirements=["C", "A"])
        if self.library == "cupy":
            return sys.modules["cupy"].ascontiguousarray(value)
        value = value.detach().contiguous()
        return value if self.cuda else value.numpy()

    def native(self, name: str) -> Any:
        """The argument as handed to the extension."""
        return self._native[name]

    def empty(self, shape: Sequence[int], dtype: str) -> Tuple[Array, Any]:
        """A new output of the caller's library and device: (returned array, what the extension writes)."""
        shape = tuple(int(d) for d in shape)
        if self.library == "numpy":
            out = _aligned_empty(shape, dtype)
            return out, out
        if self.library == "cupy":
            cupy = sys.modules["cupy"]
            with self.device:
                out = cupy.empty(shape, dtype=dtype)
            return out, out
        torch = sys.modules["torch"]
        if not self.cuda:  # numpy's allocation is cheaper to fault in than torch's; the tensor shares it
            out = _aligned_empty(shape, dtype)
            return torch.from_numpy(out), out
        out = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
        return out, out

    def stream(self) -> int:
        """The caller's current CUDA stream on the arrays' device (0 on the host)."""
        if not self.cuda:
            return 0
        if self.library == "cupy":
            with self.device:
                return int(sys.modules["cupy"].cuda.get_current_stream().ptr)
        return int(sys.modules["torch"].cuda.current_stream(self.device).cuda_stream)


def _check_rank(op: str, name: str, value: Array, ndim: int, layout: str) -> Tuple[int, ...]:
    shape = tuple(int(d) for d in value.shape)
    if len(shape) != ndim:
        hint = "; use x[None] for a single row" if ndim == 2 and len(shape) == 1 else ""
        raise ValueError(f"{op}: expected {name} to be a {ndim}-D {layout} array, got {len(shape)}-D with shape "
                         f"{_shape_text(shape)}{hint}")
    return shape


def _check_int(op: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: expected {name} to be an int, got {type(value).__qualname__}")
    if int(value) < minimum:
        raise ValueError(f"{op}: expected {name} >= {minimum}, got {int(value)}")
    return int(value)


def _same_dtype(op: str, call: _Call, first: Tuple[str, Array], second: Tuple[str, Array]) -> None:
    a, b = call.dtype_name(first[1]), call.dtype_name(second[1])
    if a != b:
        raise TypeError(f"{op}: {second[0]} must have the dtype of {first[0]} ({a}), got {b}")


def _rows(op: str, names: Sequence[str], arrays: Sequence[Array]) -> Tuple[_Call, List[Tuple[int, ...]]]:
    call = _Call(op, dict(zip(names, arrays)))
    shapes = [_check_rank(op, name, a, 2, "(rows, features)") for name, a in zip(names, arrays)]
    for name, a in zip(names[1:], arrays[1:]):
        _same_dtype(op, call, (names[0], arrays[0]), (name, a))
    return call, shapes


def _shuffle_shapes(op: str, call: _Call, x: Array, slope: Array, r: Any) -> Tuple[int, Tuple[int, ...]]:
    n, channels, h, w = _check_rank(op, "x", x, 4, "NCHW")
    r = _check_int(op, "r", r, 1)
    if channels % (r * r):
        raise ValueError(f"{op}: expected the channel count of x to be divisible by r*r = {r * r}, got {channels} "
                         f"channels (x has shape {_shape_text(x.shape)})")
    channels_out = channels // (r * r)
    (slope_len,) = _check_rank(op, "slope", slope, 1, "(channels,)")
    if slope_len not in (channels_out, 1):
        raise ValueError(f"{op}: expected slope to have shape ({channels_out},) (one per output channel) or (1,), "
                         f"got {_shape_text(slope.shape)}")
    _same_dtype(op, call, ("x", x), ("slope", slope))
    return r, (n, channels_out, h * r, w * r)


def pixel_shuffle_prelu(x: Array, slope: Array, r: int) -> Array:
    """PixelShuffle(r) followed by channel-wise PReLU, in one pass.

    Same result as ``torch.nn.functional.prelu(torch.nn.functional.pixel_shuffle(x, r), slope)`` (and ONNX
    DepthToSpace in CRD mode followed by PRelu): ``x`` of shape (N, C*r*r, H, W) gives (N, C, H*r, W*r) with
    ``y = v if v > 0 else slope[c] * v``. ``slope`` has shape (C,) or (1,) (one slope for all channels).
    """
    op = "pixel_shuffle_prelu"
    call = _Call(op, {"x": x, "slope": slope})
    r, out_shape = _shuffle_shapes(op, call, x, slope, r)
    out, out_native = call.empty(out_shape, call.dtype_name(x))
    extension().pixel_shuffle_prelu(call.native("x"), call.native("slope"), r, out_native, call.stream())
    return out


def pixel_shuffle_prelu_backward(grad_out: Array, x: Array, slope: Array, r: int) -> Tuple[Array, Array]:
    """Gradients of :func:`pixel_shuffle_prelu`: ``(grad_x, grad_slope)`` shaped like ``x`` and ``slope``.

    ``grad_x = pixel_unshuffle(grad_out * (v > 0 ? 1 : slope))`` and ``grad_slope[c]`` sums ``grad_out * v``
    over the positions of channel c where ``v <= 0`` (all channels for a (1,) slope), as torch's PReLU.
    """
    op = "pixel_shuffle_prelu_backward"
    call = _Call(op, {"grad_out": grad_out, "x": x, "slope": slope})
    r, out_shape = _shuffle_shapes(op, call, x, slope, r)
    got = _check_rank(op, "grad_out", grad_out, 4, "NCHW")
    if got != out_shape:
        raise ValueError(f"{op}: expected grad_out to have the output shape {_shape_text(out_shape)}, got "
                         f"{_shape_text(got)}")
    _same_dtype(op, call, ("x", x), ("grad_out", grad_out))
    grad_x, grad_x_native = call.empty(x.shape, call.dtype_name(x))
    grad_slope, grad_slope_native = call.empty(slope.shape, call.dtype_name(slope))
    extension().pixel_shuffle_prelu_backward(call.native("grad_out"), call.native("x"), call.native("slope"), r,
                                             grad_x_native, grad_slope_native, call.stream())
    return grad_x, grad_slope


def l2_norm(x: Array) -> Array:
    """L2 norm of each row of a 2-D (N, D) array: (N,) float32 (NaN/Inf propagate)."""
    call, ((rows, _),) = _rows("l2_norm", ["x"], [x])
    out, out_native = call.empty((rows,), "float32")
    extension().l2_norm(call.native("x"), out_native, call.stream())
    return out


def quality(features: Array) -> Array:
    """Quality score of each face: the L2 norm (magnitude) of its raw, un-normalized recognition feature.

    The paper (Chen et al. 2020, §II-A, Fig. 2c) ties the feature magnitude to face quality: lower-resolution
    or degraded faces give smaller magnitudes. Same values as :func:`l2_norm`; compare scores only between
    features of the same recognizer.
    """
    call, ((rows, _),) = _rows("quality", ["features"], [features])
    out, out_native = call.empty((rows,), "float32")
    extension().l2_norm(call.native("features"), out_native, call.stream())
    return out


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """Each row divided by ``max(||row||, eps)`` (as ``torch.nn.functional.normalize``): zero rows stay zero.

    ``eps`` must be finite and >= 0; with ``eps=0`` a zero row gives NaN. Same shape and dtype as ``x``.
    """
    op = "l2_normalize"
    call, _ = _rows(op, ["x"], [x])
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{op}: expected eps to be a float, got {type(eps).__qualname__}")
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"{op}: expected a finite eps >= 0, got {eps}")
    out, out_native = call.empty(x.shape, call.dtype_name(x))
    extension().l2_normalize(call.native("x"), float(eps), out_native, call.stream())
    return out


def cosine_similarity(a: Array, b: Array) -> Array:
    """Cosine similarity of row pairs: ``out[i] = cos(a[i], b[i])``, (N,) float32.

    Where ``a[i]`` or ``b[i]`` has zero norm the cosine is 0.
    """
    op = "cosine_similarity"
    call, (shape_a, shape_b) = _rows(op, ["a", "b"], [a, b])
    if shape_a != shape_b:
        raise ValueError(f"{op}: a and b must have the same shape, got {_shape_text(shape_a)} and "
                         f"{_shape_text(shape_b)}")
    out, out_native = call.empty((shape_a[0],), "float32")
    extension().cosine_similarity(call.native("a"), call.native("b"), out_native, call.stream())
    return out


def cosine_matrix(a: Array, b: Array) -> Array:
    """All cosine similarities between the rows of ``a`` (N, D) and ``b`` (M, D): (N, M) float32.

    Zero-norm rows give 0. For top-k search over a large gallery use :func:`match`, which never holds the
    whole matrix.
    """
    op = "cosine_matrix"
    call, (shape_a, shape_b) = _rows(op, ["a", "b"], [a, b])
    if shape_a[1] != shape_b[1]:
        raise ValueError(f"{op}: a and b must have the same number of features, got shapes {_shape_text(shape_a)} "
                         f"and {_shape_text(shape_b)}")
    out, out_native = call.empty((shape_a[0], shape_b[0]), "float32")
    extension().cosine_matrix(call.native("a"), call.native("b"), out_native, call.stream())
    return out


def identity_loss(f_sr: Array, f_hr: Array) -> IdentityLoss:
    """Identity loss of the paper per row, with its gradients with respect to ``f_sr``, in one kernel.

    For row i, with a = f_sr[i], b = f_hr[i] (raw, un-normalized recognition features):

    - ``cos_loss[i] = 1 - cos(a, b)`` (eq. 1) and ``grad_cos[i] = (cos * a / |a|^2) - b / (|a| |b|)``;
    - ``mag_loss[i] = | |a| - |b| |`` (eq. 2) and ``grad_mag[i] = sign(|a| - |b|) * a / |a|``.

    Each gradient row is the derivative of that row's own term; for the paper's batch loss
    ``mean(beta1 * cos_loss + beta2 * mag_loss)`` use ``(beta1 * grad_cos + beta2 * grad_mag) / N``.
    Zero-norm rows: if a or b is zero, cos = 0 (cos_loss = 1) and grad_cos = 0; if a is zero or |a| = |b|,
    grad_mag = 0 (the subgradients torch uses). NaN/Inf propagate to that row's results.
    """
    op = "identity_loss"
    call, (shape_sr, shape_hr) = _rows(op, ["f_sr", "f_hr"], [f_sr, f_hr])
    if shape_sr != shape_hr:
        raise ValueError(f"{op}: f_sr and f_hr must have the same shape, got {_shape_text(shape_sr)} and "
                         f"{_shape_text(shape_hr)}")
    rows = shape_sr[0]
    cos_loss, cos_native = call.empty((rows,), "float32")
    mag_loss, mag_native = call.empty((rows,), "float32")
    grad_cos, grad_cos_native = call.empty(shape_sr, call.dtype_name(f_sr))
    grad_mag, grad_mag_native = call.empty(shape_sr, call.dtype_name(f_sr))
    extension().identity_loss(call.native("f_sr"), call.native("f_hr"), cos_native, mag_native, grad_cos_native,
                              grad_mag_native, call.stream())
    return IdentityLoss(cos_loss, mag_loss, grad_cos, grad_mag)


def match(probes: Array, gallery: Array, k: int = 1) -> Match:
    """The ``k`` gallery rows most similar (by cosine) to each probe row, best first.

    ``probes`` (N, D) and ``gallery`` (M, D) are raw or normalized features (rows are normalized inside).
    Returns ``Match(indices, scores)``: (N, k) int64 and (N, k) float32. Scores are computed block by block and
    never held as a full (N, M) matrix. Equal scores are ordered by lower gallery index; a NaN score ranks as
    -inf; a zero-norm row scores 0 against everything. ``k`` must be between 1 and M (``ValueError`` otherwise,
    also for an empty gallery); on CUDA ``k`` is at most 1024.
    """
    op = "match"
    call, (shape_p, shape_g) = _rows(op, ["probes", "gallery"], [probes, gallery])
    if shape_p[1] != shape_g[1]:
        raise ValueError(f"{op}: probes and gallery must have the same number of features, got shapes "
                         f"{_shape_text(shape_p)} and {_shape_text(shape_g)}")
    k = _check_int(op, "k", k, 1)
    if k > shape_g[0]:
        raise ValueError(f"{op}: k = {k} exceeds the gallery size ({shape_g[0]} rows)")
    max_k: Optional[int] = extension().CUDA_MATCH_MAX_K if call.cuda else None
    if max_k is not None and k > max_k:
        raise ValueError(f"{op}: k = {k} exceeds the largest k of the CUDA kernel ({max_k})")
    indices, indices_native = call.empty((shape_p[0], k), "int64")
    scores, scores_native = call.empty((shape_p[0], k), "float32")
    extension().match(call.native("probes"), call.native("gallery"), k, indices_native, scores_native, call.stream())
    return Match(indices, scores)
