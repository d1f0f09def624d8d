"""Kernels of iafsr_sdk.ops (and the raw iafsr_sdk._C functions) against plain NumPy references of the unfused
computation, and against torch where it is installed.

Tolerances follow the flash-attention rule: a kernel's largest error against a float64 reference may be at
most twice that of a same-precision NumPy reference, plus one unit of the output dtype at the data's scale
(so that a same-precision reference that happens to be exact does not demand bit-exactness from a different
summation order). Element-wise results that involve a single rounding are compared exactly.
"""
import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from iafsr_sdk import ops
from iafsr_sdk._ext import CudaUnavailableError, ExtensionNotBuiltError, build_info, cuda_available, extension

C = extension()
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_CUPY = importlib.util.find_spec("cupy") is not None

DEVICE_DTYPES = [
    pytest.param("cpu", "float32", id="cpu-float32"),
    pytest.param("cuda", "float32", marks=pytest.mark.cuda, id="cuda-float32"),
    pytest.param("cuda", "float16", marks=pytest.mark.cuda, id="cuda-float16"),
]
_LEVELS = ["baseline", "avx2", "avx512"]
SIMD_LEVELS = _LEVELS[: _LEVELS.index(C.simd_level()) + 1]  # every CPU code path this machine can run


# ---------------------------------------------------------------------------------------------------- helpers

def to_device(a, device, dtype):
    """A numpy array as `dtype` on `device` (cupy where installed, else torch, for CUDA)."""
    a = np.asarray(a).astype(dtype)
    if device == "cpu":
        return a
    if HAS_CUPY:
        import cupy
        return cupy.asarray(a)
    import torch
    return torch.from_numpy(a).cuda()


def host(x):
    """Any supported array as a numpy array."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("cupy"):
        import cupy
        return cupy.asnumpy(x)
    return x.detach().cpu().numpy()


def rounded(a, dtype):
    """Inputs as the kernel sees them (rounded to dtype), in float64."""
    return np.asarray(a).astype(dtype).astype(np.float64)


def assert_within_reference_error(out, exact, same_precision):
    """|out - exact| <= 2 |same_precision - exact| + eps(out dtype) * scale, NaNs at the same places."""
    out = host(out)
    eps = np.finfo(out.dtype).eps
    out, exact, same = (np.asarray(v, dtype=np.float64) for v in (out, exact, host(same_precision)))
    assert out.shape == exact.shape
    np.testing.assert_array_equal(np.isnan(out), np.isnan(exact))
    finite = np.isfinite(exact)
    if not finite.any():
        return
    scale = max(1.0, float(np.abs(exact[finite]).max()))
    error = float(np.abs(out[finite] - exact[finite]).max())
    reference_error = float(np.nan_to_num(np.abs(same[finite] - exact[finite]), nan=np.inf).max())
    assert error <= 2 * reference_error + eps * scale, (
        f"kernel error {error:.3g} > 2 x same-precision reference error {reference_error:.3g} + {eps * scale:.3g}")


def ref_pixel_shuffle(x, r):
    n, c, h, w = x.shape
    return x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)


def ref_pixel_unshuffle(y, r):
    n, c, hr, wr = y.shape
    return y.reshape(n, c, hr // r, r, wr // r, r).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, hr // r, wr // r)


def ref_prelu(y, slope):
    s = slope.reshape(1, -1, 1, 1)
    return np.where(y > 0, y, y * s)


def ref_prelu_backward(grad, y, slope):
    """(grad_y_input, grad_slope) of PReLU, summing grad_slope in the dtype of the inputs."""
    s = slope.reshape(1, -1, 1, 1)
    grad_in = np.where(y > 0, grad, grad * s)
    contrib = np.where(y > 0, np.zeros_like(y), y * grad)
    grad_slope = contrib.sum(axis=(0, 2, 3)) if slope.size > 1 else contrib.sum().reshape(1)
    return grad_in, grad_slope.astype(slope.dtype)


def unit_rows(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def ref_cosine_matrix(a, b):
    return unit_rows(a) @ unit_rows(b).T


def ref_top_k(scores, k):
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.fixture(params=SIMD_LEVELS)
def simd_level(request):
    C._set_simd_level(request.param)
    yield request.param
    C._set_simd_level("auto")


# ---------------------------------------------------------------------------------------------------- build

def test_build_info_reports_the_build():
    info = build_info()
    assert info["built"] and info["version"] == "0.1.0"
    assert isinstance(info["cuda"], bool)
    assert info["cpu_simd"] in ("baseline", "avx2", "avx512") and info["cpu_threads"] >= 1
    if info["cuda"]:
        assert info["cudart"] == "static" and info["cuda_version"]
        assert {"sm_80", "sm_90", "compute_90"} <= set(info["cuda_archs"])
    else:
        assert info["cuda_archs"] == [] and info["cuda_version"] is None
        assert not cuda_available()


def test_missing_extension_raises_at_call_time_not_import():
    """Without _C, importing works (a warning is logged) and the kernels raise ExtensionNotBuiltError."""
    script = textwrap.dedent("""
        import importlib.abc, logging, sys
        class BlockC(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "iafsr_sdk._C":
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, BlockC())
        logging.basicConfig(level=logging.WARNING)
        import numpy as np
        from iafsr_sdk import _ext, ops
        assert _ext.build_info()["built"] is False and not _ext.cuda_available()
        try:
            ops.l2_norm(np.ones((2, 3), np.float32))
        except _ext.ExtensionNotBuiltError as error:
            assert "pip install" in str(error), error
            print("raised")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "raised" in done.stdout
    assert "iafsr_sdk._C is not available" in done.stderr


def test_extension_not_built_error_in_process(monkeypatch):
    from iafsr_sdk import _ext
    monkeypatch.setattr(_ext, "_C", None)
    with pytest.raises(ExtensionNotBuiltError, match="pip install"):
        ops.match(np.ones((1, 4), np.float32), np.ones((2, 4), np.float32))


def test_cuda_arrays_without_cuda_raise_cuda_unavailable():
    if cuda_available():
        pytest.skip("CUDA is usable here")

    class FakeDeviceArray:
        __cuda_array_interface__ = {"shape": (2, 4), "typestr": "<f4", "data": (4096, False), "version": 3}

    out = np.empty(2, np.float32)
    with pytest.raises(CudaUnavailableError, match="CUDA"):
        C.l2_norm(FakeDeviceArray(), out)


# ---------------------------------------------------------------------------------------------------- pixel shuffle

SHUFFLE_SHAPES = [  # (n, c_out, h, w, r, shared slope)
    (2, 3, 5, 7, 2, False),
    (3, 4, 4, 9, 3, False),
    (1, 2, 6, 6, 1, False),
    (2, 5, 3, 17, 2, True),
    (4, 64, 8, 8, 2, False),
    (2, 1, 2, 3, 4, False),
]


def shuffle_inputs(n, c, h, w, r, shared, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c * r * r, h, w))
    x[..., 0] = 0.0  # zeros take the slope branch, as in torch
    slope = rng.uniform(-0.5, 0.5, 1 if shared else c)
    return x, slope


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHUFFLE_SHAPES)
def test_pixel_shuffle_prelu_matches_numpy_exactly(device, dtype, shape, simd_level):
    n, c, h, w, r, shared = shape
    x, slope = shuffle_inputs(*shape)
    xd, sd = x.astype(dtype), slope.astype(dtype)
    expected = ref_prelu(ref_pixel_shuffle(xd, r), sd)  # one rounding per element: exact in any precision
    out = ops.pixel_shuffle_prelu(to_device(x, device, dtype), to_device(slope, device, dtype), r)
    assert host(out).dtype == np.dtype(dtype) and host(out).shape == (n, c, h * r, w * r)
    np.testing.assert_array_equal(host(out), expected)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHUFFLE_SHAPES)
def test_pixel_shuffle_prelu_backward_against_float64(device, dtype, shape, simd_level):
    n, c, h, w, r, shared = shape
    x, slope = shuffle_inputs(*shape, seed=1)
    grad = np.random.default_rng(2).standard_normal((n, c, h * r, w * r))
    grad_x, grad_slope = ops.pixel_shuffle_prelu_backward(
        to_device(grad, device, dtype), to_device(x, device, dtype), to_device(slope, device, dtype), r)
    xd, sd, gd = (v.astype(dtype) for v in (x, slope, grad))
    same_in, same_slope = ref_prelu_backward(gd, ref_pixel_shuffle(xd, r), sd)
    exact_in, exact_slope = ref_prelu_backward(*(rounded(v, dtype) for v in (grad, ref_pixel_shuffle(x, r), slope)))
    np.testing.assert_array_equal(host(grad_x), ref_pixel_unshuffle(same_in, r))  # one rounding per element
    assert host(grad_slope).shape == slope.shape
    assert_within_reference_error(grad_slope, exact_slope, same_slope)


def test_pixel_shuffle_prelu_large_arrays(simd_level):
    """Above 16 MiB the vector code writes rows made of whole cache lines with non-temporal stores, other rows
    with regular stores: every alignment of the destination against the reference."""
    x, slope = shuffle_inputs(17, 64, 32, 32, 2, False, seed=8)
    x, slope = x.astype(np.float32), slope.astype(np.float32)
    assert x.nbytes > 16 << 20
    expected = ref_prelu(ref_pixel_shuffle(x, 2), slope)
    np.testing.assert_array_equal(ops.pixel_shuffle_prelu(x, slope, 2), expected)
    same_in, _ = ref_prelu_backward(expected, ref_pixel_shuffle(x, 2), slope)
    expected_grad_x = ref_pixel_unshuffle(same_in, 2)
    grad_x, grad_slope = ops.pixel_shuffle_prelu_backward(expected, x, slope, 2)
    np.testing.assert_array_equal(grad_x, expected_grad_x)
    _, same_slope = ref_prelu_backward(expected, ref_pixel_shuffle(x, 2), slope)
    _, exact_slope = ref_prelu_backward(*(v.astype(np.float64) for v in (expected, ref_pixel_shuffle(x, 2), slope)))
    assert_within_reference_error(grad_slope, exact_slope, same_slope)
    for offset in range(16):  # in floats from a 64-byte boundary
        buffer = np.empty(expected.size + 32, np.float32)
        start = (-buffer.ctypes.data // 4) % 16 + offset
        shifted = buffer[start:start + expected.size].reshape(expected.shape)
        C.pixel_shuffle_prelu(x, slope, 2, shifted)
        np.testing.assert_array_equal(shifted, expected)
        shifted_grad_x = buffer[start:start + x.size].reshape(x.shape)
        shifted_grad_slope = np.empty_like(slope)
        C.pixel_shuffle_prelu_backward(expected, x, slope, 2, shifted_grad_x, shifted_grad_slope)
        np.testing.assert_array_equal(shifted_grad_x, expected_grad_x)
        assert_within_reference_error(shifted_grad_slope, exact_slope, same_slope)


def test_pixel_shuffle_prelu_matches_torch():
    torch = pytest.importorskip("torch")
    x, slope = shuffle_inputs(4, 16, 6, 10, 2, False, seed=3)
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    st = torch.tensor(slope, dtype=torch.float32, requires_grad=True)
    y = torch.nn.functional.prelu(torch.nn.functional.pixel_shuffle(xt, 2), st)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    y.backward(grad)
    out = ops.pixel_shuffle_prelu(xt.detach().numpy(), st.detach().numpy(), 2)
    np.testing.assert_array_equal(out, y.detach().numpy())
    grad_x, grad_slope = ops.pixel_shuffle_prelu_backward(grad.numpy(), xt.detach().numpy(), st.detach().numpy(), 2)
    np.testing.assert_array_equal(grad_x, xt.grad.numpy())
    # grad_slope: torch float32 autograd is the same-precision reference, float64 autograd the exact one
    x64 = torch.tensor(x, dtype=torch.float64)
    s64 = torch.tensor(slope.astype(np.float32), dtype=torch.float64, requires_grad=True)
    torch.nn.functional.prelu(torch.nn.functional.pixel_shuffle(x64.float().double(), 2), s64).backward(grad.double())
    assert_within_reference_error(grad_slope, s64.grad.numpy(), st.grad.numpy())


def test_pixel_shuffle_prelu_tensor_in_tensor_out():
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    slope = torch.full((2,), 0.25)
    out = ops.pixel_shuffle_prelu(x, slope, 2)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, 2, 6, 6)
    expected = torch.nn.functional.prelu(torch.nn.functional.pixel_shuffle(x.detach(), 2), slope)
    assert torch.equal(out, expected)


def test_pixel_shuffle_prelu_non_contiguous_inputs_are_copied():
    x, slope = shuffle_inputs(2, 3, 4, 5, 2, False, seed=4)
    x = x.astype(np.float32)
    views = [
        np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),  # transposed view
        np.repeat(x, 2, axis=3)[..., ::2],  # strided slice
        x[::-1][::-1],  # negative strides
        np.asfortranarray(x),
    ]
    expected = ops.pixel_shuffle_prelu(x, slope.astype(np.float32), 2)
    for view in views:
        np.testing.assert_array_equal(view, x)
        np.testing.assert_array_equal(ops.pixel_shuffle_prelu(view, slope.astype(np.float32), 2), expected)
    slope_view = np.repeat(slope.astype(np.float32), 2)[::2]
    np.testing.assert_array_equal(ops.pixel_shuffle_prelu(x, slope_view, 2), expected)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_pixel_shuffle_prelu_empty_inputs(device, dtype):
    for shape in [(0, 8, 3, 3), (2, 8, 0, 3), (2, 0, 3, 3)]:
        x = to_device(np.zeros(shape), device, dtype)
        slope = to_device(np.full(shape[1] // 4 or 1, 0.1), device, dtype)
        out = ops.pixel_shuffle_prelu(x, slope, 2)
        assert host(out).shape == (shape[0], shape[1] // 4, shape[2] * 2, shape[3] * 2)
        grad_x, grad_slope = ops.pixel_shuffle_prelu_backward(out, x, slope, 2)
        assert host(grad_x).shape == shape
        np.testing.assert_array_equal(host(grad_slope), np.zeros(host(slope).shape))


def test_pixel_shuffle_prelu_nan_and_inf_propagate():
    x = np.ones((1, 4, 2, 2), np.float32)
    x[0, 1, 1, 0] = np.nan
    x[0, 2, 0, 1] = -np.inf
    out = ops.pixel_shuffle_prelu(x, np.array([0.5], np.float32), 2)
    expected = ref_prelu(ref_pixel_shuffle(x, 2), np.array([0.5], np.float32))
    np.testing.assert_array_equal(out, expected)
    assert np.isnan(out).sum() == 1 and np.isneginf(out).sum() == 1


def test_pixel_shuffle_prelu_backward_does_not_depend_on_thread_count(monkeypatch):
    x, slope = shuffle_inputs(8, 16, 8, 8, 2, False, seed=5)
    x, slope = x.astype(np.float32), slope.astype(np.float32)
    grad = np.random.default_rng(6).standard_normal((8, 16, 16, 16)).astype(np.float32)
    results = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("IAFSR_NUM_THREADS", threads)
        results.append(ops.pixel_shuffle_prelu_backward(grad, x, slope, 2))
    for grad_x, grad_slope in results[1:]:
        np.testing.assert_array_equal(grad_x, results[0][0])
        np.testing.assert_array_equal(grad_slope, results[0][1])


# ---------------------------------------------------------------------------------------------------- rows

def feature_rows(rows, dim, seed=0, zero_rows=(1,)):
    x = np.random.default_rng(seed).standard_normal((rows, dim)) * 3
    for i in zero_rows:
        if i < rows:
            x[i] = 0
    return x


ROW_SHAPES = [(7, 128), (33, 5), (1, 1), (300, 512)]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("rows,dim", ROW_SHAPES)
def test_l2_norm_and_quality(device, dtype, rows, dim):
    x = feature_rows(rows, dim)
    exact = np.linalg.norm(rounded(x, dtype), axis=1)
    same = np.linalg.norm(x.astype(dtype), axis=1)
    for result in (ops.l2_norm(to_device(x, device, dtype)), ops.quality(to_device(x, device, dtype))):
        assert host(result).dtype == np.float32
        assert_within_reference_error(result, exact, same)
    if rows > 1:
        assert host(ops.l2_norm(to_device(x, device, dtype)))[1] == 0


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("rows,dim", ROW_SHAPES)
def test_l2_normalize(device, dtype, rows, dim):
    x = feature_rows(rows, dim)
    xr = rounded(x, dtype)
    exact = xr / np.maximum(np.linalg.norm(xr, axis=1, keepdims=True), 1e-12)
    xd = x.astype(dtype)
    same = xd / np.maximum(np.linalg.norm(xd, axis=1, keepdims=True), np.asarray(1e-12, dtype))
    out = ops.l2_normalize(to_device(x, device, dtype))
    assert host(out).dtype == np.dtype(dtype)
    assert_within_reference_error(out, exact, same)
    if rows > 1:
        np.testing.assert_array_equal(host(out)[1], 0)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("rows,dim", ROW_SHAPES)
def test_cosine_similarity(device, dtype, rows, dim):
    a, b = feature_rows(rows, dim, seed=1), feature_rows(rows, dim, seed=2, zero_rows=(0,))
    exact = np.sum(unit_rows(rounded(a, dtype)) * unit_rows(rounded(b, dtype)), axis=1)
    same = np.sum(unit_rows(a.astype(dtype)) * unit_rows(b.astype(dtype)), axis=1)
    out = ops.cosine_similarity(to_device(a, device, dtype), to_device(b, device, dtype))
    assert_within_reference_error(out, exact, same)
    assert host(out)[0] == 0


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("rows_a,rows_b,dim", [(7, 5, 128), (97, 33, 13), (1, 1, 1), (200, 129, 128)])
def test_cosine_matrix(device, dtype, rows_a, rows_b, dim, simd_level):
    a, b = feature_rows(rows_a, dim, seed=3), feature_rows(rows_b, dim, seed=4, zero_rows=(0,))
    exact = ref_cosine_matrix(rounded(a, dtype), rounded(b, dtype))
    same = ref_cosine_matrix(a.astype(dtype), b.astype(dtype))
    out = ops.cosine_matrix(to_device(a, device, dtype), to_device(b, device, dtype))
    assert host(out).shape == (rows_a, rows_b) and host(out).dtype == np.float32
    assert_within_reference_error(out, exact, same)
    np.testing.assert_array_equal(host(out)[:, 0], 0)


def test_row_ops_copy_non_contiguous_views():
    a = feature_rows(40, 24, seed=21).astype(np.float32)
    b = feature_rows(30, 24, seed=22).astype(np.float32)
    views = {
        "transposed": np.ascontiguousarray(a.T).T,
        "strided": np.repeat(a, 3, axis=0)[::3],
        "reversed": a[::-1].copy()[::-1],
        "column slice": np.concatenate([a, a], axis=1)[:, :24],
    }
    for name, view in views.items():
        assert not view.flags.c_contiguous, name
        np.testing.assert_array_equal(ops.l2_norm(view), ops.l2_norm(a))
        np.testing.assert_array_equal(ops.l2_normalize(view), ops.l2_normalize(a))
        np.testing.assert_array_equal(ops.cosine_matrix(view, b), ops.cosine_matrix(a, b))
        np.testing.assert_array_equal(ops.cosine_similarity(view, a), ops.cosine_similarity(a, a))
        for got, want in zip(ops.identity_loss(view, a), ops.identity_loss(a, a)):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(ops.match(b, view, 3), ops.match(b, a, 3)):
            np.testing.assert_array_equal(got, want)


def test_torch_tensors_in_torch_tensors_out():
    torch = pytest.importorskip("torch")
    a = torch.randn(12, 16, requires_grad=True)
    b = torch.randn(20, 16)
    result = ops.match(a, b, 4)
    assert isinstance(result.indices, torch.Tensor) and result.indices.dtype == torch.int64
    expected = ops.match(a.detach().numpy(), b.numpy(), 4)
    np.testing.assert_array_equal(result.indices.numpy(), expected.indices)
    loss = ops.identity_loss(a, b[:12])
    assert all(isinstance(v, torch.Tensor) for v in loss) and loss.grad_cos.shape == (12, 16)
    assert isinstance(ops.quality(b), torch.Tensor)


def test_huge_finite_rows_do_not_overflow():
    x = np.full((2, 64), 1e30, np.float32)  # the sum of squares overflows float32, not float64
    np.testing.assert_allclose(ops.l2_norm(x), 8e30, rtol=1e-6)
    np.testing.assert_allclose(ops.cosine_similarity(x, x), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ops.l2_normalize(x), 0.125, rtol=1e-6)


def test_nan_and_inf_rows_give_nan_not_finite_values():
    x = np.ones((3, 4), np.float32)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    assert np.isnan(ops.l2_norm(x)[1]) and np.isinf(ops.l2_norm(x)[2])
    normalized = ops.l2_normalize(x)
    assert np.isnan(normalized[1]).all() and np.isfinite(normalized[0]).all()
    cos = ops.cosine_similarity(x, np.ones((3, 4), np.float32))
    assert np.isfinite(cos[0]) and np.isnan(cos[1]) and np.isnan(cos[2])
    loss = ops.identity_loss(x, np.ones((3, 4), np.float32))
    assert np.isnan(loss.cos_loss[1]) and np.isnan(loss.grad_cos[1]).all() and np.isnan(loss.grad_mag[1]).all()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_row_ops_on_empty_batches(device, dtype):
    empty = to_device(np.zeros((0, 16)), device, dtype)
    assert host(ops.l2_norm(empty)).shape == (0,)
    assert host(ops.quality(empty)).shape == (0,)
    assert host(ops.l2_normalize(empty)).shape == (0, 16)
    assert host(ops.cosine_similarity(empty, empty)).shape == (0,)
    assert host(ops.cosine_matrix(empty, to_device(np.ones((3, 16)), device, dtype))).shape == (0, 3)
    assert host(ops.cosine_matrix(to_device(np.ones((3, 16)), device, dtype), empty)).shape == (3, 0)
    loss = ops.identity_loss(empty, empty)
    assert [host(v).shape for v in loss] == [(0,), (0,), (0, 16), (0, 16)]
    zero_width = to_device(np.zeros((3, 0)), device, dtype)
    np.testing.assert_array_equal(host(ops.l2_norm(zero_width)), np.zeros(3))


# ---------------------------------------------------------------------------------------------------- identity loss

def ref_identity_loss(a, b):
    """Closed form in float64, with the documented conventions for zero-norm rows."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    zero = (na == 0) | (nb == 0)
    safe_a, safe_b = np.where(na == 0, 1, na), np.where(nb == 0, 1, nb)
    cos = np.where(zero, 0, np.sum(a * b, axis=1) / (safe_a * safe_b))
    grad_cos = np.where(zero[:, None], 0, cos[:, None] * a / safe_a[:, None] ** 2 - b / (safe_a * safe_b)[:, None])
    grad_mag = np.where((na == 0)[:, None], 0, np.sign(na - nb)[:, None] * a / safe_a[:, None])
    return 1 - cos, np.abs(na - nb), grad_cos, grad_mag


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("rows,dim", [(16, 128), (5, 3), (64, 512)])
def test_identity_loss_against_float64(device, dtype, rows, dim):
    a = feature_rows(rows, dim, seed=5, zero_rows=(1,))
    b = feature_rows(rows, dim, seed=6, zero_rows=(2,))
    b[3] = a[3] * 1.0  # equal norms: grad_mag is 0
    exact = ref_identity_loss(rounded(a, dtype), rounded(b, dtype))
    same = ref_identity_loss(a.astype(dtype), b.astype(dtype))
    result = ops.identity_loss(to_device(a, device, dtype), to_device(b, device, dtype))
    for got, want, same_precision in zip(result, exact, same):
        assert_within_reference_error(got, want, same_precision)
    assert host(result.cos_loss)[1] == 1 and host(result.cos_loss)[2] == 1
    np.testing.assert_array_equal(host(result.grad_cos)[1:3], 0)
    np.testing.assert_array_equal(host(result.grad_mag)[1], 0)
    np.testing.assert_array_equal(host(result.grad_mag)[3], 0)


def test_identity_loss_gradients_match_torch_autograd():
    torch = pytest.importorskip("torch")
    a = feature_rows(32, 128, seed=7, zero_rows=())
    b = feature_rows(32, 128, seed=8, zero_rows=())

    def autograd(dtype):
        at = torch.tensor(a.astype(np.float32), dtype=dtype, requires_grad=True)
        bt = torch.tensor(b.astype(np.float32), dtype=dtype)
        cos = torch.nn.functional.cosine_similarity(at, bt, dim=1, eps=0)
        mag = (at.norm(dim=1) - bt.norm(dim=1)).abs()
        (grad_cos,) = torch.autograd.grad((1 - cos).sum(), at, retain_graph=True)
        (grad_mag,) = torch.autograd.grad(mag.sum(), at)
        return [v.detach().numpy() for v in (1 - cos, mag, grad_cos, grad_mag)]

    exact, same = autograd(torch.float64), autograd(torch.float32)
    result = ops.identity_loss(a.astype(np.float32), b.astype(np.float32))
    for got, want, same_precision in zip(result, exact, same):
        assert_within_reference_error(got, want, same_precision)


# ---------------------------------------------------------------------------------------------------- match

def check_top_k(indices, scores, probes, gallery, k, dtype):
    """Scores are those of the returned indices, in order, and no better gallery row was left out."""
    indices, scores = host(indices), host(scores)
    exact = ref_cosine_matrix(rounded(probes, dtype), rounded(gallery, dtype))
    same = ref_cosine_matrix(probes.astype(dtype), gallery.astype(dtype)).astype(np.float64)
    _, best = ref_top_k(exact, k)
    assert indices.shape == scores.shape == (len(probes), k)
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    assert ((indices >= 0) & (indices < len(gallery))).all()
    for row in indices:
        assert len(set(row.tolist())) == k
    assert_within_reference_error(scores, np.take_along_axis(exact, indices, 1), np.take_along_axis(same, indices, 1))
    assert (np.diff(scores.astype(np.float64), axis=1) <= 0).all()
    tolerance = 2 * float(np.abs(same - exact).max()) + np.finfo(np.float32).eps
    assert (np.take_along_axis(exact, indices, 1) >= best - tolerance).all()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("rows_p,rows_g,dim,k", [(97, 33, 13, 1), (97, 33, 13, 7), (300, 1000, 128, 5),
                                                 (5, 3, 4, 3), (1, 1, 1, 1), (250, 64, 128, 64)])
def test_match_against_numpy(device, dtype, rows_p, rows_g, dim, k, simd_level):
    probes = feature_rows(rows_p, dim, seed=9, zero_rows=())
    gallery = feature_rows(rows_g, dim, seed=10, zero_rows=())
    result = ops.match(to_device(probes, device, dtype), to_device(gallery, device, dtype), k)
    check_top_k(result.indices, result.scores, probes, gallery, k, dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_match_well_separated_indices_are_exact(device, dtype, simd_level):
    rng = np.random.default_rng(11)
    gallery = rng.standard_normal((500, 64))
    truth = rng.integers(0, 500, 200)
    probes = gallery[truth] + 0.05 * rng.standard_normal((200, 64))
    result = ops.match(to_device(probes, device, dtype), to_device(gallery, device, dtype), 1)
    np.testing.assert_array_equal(host(result.indices)[:, 0], truth)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_match_ties_go_to_the_lower_index(device, dtype, simd_level):
    rng = np.random.default_rng(12)
    base = rng.standard_normal((4, 32))
    gallery = np.concatenate([rng.standard_normal((20, 32)), base, base, base])  # 20..23 = 24..27 = 28..31
    result = ops.match(to_device(base, device, dtype), to_device(gallery, device, dtype), 3)
    np.testing.assert_array_equal(host(result.indices), np.arange(20, 24)[:, None] + np.array([0, 4, 8]))
    zero_probe = to_device(np.zeros((2, 32)), device, dtype)  # every score is 0: indices 0, 1, 2
    zero = ops.match(zero_probe, to_device(gallery, device, dtype), 3)
    np.testing.assert_array_equal(host(zero.indices), [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(host(zero.scores), 0)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_match_nan_ranks_last(device, dtype, simd_level):
    gallery = feature_rows(40, 16, seed=13, zero_rows=())
    gallery[[0, 17, 39]] = np.nan
    probes = feature_rows(10, 16, seed=14, zero_rows=())
    probes[4] = np.nan
    result = ops.match(to_device(probes, device, dtype), to_device(gallery, device, dtype), 37)
    indices, scores = host(result.indices), host(result.scores)
    clean = np.delete(np.arange(10), 4)
    assert not np.isin(indices[clean], [0, 17, 39]).any()
    assert np.isfinite(scores[clean]).all()
    np.testing.assert_array_equal(indices[4], np.arange(37))  # all NaN: ties, lower index first
    assert np.isnan(scores[4]).all()
    full = ops.match(to_device(probes[clean], device, dtype), to_device(gallery, device, dtype), 40)
    np.testing.assert_array_equal(np.sort(host(full.indices)[:, -3:], axis=1), np.tile([0, 17, 39], (9, 1)))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_match_empty_probes_and_bad_k(device, dtype):
    gallery = to_device(np.ones((5, 8)), device, dtype)
    result = ops.match(to_device(np.zeros((0, 8)), device, dtype), gallery, 3)
    assert host(result.indices).shape == (0, 3) and host(result.scores).shape == (0, 3)
    probes = to_device(np.ones((2, 8)), device, dtype)
    with pytest.raises(ValueError, match="exceeds the gallery size"):
        ops.match(probes, gallery, 6)
    with pytest.raises(ValueError, match="k >= 1"):
        ops.match(probes, gallery, 0)
    with pytest.raises(ValueError, match="exceeds the gallery size"):
        ops.match(probes, to_device(np.ones((0, 8)), device, dtype), 1)
    with pytest.raises(TypeError, match="int"):
        ops.match(probes, gallery, 1.0)


def test_match_does_not_depend_on_thread_count(monkeypatch):
    probes = feature_rows(500, 64, seed=15, zero_rows=())
    gallery = feature_rows(300, 64, seed=16, zero_rows=()).astype(np.float32)
    results = []
    for threads in ("1", "2", "5"):
        monkeypatch.setenv("IAFSR_NUM_THREADS", threads)
        results.append(ops.match(probes.astype(np.float32), gallery, 4))
    for result in results[1:]:
        np.testing.assert_array_equal(result.indices, results[0].indices)
        np.testing.assert_array_equal(result.scores, results[0].scores)


def test_match_large_gallery_in_blocks():
    """More gallery rows than one block of probes sees at once, k large: checks the per-probe lists."""
    probes = feature_rows(100, 32, seed=17, zero_rows=())
    gallery = feature_rows(5000, 32, seed=18, zero_rows=())
    result = ops.match(probes.astype(np.float32), gallery.astype(np.float32), 200)
    check_top_k(result.indices, result.scores, probes, gallery, 200, "float32")


# ---------------------------------------------------------------------------------------------------- bad input

def test_messages_name_what_was_received():
    with pytest.raises(ValueError, match=r"expected x to be a 4-D NCHW array, got 3-D with shape \(2, 3, 4\)"):
        ops.pixel_shuffle_prelu(np.zeros((2, 3, 4), np.float32), np.ones(1, np.float32), 2)
    with pytest.raises(ValueError, match=r"divisible by r\*r = 4, got 6 channels"):
        ops.pixel_shuffle_prelu(np.zeros((1, 6, 2, 2), np.float32), np.ones(1, np.float32), 2)
    with pytest.raises(ValueError, match=r"slope to have shape \(2,\)"):
        ops.pixel_shuffle_prelu(np.zeros((1, 8, 2, 2), np.float32), np.ones(3, np.float32), 2)
    with pytest.raises(TypeError, match="float32.*got float64"):
        ops.l2_norm(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="float16 is supported on CUDA only"):
        ops.l2_norm(np.zeros((2, 3), np.float16))
    with pytest.raises(TypeError, match=">f4"):
        ops.l2_norm(np.zeros((2, 3), ">f4"))
    with pytest.raises(ValueError, match=r"2-D \(rows, features\) array, got 1-D with shape \(128,\)"):
        ops.match(np.zeros(128, np.float32), np.zeros((4, 128), np.float32))
    with pytest.raises(ValueError, match="same number of features"):
        ops.match(np.zeros((2, 128), np.float32), np.zeros((4, 64), np.float32))
    with pytest.raises(ValueError, match="same shape"):
        ops.cosine_similarity(np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="numpy array, a cupy array or a torch tensor, got list"):
        ops.l2_norm([[1.0, 2.0]])
    with pytest.raises(TypeError, match="masked array"):
        ops.l2_norm(np.ma.masked_array(np.zeros((2, 2), np.float32)))
    with pytest.raises(ValueError, match="eps"):
        ops.l2_normalize(np.zeros((2, 2), np.float32), eps=-1.0)
    with pytest.raises(TypeError, match="r to be an int"):
        ops.pixel_shuffle_prelu(np.zeros((1, 4, 2, 2), np.float32), np.ones(1, np.float32), True)


def test_mixed_libraries_and_devices_are_rejected():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="host numpy array but gallery is a host torch array"):
        ops.match(np.zeros((2, 4), np.float32), torch.zeros(3, 4), 1)
    if cuda_available() and torch.cuda.is_available():
        with pytest.raises(TypeError, match="CUDA"):
            ops.match(np.zeros((2, 4), np.float32), torch.zeros(3, 4, device="cuda"), 1)


def test_raw_extension_validates_too():
    x = np.zeros((1, 8, 2, 2), np.float32)
    slope = np.ones(2, np.float32)
    out = np.empty((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        C.pixel_shuffle_prelu(np.asfortranarray(np.zeros((1, 8, 2, 3), np.float32)), slope, 2,
                              np.empty((1, 2, 4, 6), np.float32))
    with pytest.raises(ValueError, match=r"expected out to have shape \(1, 2, 4, 4\), got \(1, 2, 4, 5\)"):
        C.pixel_shuffle_prelu(x, slope, 2, np.empty((1, 2, 4, 5), np.float32))
    with pytest.raises(TypeError, match="expected out to be float32, got float64"):
        C.pixel_shuffle_prelu(x, slope, 2, np.empty((1, 2, 4, 4)))
    readonly = np.empty((1, 2, 4, 4), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        C.pixel_shuffle_prelu(x, slope, 2, readonly)
    shared = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="shares memory"):
        C.l2_normalize(shared.reshape(8, 8), 1e-12, shared.reshape(8, 8))
    with pytest.raises(ValueError, match="upscale factor"):
        C.pixel_shuffle_prelu(x, slope, 0, out)
    with pytest.raises(TypeError, match="got list"):
        C.l2_norm([[1.0]], np.empty(1, np.float32))
    with pytest.raises(ValueError, match="exceeds the gallery size"):
        C.match(np.ones((1, 4), np.float32), np.ones((2, 4), np.float32), 3, np.empty((1, 3), np.int64),
                np.empty((1, 3), np.float32))
    with pytest.raises(TypeError, match="indices to be int64"):
        C.match(np.ones((1, 4), np.float32), np.ones((2, 4), np.float32), 1, np.empty((1, 1), np.int32),
                np.empty((1, 1), np.float32))
    misaligned = np.zeros(65, np.float32).view(np.uint8)[2:258].view(np.float32).reshape(8, 8)
    assert not misaligned.flags.aligned
    with pytest.raises(ValueError, match="aligned"):
        C.l2_norm(misaligned, np.empty(8, np.float32))
    np.testing.assert_array_equal(ops.l2_norm(misaligned), np.zeros(8))  # the facade copies it


# ---------------------------------------------------------------------------------------------------- CUDA only

@pytest.mark.cuda
def test_cuda_kernels_run_on_the_callers_stream():
    probes = feature_rows(64, 32, seed=19, zero_rows=())
    gallery = feature_rows(100, 32, seed=20, zero_rows=())
    expected = ops.match(probes.astype(np.float32), gallery.astype(np.float32), 5)
    if HAS_CUPY:
        import cupy
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            result = ops.match(cupy.asarray(probes, np.float32), cupy.asarray(gallery, np.float32), 5)
        stream.synchronize()
    else:
        import torch
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            result = ops.match(torch.tensor(probes, dtype=torch.float32, device="cuda"),
                               torch.tensor(gallery, dtype=torch.float32, device="cuda"), 5)
        stream.synchronize()
    np.testing.assert_array_equal(host(result.indices), expected.indices)
    np.testing.assert_allclose(host(result.scores), expected.scores, atol=1e-5)


@pytest.mark.cuda
def test_cuda_host_pointer_is_rejected():
    class HostPointer:
        def __init__(self, array):
            self.array = array
            self.__cuda_array_interface__ = {"shape": array.shape, "typestr": "<f4",
                                             "data": (array.ctypes.data, False), "version": 3}

    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="not device memory"):
        C.l2_norm(HostPointer(x), HostPointer(np.empty(2, np.float32)))
