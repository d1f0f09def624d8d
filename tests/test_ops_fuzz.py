"""Fuzz of the argument surface of iafsr_sdk.ops and of the raw iafsr_sdk._C functions.

Each example starts from valid arguments of one op (random shapes, strides, special values) and, most of the
time, breaks one of them: another dtype, rank or size, a view with odd strides, a misaligned or read-only
buffer, an output that overlaps an input, or not an array at all. Every call must either return a correct
result (checked against NumPy) or raise ValueError / TypeError; anything else fails, and a crash ends the run.
"""
import importlib.util

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from iafsr_sdk import ops
from iafsr_sdk._ext import extension

C = extension()
HAS_TORCH = importlib.util.find_spec("torch") is not None
EXAMPLES = 2500  # per surface (facade, raw _C): 5,000 calls over the 9 ops

FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None)

DTYPES = ["float32", "float32", "float32", "float64", "float16", "int64", "int32", "uint8", "bool", "complex64",
          ">f4"]
LAYOUTS = ["c", "c", "c", "fortran", "strided", "reversed", "broadcast", "misaligned", "readonly", "zero-d"]
JUNK = [None, 3, 2.5, "array", [[1.0, 2.0]], {"shape": (1,)}, b"\x00" * 16]


def make_array(seed, shape, dtype="float32", layout="c", special=False):
    """An array of `shape` and `dtype` laid out as asked (the values are whatever the layout gives)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3])
    if special and values.size:
        values.flat[rng.integers(values.size)] = rng.choice([0.0, np.nan, np.inf, -np.inf, 1e30])
    with np.errstate(invalid="ignore", over="ignore"):
        a = values.astype(np.dtype(dtype))
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "strided" and a.ndim:
        return np.repeat(a, 2, axis=-1)[..., ::2]
    if layout == "reversed" and a.ndim:
        return a[::-1].copy()[::-1]
    if layout == "broadcast" and a.ndim and a.shape[-1]:
        return np.broadcast_to(a[..., :1], a.shape)
    if layout == "misaligned" and a.dtype.itemsize > 1:
        raw = np.zeros(a.nbytes + 1, np.uint8)[1:]
        view = raw.view(a.dtype).reshape(a.shape) if a.size else raw[:0].view(a.dtype).reshape(a.shape)
        view[...] = a
        return view
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if layout == "zero-d":
        return a.reshape(-1)[:1].reshape(()) if a.size else np.float32(0.0).reshape(())
    return a


@st.composite
def array_args(draw, shape):
    return make_array(draw(st.integers(0, 2**32 - 1)), shape, "float32", draw(st.sampled_from(LAYOUTS[:8])),
                      draw(st.booleans()))


@st.composite
def broken(draw, valid):
    """`valid` or, most of the time, a broken variant of it."""
    kind = draw(st.sampled_from(["keep", "dtype", "rank", "size", "layout", "junk", "torch"]))
    seed = draw(st.integers(0, 2**32 - 1))
    shape = list(np.shape(valid))
    if kind == "dtype":
        return make_array(seed, shape, draw(st.sampled_from(DTYPES)))
    if kind == "rank":
        if shape and draw(st.booleans()):
            shape.pop(draw(st.integers(0, len(shape) - 1)))
        else:
            shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(0, 3)))
        return make_array(seed, shape)
    if kind == "size" and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = draw(st.integers(0, 9))
        return make_array(seed, shape)
    if kind == "layout":
        return make_array(seed, shape, "float32", draw(st.sampled_from(LAYOUTS)))
    if kind == "junk":
        return draw(st.sampled_from(JUNK))
    if kind == "torch" and HAS_TORCH and isinstance(valid, np.ndarray):
        import torch
        return torch.from_numpy(np.array(valid))
    return valid


def to_numpy(x):
    return x if isinstance(x, np.ndarray) else x.numpy()


def expect_clean(op, call):
    """Runs `call`: (True, its result), or (False, None) after a ValueError / TypeError."""
    try:
        with np.errstate(all="ignore"):
            result = call()
    except (ValueError, TypeError) as error:
        event(f"{op}: {type(error).__name__}")
        return False, None
    event(f"{op}: returned")
    return True, result


def close(got, want, rtol=1e-4):
    got, want = np.asarray(to_numpy(got), np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = np.nanmax(np.abs(want), initial=1.0)
    finite = np.isfinite(want) & (np.abs(want) < 1e20)
    np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=rtol * min(scale, 1e20))


# ---------------------------------------------------------------------------------------------------- references

def ref_unit(x):
    x = np.asarray(to_numpy(x), np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms == 0, 0.0, x / norms)


def check_result(op, args, result):
    with np.errstate(all="ignore"):
        _check_result(op, [np.asarray(to_numpy(a), np.float64) if hasattr(a, "shape") else a for a in args],
                      result)


def _check_result(op, args, result):
    if op == "pixel_shuffle_prelu":
        x, slope, r = args
        n, c, h, w = x.shape
        y = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)
        want = np.where(y > 0, y, y * slope.reshape(1, -1, 1, 1))
        np.testing.assert_array_equal(to_numpy(result), want.astype(np.float32))
    elif op == "pixel_shuffle_prelu_backward":
        grad, x, slope, r = args
        assert to_numpy(result[0]).shape == x.shape and to_numpy(result[1]).shape == slope.shape
    elif op in ("l2_norm", "quality"):
        close(result, np.linalg.norm(args[0], axis=1))
    elif op == "l2_normalize":
        x = args[0]
        close(result, x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), args[1]))
    elif op == "cosine_similarity":
        close(result, np.sum(ref_unit(args[0]) * ref_unit(args[1]), axis=1))
    elif op == "cosine_matrix":
        close(result, ref_unit(args[0]) @ ref_unit(args[1]).T)
    elif op == "identity_loss":
        cos = np.sum(ref_unit(args[0]) * ref_unit(args[1]), axis=1)
        close(result.cos_loss, 1 - cos)
        close(result.mag_loss, np.abs(np.linalg.norm(args[0], axis=1) - np.linalg.norm(args[1], axis=1)))
    elif op == "match":
        probes, gallery, k = args
        indices, scores = (to_numpy(v) for v in result)
        assert indices.shape == scores.shape == (len(probes), k) and indices.dtype == np.int64
        assert ((indices >= 0) & (indices < len(gallery))).all()
        cos = ref_unit(probes) @ ref_unit(gallery).T
        close(scores, np.take_along_axis(cos, indices, axis=1) if len(probes) else scores)


# ---------------------------------------------------------------------------------------------------- ops

@st.composite
def op_call(draw):
    """(op name, valid argument list) with random sizes, strides and special values."""
    op = draw(st.sampled_from(["pixel_shuffle_prelu", "pixel_shuffle_prelu_backward", "l2_norm", "quality",
                               "l2_normalize", "cosine_similarity", "cosine_matrix", "identity_loss", "match"]))
    size = st.integers(0, 6)
    if op.startswith("pixel_shuffle"):
        n, c, h, w, r = draw(size), draw(st.integers(0, 4)), draw(size), draw(size), draw(st.integers(1, 3))
        x = draw(array_args((n, c * r * r, h, w)))
        slope = draw(array_args((draw(st.sampled_from([c, 1])),)))
        if op == "pixel_shuffle_prelu":
            return op, [x, slope, r]
        return op, [draw(array_args((n, c, h * r, w * r))), x, slope, r]
    rows, dim = draw(st.integers(0, 40)), draw(st.integers(0, 40))
    a = draw(array_args((rows, dim)))
    if op in ("l2_norm", "quality"):
        return op, [a]
    if op == "l2_normalize":
        return op, [a, draw(st.sampled_from([1e-12, 0.0, 1.0]))]
    if op in ("cosine_similarity", "identity_loss"):
        return op, [a, draw(array_args((rows, dim)))]
    gallery_rows = draw(st.integers(0, 40))
    b = draw(array_args((gallery_rows, dim)))
    if op == "cosine_matrix":
        return op, [a, b]
    return op, [a, b, draw(st.integers(1, max(1, gallery_rows)))]


@st.composite
def broken_op_call(draw):
    op, args = draw(op_call())
    if draw(st.integers(0, 3)):  # three in four examples break one argument
        i = draw(st.integers(0, len(args) - 1))
        if isinstance(args[i], np.ndarray):
            args[i] = draw(broken(args[i]))
        else:
            args[i] = draw(st.sampled_from([0, -1, 2**40, 1.5, True, None, "2", float("nan"), -1e-3]))
    return op, args


@FUZZ
@given(broken_op_call())
def test_facade_never_crashes_and_never_lies(case):
    op, args = case
    ok, result = expect_clean(op, lambda: getattr(ops, op)(*args))
    if ok:
        check_result(op, args, result)


# ---------------------------------------------------------------------------------------------------- raw _C

def output_shapes(op, args):
    """Outputs of a raw call that would be right for these (valid) arguments: [(shape, dtype), ...]."""
    if op == "pixel_shuffle_prelu":
        x, slope, r = args
        return [((x.shape[0], x.shape[1] // (r * r), x.shape[2] * r, x.shape[3] * r), "float32")]
    if op == "pixel_shuffle_prelu_backward":
        return [(args[1].shape, "float32"), (args[2].shape, "float32")]
    if op in ("l2_norm", "cosine_similarity"):
        return [((args[0].shape[0],), "float32")]
    if op == "l2_normalize":
        return [(args[0].shape, "float32")]
    if op == "cosine_matrix":
        return [((args[0].shape[0], args[1].shape[0]), "float32")]
    if op == "identity_loss":
        rows = args[0].shape[0]
        return [((rows,), "float32"), ((rows,), "float32"), (args[0].shape, "float32"), (args[0].shape, "float32")]
    rows, k = args[0].shape[0], args[2]
    return [((rows, k), "int64"), ((rows, k), "float32")]


def raw_call(op, args, outputs, stream):
    return lambda: getattr(C, op)(*args, *outputs, stream)


def alias(source, shape):
    """A float32 view of `source`'s memory with `shape`, or None if it is too small or not plain float32."""
    need = int(np.prod(shape))
    if not (isinstance(source, np.ndarray) and source.dtype == np.float32 and source.flags.c_contiguous
            and source.flags.writeable and 0 < need <= source.size):
        return None
    return source.reshape(-1)[:need].reshape(shape)


@st.composite
def raw_case(draw):
    op, args = draw(op_call())
    if op == "quality":
        op = "l2_norm"
    outputs = [np.empty(shape, dtype) for shape, dtype in output_shapes(op, args)]
    what = draw(st.sampled_from(["valid", "input", "output", "output aliases input", "outputs alias"]))
    if what == "input":
        i = draw(st.integers(0, len(args) - 1))
        if isinstance(args[i], np.ndarray):
            args[i] = draw(broken(args[i]))
        else:
            args[i] = draw(st.sampled_from([0, -1, 2**40, -(2**62), 1.5, None, float("nan"), float("inf")]))
    elif what == "output":
        i = draw(st.integers(0, len(outputs) - 1))
        outputs[i] = draw(broken(outputs[i]))
    elif what == "output aliases input":
        i = draw(st.integers(0, len(outputs) - 1))
        if outputs[i].dtype == np.float32:
            views = [alias(a, outputs[i].shape) for a in args]
            outputs[i] = next((v for v in views if v is not None), outputs[i])
    elif what == "outputs alias" and len(outputs) > 1 and outputs[-1].dtype == np.float32:
        view = alias(outputs[0], outputs[-1].shape)
        outputs[-1] = view if view is not None else outputs[-1]
    stream = draw(st.sampled_from([0, 0, 0, 1, -1, 12345]))
    return op, args, outputs, stream


@FUZZ
@given(raw_case())
def test_raw_extension_never_crashes(case):
    op, args, outputs, stream = case
    ok, _ = expect_clean(op, raw_call(op, args, outputs, stream))
    if ok:
        results = {"identity_loss": lambda: ops.IdentityLoss(*outputs), "match": lambda: ops.Match(*outputs),
                   "pixel_shuffle_prelu_backward": lambda: tuple(outputs)}
        check_result(op, args, results.get(op, lambda: outputs[0])())


def test_fake_device_arrays_are_rejected_cleanly():
    """__cuda_array_interface__ dicts that lie or are malformed: a clear error, never a crash."""
    from iafsr_sdk._ext import CudaUnavailableError

    class Fake:
        def __init__(self, interface):
            self.__cuda_array_interface__ = interface

    good = {"shape": (2, 3), "typestr": "<f4", "data": (4096, False), "version": 3}
    variants = [
        good, {**good, "data": (0, False)}, {**good, "shape": (2, -3)}, {**good, "shape": [2, 3]},
        {**good, "typestr": 7}, {**good, "typestr": "<f"}, {**good, "typestr": ">f4"}, {**good, "data": "x"},
        {**good, "data": (2**70, False)}, {**good, "strides": (4,)}, {**good, "strides": (4, 8)},
        {**good, "mask": object()}, {"shape": (2, 3)}, {**good, "stream": "s"}, {**good, "data": (4097, True)},
    ]
    for interface in variants + ["not a dict", None]:
        with pytest.raises((ValueError, TypeError, CudaUnavailableError)):
            C.l2_norm(Fake(interface), np.empty(2, np.float32))

    class Raises:
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("cannot export")

    with pytest.raises(TypeError, match="could not be read"):
        C.l2_norm(Raises(), np.empty(2, np.float32))
