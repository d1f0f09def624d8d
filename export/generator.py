"""Export the generator to ONNX: an fp32, an fp16 and (with ``--int8``) an int8 file, and one model card.

    python -m export.generator --weights runs/iafsr/generator.pt --out iafsr_sdk/models/ [--int8]
    python -m export.generator --random-init --seed 0 --out iafsr_sdk/models/     # placeholder weights

The graph holds standard operators only: BatchNorm is folded into the convolutions, PixelShuffle is
``DepthToSpace`` (mode CRD) and each PReLU is ``Max(x, Mul(x, slope))`` with slopes shaped (C, 1, 1)
(:func:`_prelu_as_max`). The 9×9 output convolution (64 → 3 channels at 128×128) is computed on the four
pixel phases of the last PixelShuffle instead, an exact rewrite that is several times faster on CPUs
(:func:`_tail_on_pixel_phases`). The batch dimension is
dynamic; height and width are fixed at 16 in, 128 out.

All files take and return float32 NCHW RGB in [0, 1] (output not clipped). The fp16 file stores weights and
computes in float16 between a Cast after the input and a Cast before the output, so callers feed the same
arrays to any file.

Before anything is written, both graphs are checked against torch on real LFW faces degraded to 16×16
(``tests/fixtures/sdk_lfw_lr16.npy``): fp32 within ``FP32_TOLERANCE``; fp16 within twice the error that
torch's own float16 run of the same weights makes against its float32 run (at least ``FP16_FLOOR``).
The int8 file is the fp32 graph quantized by onnxruntime (static, QDQ: int8 weights per output channel,
uint8 activations per tensor; a PReLU between two integer convolutions runs on the 8-bit values,
:func:`_prelu_on_quantized`), calibrated on aligned faces of the training split of the UTKFace pool degraded
to 16×16 by the SDK's own ``degrade`` (never on LFW or CelebA). Layers named in ``INT8_FLOAT_LAYERS`` stay
float32. It is checked against the fp32 ONNX graph on the same LFW faces: mean absolute error within
``INT8_MEAN_TOLERANCE``, and no more than ``INT8_OUTLIER_SHARE`` of the values off by more than
``INT8_OUTLIER_LEVEL``. The card (``iafsr_generator.json``) records the measured errors, the calibration set and
method, the sha256 of every file and the command.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import shlex
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import TensorProto, helper, numpy_helper

from iafsr_sdk.faces import HR_SIZE, LR_SIZE, TEMPLATE_128, degrade
from training.data import DEFAULT_CACHE
from training.models import Generator, fold_batch_norm, load_generator, sha256_of

log = logging.getLogger("export.generator")

ROOT = Path(__file__).resolve().parents[1]
PARITY_FACES = ROOT / "tests" / "fixtures" / "sdk_lfw_lr16.npy"
OPSET = 18
INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
TAIL_PHASES = "sr_phases"  # the output convolution's result before the last DepthToSpace
TAIL_BANDS = 8  # horizontal bands the int8 output convolution runs on (_tail_in_row_bands)
FP32_FILE = "iafsr_generator.onnx"
FP16_FILE = "iafsr_generator_fp16.onnx"
INT8_FILE = "iafsr_generator_int8.onnx"
CARD_FILE = "iafsr_generator.json"
FP32_TOLERANCE = 1e-4
# A float16 value near 1 is exact to 2**-11 ≈ 4.9e-4; the bound never goes below that resolution.
FP16_FLOOR = 2.0**-11

# int8: calibration faces drawn from the training split of the UTKFace pool, and how they are used.
CALIBRATION_FACES = 512
CALIBRATION_SEED = 8
CALIBRATION_BATCH = 16  # faces per calibration run; histograms are merged batch by batch
INT8_METHOD = "percentile"  # onnxruntime's default 99.999th percentile of |x|
INT8_ACTIVATIONS = "uint8"
# Convolutions left in float32, by the name of their weights' module: the 16×16 / 32×32 trunk, 14 % of the
# multiply-adds but most of the loss (docs/usage.md has the measurements).
INT8_FLOAT_LAYERS = ("head", "blocks", "fuse", "upsample.0")
# Bounds of the int8 graph against the fp32 graph on the LFW parity faces (values in [0, 1] after clipping).
INT8_MEAN_TOLERANCE = 2.0 / 255
INT8_OUTLIER_LEVEL = 8.0 / 255
INT8_OUTLIER_SHARE = 1e-3

TERMS = (
    "The shipped weights are for non-commercial research only: they inherit the terms of the face data "
    "they were trained on (UTKFace) and evaluated on (LFW, CelebA), which are distributed for non-commercial "
    "research. For other uses, retrain on data you hold the rights to with the same scripts "
    "(python -m training.prepare, python -m training.train) and export with python -m export.generator."
)
METHOD = (
    "Identity-Aware Face Super-Resolution (Chen et al., IEEE Signal Processing Letters 2020): an SRResNet "
    "generator trained first with a pixel loss, then with the pixel loss plus an identity loss on a frozen "
    "face recognizer's features: the cosine (angle) between F(SR) and F(HR) and the gap of their magnitudes."
)


def make_generator(weights: Path | None, seed: int) -> tuple[Generator, dict]:
    """The trained generator from ``weights``, or a randomly initialised one (placeholder) from ``seed``."""
    if weights is not None:
        generator, config = load_generator(weights)
        run = Path(weights).parent / "run.json"  # beside weights published by training.train
        if run.exists():
            trained = json.loads(run.read_text())
            config["loss"] = {key: trained["config"][key] for key in ("pixel_weight", "cos_weight", "magnitude_weight")}
            config["loss"]["pixel_term"] = "squared error summed over the 128×128×3 pixels in [0, 1] (eq. 3)"
            config["recipe"], config["init"] = trained.get("recipe"), trained.get("init")
        return generator, dict(config, weights_sha256=sha256_of(weights))
    torch.manual_seed(seed)
    generator = Generator().eval()
    return generator, {"placeholder": True, "seed": seed}


def multiply_adds_per_face(model: torch.nn.Module) -> int:
    """Multiply-adds of the convolutions and matrix products for one 16×16 face."""
    total = 0

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.weight[0].numel()  # in_channels × kh × kw
        total += output.numel() * kernel

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, LR_SIZE, LR_SIZE))
    for hook in hooks:
        hook.remove()
    return total


def _strip_export_metadata(model: onnx.ModelProto) -> None:
    # The exporter records stack traces with local paths on every node; they make the file depend on
    # where it was built and carry nothing a user needs.
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        del value.metadata_props[:]
    for initializer in model.graph.initializer:
        del initializer.metadata_props[:]
    del model.metadata_props[:]
    model.graph.doc_string = ""


def _squeeze_prelu_slopes(model: onnx.ModelProto) -> None:
    """Give every PReLU slope the shape (C, 1, 1), which broadcasts over NCHW in every runtime."""
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in initializers:
            continue
        slope = initializers[node.input[1]]
        dims = list(slope.dims)
        if len(dims) == 4 and dims[0] == 1:
            values = numpy_helper.to_array(slope).reshape(dims[1:])
            slope.CopyFrom(numpy_helper.from_array(values, slope.name))
    # Shapes recorded before the change would contradict it; let the checker infer them again.
    del model.graph.value_info[:]


def _tail_on_pixel_phases(model: onnx.ModelProto) -> None:
    """Compute the output convolution on the pixel phases of the PixelShuffle before it: same sums, exact.

    The tail (9×9, 64 → 3 channels at 128×128) reads DepthToSpace(x), its PReLU already moved before the
    shuffle (:func:`_prelu_before_shuffles`). With 3 output channels it wastes most of onnxruntime's CPU
    convolution, which computes output channels in blocks of 8 or 16: it took half of the fp32 run time.
    Pixel (r·h + a, r·w + b) of its output only reads pixels of phases (i, j) of the shuffled input, which are
    channels c·r² + i·r + j of x. So the same sums are one convolution on x: 64·r² → 3·r² channels (colour o,
    phase a, b at o·r² + a·r + b), 5×5 for r = 2 and a 9×9 kernel, followed by a DepthToSpace (CRD) of 12
    channels.
    """
    graph = model.graph
    producer = {node.output[0]: node for node in graph.node}
    tail = producer[OUTPUT_NAME]
    shuffle = producer.get(tail.input[0])
    consumers = [name for node in graph.node for name in node.input]
    attributes = {a.name: helper.get_attribute_value(a) for a in shuffle.attribute} if shuffle is not None else {}
    if (tail.op_type != "Conv" or shuffle.op_type != "DepthToSpace" or attributes.get("mode", b"DCR") != b"CRD"
            or consumers.count(shuffle.output[0]) != 1):
        raise ValueError("the graph does not end in DepthToSpace (CRD) → Conv")
    initializers = {init.name: init for init in graph.initializer}
    weights = numpy_helper.to_array(initializers[tail.input[1]])
    bias = numpy_helper.to_array(initializers[tail.input[2]])
    conv = {a.name: helper.get_attribute_value(a) for a in tail.attribute}
    size, r = weights.shape[-1], int(attributes["blocksize"])
    pad = size // 2
    if (weights.shape[-2] != size or size % 2 == 0 or list(conv.get("pads", [])) != [pad] * 4
            or any(v != 1 for v in list(conv.get("strides", [])) + list(conv.get("dilations", [])))
            or conv.get("group", 1) != 1):
        raise ValueError(f"unexpected output convolution {conv} with weights {weights.shape}")
    low, high = -pad // r, (r - 1 + pad) // r  # offsets, in pixels before the shuffle, that a 9×9 window reaches
    phases = np.zeros((weights.shape[0] * r * r, weights.shape[1] * r * r, high - low + 1, high - low + 1),
                      np.float32)
    for a in range(r):
        for b in range(r):
            for i in range(r):
                for j in range(r):
                    for u in range(low, high + 1):
                        for v in range(low, high + 1):
                            dy, dx = r * u + i - a, r * v + j - b
                            if abs(dy) <= pad and abs(dx) <= pad:
                                phases[a * r + b::r * r, i * r + j::r * r, u - low, v - low] = \
                                    weights[:, :, dy + pad, dx + pad]
    for name in (tail.input[1], tail.input[2]):
        graph.initializer.remove(initializers[name])
    graph.initializer.extend([
        numpy_helper.from_array(phases, "tail.phases.weight"),
        numpy_helper.from_array(np.repeat(bias, r * r).astype(np.float32), "tail.phases.bias"),
    ])
    for node in (shuffle, tail):
        graph.node.remove(node)
    graph.node.extend([
        helper.make_node("Conv", [shuffle.input[0], "tail.phases.weight", "tail.phases.bias"], [TAIL_PHASES],
                         name=tail.name, kernel_shape=[high - low + 1] * 2, pads=[-low, -low, high, high]),
        helper.make_node("DepthToSpace", [TAIL_PHASES], [OUTPUT_NAME], name=shuffle.name, blocksize=r, mode="CRD"),
    ])
    del graph.value_info[:]


def _prelu_before_shuffles(model: onnx.ModelProto) -> None:
    """Move each PRelu that follows a DepthToSpace (CRD) before it, each slope repeated r² times: the same
    values; the output convolution can then read the shuffle directly (:func:`_tail_on_pixel_phases`), and the
    int8 file can apply the PReLU to a convolution's 8-bit output."""
    graph = model.graph
    producer = {node.output[0]: node for node in graph.node}
    consumers = [name for node in graph.node for name in node.input]
    initializers = {init.name: init for init in graph.initializer}
    for prelu in [node for node in graph.node if node.op_type == "PRelu"]:
        shuffle = producer.get(prelu.input[0])
        if shuffle is None or shuffle.op_type != "DepthToSpace" or consumers.count(shuffle.output[0]) != 1:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in shuffle.attribute}
        if attributes.get("mode", b"DCR") != b"CRD" or prelu.input[1] not in initializers:
            continue
        r = int(attributes["blocksize"])
        slopes = numpy_helper.to_array(initializers[prelu.input[1]]).reshape(-1)
        initializers[prelu.input[1]].CopyFrom(numpy_helper.from_array(
            np.repeat(slopes, r * r).reshape(-1, 1, 1).astype(np.float32), prelu.input[1]))
        before, after = shuffle.input[0], prelu.output[0]
        prelu.input[0], prelu.output[0] = before, after + "_phases"
        shuffle.input[0], shuffle.output[0] = after + "_phases", after
        position = list(graph.node).index(shuffle)
        graph.node.remove(prelu)
        graph.node.insert(position, prelu)
    del graph.value_info[:]


def _prelu_as_max(model: onnx.ModelProto) -> None:
    """Write each PRelu whose slopes all lie in [0, 1] as Max(x, Mul(x, slope)): the same values bit for bit
    (for such a slope, slope·x is the larger of the two exactly when x < 0), and onnxruntime's CPU PRelu
    kernel with a (C, 1, 1) slope is about 20 times slower than its Mul and Max (it took 42 % of the int8
    file's time and 26 % of the fp32 file's). Slopes outside [0, 1] keep the PRelu."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes = []
    for node in graph.node:
        slope = initializers.get(node.input[1]) if node.op_type == "PRelu" else None
        values = numpy_helper.to_array(slope) if slope is not None else None
        if values is None or values.min() < 0 or values.max() > 1:
            nodes.append(node)
            continue
        negative = node.output[0] + "_negative"
        nodes += [helper.make_node("Mul", [node.input[0], node.input[1]], [negative], name=node.name + "_negative"),
                  helper.make_node("Max", [node.input[0], negative], [node.output[0]], name=node.name)]
    del graph.node[:]
    graph.node.extend(nodes)


def _graph_links(model: onnx.ModelProto) -> tuple[dict, dict[str, list]]:
    """The node producing each tensor, and the nodes reading it."""
    producer = {name: node for node in model.graph.node for name in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def _prelu_on_quantized(model: onnx.ModelProto) -> None:
    """Run each Max(x, Mul(x, slope)) that sits between an integer convolution and the next on the 8-bit
    values: two QLinearMul onto the grid that calibration chose for the PReLU's output (one by the slopes,
    one by 1) and an 8-bit Max. As the grid's scale is positive, the larger quantized value is the quantized
    larger value, so this is QuantizeLinear(PReLU(x)) up to the rounding of the slopes to 8 bits; it replaces
    a float pass of dequantize, Mul, Max and quantize over the largest tensor of the graph (256 × 64 × 64 a
    face). Keeping the output's own grid matters: on the convolution's wider grid, the 8-bit values that the
    next convolution reads grow, and onnxruntime's uint8 × int8 kernel then saturates. A DepthToSpace between
    the Max and the quantization moves onto the 8-bit values too."""
    graph = model.graph
    producer, consumers = _graph_links(model)
    initializers = {init.name: init for init in graph.initializer}
    for maximum in [node for node in graph.node if node.op_type == "Max"]:
        x, negative = maximum.input
        dequantize, multiply = producer.get(x), producer.get(negative)
        after = consumers.get(maximum.output[0], [])
        shuffle = after[0] if len(after) == 1 and after[0].op_type == "DepthToSpace" else None
        if shuffle is not None:
            after = consumers.get(shuffle.output[0], [])
        if (dequantize is None or dequantize.op_type != "DequantizeLinear" or multiply is None
                or multiply.op_type != "Mul" or multiply.input[0] != x or multiply.input[1] not in initializers
                or len(after) != 1 or after[0].op_type != "QuantizeLinear"):
            continue
        quantize = after[0]
        x_q, scale, zero_point = dequantize.input
        out_scale, out_zero_point = quantize.input[1], quantize.input[2]
        dtype = numpy_helper.to_array(initializers[zero_point]).dtype
        slopes = numpy_helper.to_array(initializers[multiply.input[1]])
        slope_scale = np.float32(max(float(slopes.max()), 1e-8) / np.iinfo(dtype).max)
        name = maximum.name
        graph.initializer.extend([
            # (1, C, 1, 1): onnxruntime's layout optimiser transposes a 4-d constant along with the tensor.
            numpy_helper.from_array(np.round(slopes / slope_scale).astype(dtype).reshape(1, -1, 1, 1),
                                    name + "_slopes"),
            numpy_helper.from_array(np.array(slope_scale, np.float32), name + "_slopes_scale"),
            numpy_helper.from_array(np.array(0, dtype), name + "_zero"),
            numpy_helper.from_array(np.array(1, dtype), name + "_one"),
            numpy_helper.from_array(np.array(1, np.float32), name + "_one_scale"),
        ])
        replacement = [
            helper.make_node("QLinearMul", [x_q, scale, zero_point, name + "_slopes", name + "_slopes_scale",
                                            name + "_zero", out_scale, out_zero_point], [name + "_negative_q"],
                             name=name + "_negative", domain="com.microsoft"),
            helper.make_node("QLinearMul", [x_q, scale, zero_point, name + "_one", name + "_one_scale",
                                            name + "_zero", out_scale, out_zero_point], [name + "_positive_q"],
                             name=name + "_positive", domain="com.microsoft"),
            helper.make_node("Max", [name + "_positive_q", name + "_negative_q"],
                             [quantize.output[0] if shuffle is None else name + "_q"], name=name),
        ]
        if shuffle is not None:
            shuffled = helper.make_node("DepthToSpace", [name + "_q"], [quantize.output[0]], name=shuffle.name)
            shuffled.attribute.extend(shuffle.attribute)
            replacement.append(shuffled)
        if len(consumers[x]) == 2:
            graph.node.remove(dequantize)
        position = list(graph.node).index(multiply)
        for node in (multiply, maximum, quantize) + ((shuffle,) if shuffle is not None else ()):
            graph.node.remove(node)
        for node in reversed(replacement):
            graph.node.insert(position, node)
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def export_fp32(generator: Generator) -> onnx.ModelProto:
    """The BN-folded generator as an ONNX graph with a dynamic batch dimension."""
    folded = fold_batch_norm(generator).eval()
    example = torch.rand(2, 3, LR_SIZE, LR_SIZE)
    with warnings.catch_warnings():
        # The exporter's own deprecation notices are not about this model.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        program = torch.onnx.export(
            folded,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    model = program.model_proto
    _strip_export_metadata(model)
    _squeeze_prelu_slopes(model)
    _prelu_before_shuffles(model)
    _tail_on_pixel_phases(model)
    _prelu_as_max(model)
    model.producer_name = "iafsr export.generator"
    model.producer_version = ""
    onnx.checker.check_model(model, full_check=True)
    return model


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and compute, float32 input and output (a Cast at each end)."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    for initializer in graph.initializer:
        if initializer.data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(initializer).astype(np.float16)
            initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
    for node in graph.node:
        if node.op_type == "Constant" or node.op_type == "Cast":
            raise ValueError(f"unexpected {node.op_type} node in the generator graph: extend to_fp16")
    input_half, output_half = f"{INPUT_NAME}_fp16", f"{OUTPUT_NAME}_fp16"
    for node in graph.node:
        node.input[:] = [input_half if name == INPUT_NAME else name for name in node.input]
        node.output[:] = [output_half if name == OUTPUT_NAME else name for name in node.output]
    graph.node.insert(0, helper.make_node("Cast", [INPUT_NAME], [input_half], to=TensorProto.FLOAT16,
                                          name="cast_input_to_fp16"))
    graph.node.append(helper.make_node("Cast", [output_half], [OUTPUT_NAME], to=TensorProto.FLOAT,
                                       name="cast_output_to_fp32"))
    del graph.value_info[:]
    half = onnx.shape_inference.infer_shapes(half, strict_mode=True)
    onnx.checker.check_model(half, full_check=True)
    return half


def calibration_faces(cache: Path = DEFAULT_CACHE, count: int = CALIBRATION_FACES,
                      seed: int = CALIBRATION_SEED) -> tuple[np.ndarray, dict]:
    """``count`` faces of the training split of the UTKFace pool (the rows ``training.train`` trains on),
    degraded to 16×16 as uint8 NHWC, and a description of them for the card."""
    from training.data import load_set, split_pool, training_rows

    train_rows, _ = split_pool(training_rows(cache))
    chosen = np.sort(np.random.default_rng(seed).choice(train_rows, size=min(count, len(train_rows)), replace=False))
    lr = degrade(np.asarray(load_set("utkface", cache).faces[chosen]))
    description = {
        "set": "UTKFace aligned 128×128 faces of the training split (training.data.training_rows with the "
               "identity filter, then split_pool's training part), degraded to 16×16 by iafsr_sdk.faces.degrade",
        "faces": int(len(chosen)),
        "pool_faces": int(len(train_rows)),
        "draw": f"numpy.random.default_rng({seed}).choice(training rows, {len(chosen)}, replace=False), sorted",
        "rows_sha256": hashlib.sha256(chosen.astype("<i8").tobytes()).hexdigest(),
        "lr_faces_sha256": hashlib.sha256(np.ascontiguousarray(lr).tobytes()).hexdigest(),
    }
    return lr, description


class _CalibrationBatches:
    """onnxruntime's calibration data reader over float32 NCHW faces, ``batch`` faces per run."""

    def __init__(self, lr_nchw: np.ndarray, batch: int):
        self._batches = [lr_nchw[start:start + batch] for start in range(0, len(lr_nchw), batch)]
        self._range = (0, len(self._batches))
        self._next = 0

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._range = (start_index, min(end_index, len(self._batches)))
        self._next = start_index

    def get_next(self) -> dict | None:
        if self._next >= self._range[1]:
            return None
        self._next += 1
        return {INPUT_NAME: self._batches[self._next - 1]}


def float_conv_nodes(model: onnx.ModelProto, layers: Sequence[str]) -> list[str]:
    """Names of the Conv nodes whose weights belong to the modules ``layers`` (e.g. "blocks", "upsample.0")."""
    names = []
    for layer in layers:
        found = [node.name for node in model.graph.node
                 if node.op_type == "Conv" and node.input[1].startswith(layer + ".")]
        if not found:
            raise ValueError(f"no convolution belongs to layer {layer!r}")
        names += found
    return names


def _tail_in_row_bands(model: onnx.ModelProto, bands: int = TAIL_BANDS) -> None:
    """Run the integer output convolution on ``bands`` horizontal bands of its 8-bit input, stacked along the
    batch axis, and put the bands of its 8-bit output back in place: the same sums, exact.

    The convolution (5×5, 256 → 12 channels at 64×64) is the slowest integer node at batch 1: onnxruntime's
    uint8 kernel turns each output pixel's 5×5×256 inputs into one row of a matrix for only 12 output
    channels. On bands it does so on smaller pieces (``python -m benchmarks.enhancer --baseline`` against an
    export with ``--tail-bands 1`` measures the whole model). The input is padded with its zero point (the
    quantized 0) by the convolution's row padding, then each band reads its rows plus that overlap; the
    convolution keeps only its column padding."""
    graph = model.graph
    producer, consumers = _graph_links(model)
    conv = producer[TAIL_PHASES]
    dequantize, after = producer.get(conv.input[0]), consumers.get(TAIL_PHASES, [])
    quantize = after[0] if len(after) == 1 else None
    attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    pads, size = list(attributes.get("pads", [0, 0, 0, 0])), list(attributes["kernel_shape"])
    if (dequantize is None or dequantize.op_type != "DequantizeLinear" or len(consumers[conv.input[0]]) != 1
            or quantize is None or quantize.op_type != "QuantizeLinear" or pads[0] != pads[2]
            or any(v != 1 for v in list(attributes.get("strides", [])) + list(attributes.get("dilations", [])))):
        raise ValueError("the output convolution is not an integer convolution with symmetric row padding")
    inferred = {value.name: value for value in onnx.shape_inference.infer_shapes(model).graph.value_info}
    channels, height, width = [d.dim_value for d in inferred[TAIL_PHASES].type.tensor_type.shape.dim][1:]
    if height % bands:
        raise ValueError(f"{height} rows do not split into {bands} bands")
    rows, overlap = height // bands, size[0] - 1
    x_q, zero_point = dequantize.input[0], dequantize.input[2]
    name = conv.name + "_bands"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0, 0, pads[0], 0, 0, 0, pads[2], 0], np.int64), name + "_pads"),
        numpy_helper.from_array(np.array([2], np.int64), name + "_axis"),
        numpy_helper.from_array(np.array([bands, -1, channels, rows, width], np.int64), name + "_split_shape"),
        numpy_helper.from_array(np.array([-1, channels, height, width], np.int64), name + "_joined_shape"),
    ])
    for band in range(bands):
        graph.initializer.extend([
            numpy_helper.from_array(np.array([band * rows], np.int64), f"{name}_start{band}"),
            numpy_helper.from_array(np.array([band * rows + rows + overlap], np.int64), f"{name}_end{band}")])
    before = [helper.make_node("Pad", [x_q, name + "_pads", zero_point], [name + "_padded"], name=name + "_pad",
                               mode="constant")]
    before += [helper.make_node("Slice", [name + "_padded", f"{name}_start{band}", f"{name}_end{band}",
                                          name + "_axis"], [f"{name}_band{band}"], name=f"{name}_slice_{band}")
               for band in range(bands)]
    before.append(helper.make_node("Concat", [f"{name}_band{band}" for band in range(bands)], [name + "_stacked"],
                                   name=name + "_stack", axis=0))
    # (bands·N, C, rows, W) → (bands, N, C, rows, W) → (N, C, bands, rows, W) → (N, C, H, W)
    output = quantize.output[0]
    joined = [helper.make_node("Reshape", [name + "_q", name + "_split_shape"], [name + "_split"],
                               name=name + "_split"),
              helper.make_node("Transpose", [name + "_split"], [name + "_joined"], name=name + "_join",
                               perm=[1, 2, 0, 3, 4]),
              helper.make_node("Reshape", [name + "_joined", name + "_joined_shape"], [output],
                               name=name + "_joined")]
    dequantize.input[0] = name + "_stacked"
    quantize.output[0] = name + "_q"
    for attribute in conv.attribute:
        if attribute.name == "pads":
            attribute.ints[:] = [0, pads[1], 0, pads[3]]
    nodes = list(graph.node)
    nodes[nodes.index(dequantize):nodes.index(dequantize)] = before
    nodes[nodes.index(quantize) + 1:nodes.index(quantize) + 1] = joined
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]


def _output_shuffle_on_quantized(model: onnx.ModelProto) -> None:
    """Move the last DepthToSpace before the DequantizeLinear that feeds it: the same values (a shuffle of a
    per-tensor grid), moved as 8-bit values instead of float32."""
    producer, consumers = _graph_links(model)
    initializers = {init.name: init for init in model.graph.initializer}
    shuffle = producer[OUTPUT_NAME]
    dequantize = producer.get(shuffle.input[0])
    moves = (shuffle.op_type == "DepthToSpace" and dequantize is not None
             and dequantize.op_type == "DequantizeLinear" and len(consumers[shuffle.input[0]]) == 1)
    scale = initializers.get(dequantize.input[1]) if moves else None
    if scale is None or int(np.prod(scale.dims)) != 1:
        raise ValueError("the graph does not end in a per-tensor DequantizeLinear → DepthToSpace")
    quantized = dequantize.input[0]
    shuffle.input[0], shuffle.output[0] = quantized, quantized + "_shuffled"
    dequantize.input[0], dequantize.output[0] = quantized + "_shuffled", OUTPUT_NAME
    nodes = list(model.graph.node)
    nodes.remove(shuffle)
    nodes.insert(nodes.index(dequantize), shuffle)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def to_int8(model: onnx.ModelProto, lr_nchw: np.ndarray, method: str = INT8_METHOD,
            activations: str = INT8_ACTIVATIONS, float_layers: Sequence[str] = INT8_FLOAT_LAYERS,
            batch: int = CALIBRATION_BATCH, calibration_cache: Path | None = None,
            tail_bands: int = TAIL_BANDS) -> onnx.ModelProto:
    """The fp32 graph quantized statically by onnxruntime in QDQ form: int8 weights per output channel,
    ``activations`` ("uint8" or "int8") per tensor with ranges from ``method`` ("minmax", "entropy",
    "percentile") on the calibration faces ``lr_nchw``; the convolutions of ``float_layers`` stay float32.
    The quantizer quantizes only convolutions (onnxruntime has no integer PRelu, and an integer Add would only
    add a rounding to the float layers around it); the PReLUs and shuffles between integer convolutions move
    onto the 8-bit values afterwards. ``calibration_cache`` (a JSON file) keeps the
    ranges of a first call for later calls with the same faces and method. An integer output convolution runs
    on ``tail_bands`` row bands (1: on the whole input)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    reader = _CalibrationBatches(lr_nchw, batch)
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        # From a file: given a ModelProto, quantize_static moves its weights out to a temporary file.
        source, path = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save_model(model, source)
        quantize_static(
            source, path, reader, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
            activation_type=types[activations], weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
            nodes_to_exclude=float_conv_nodes(model, float_layers), calibrate_method=methods[method],
            calibration_cache_path=calibration_cache,
            # One batch per calibration pass: the histogram methods otherwise hold every activation of every
            # face at once (about 16 MB a face). The output is quantized on the 8-bit image grid itself:
            # [0, 1] in steps of 1/255, so it adds no rounding to the SDK's uint8 output.
            extra_options={"CalibStridedMinMax": 1, "TensorQuantOverrides": {
                TAIL_PHASES: [{"rmin": np.float32(0.0), "rmax": np.float32(1.0)}]}},
        )
        quantized = onnx.load(path)
    _prelu_on_quantized(quantized)
    if "tail" not in float_layers:
        if tail_bands > 1:
            _tail_in_row_bands(quantized, tail_bands)
        _output_shuffle_on_quantized(quantized)
    _strip_export_metadata(quantized)
    quantized.producer_name = "iafsr export.generator"
    quantized.producer_version = ""
    onnx.checker.check_model(quantized, full_check=True)
    return quantized


def int8_errors(fp32: onnx.ModelProto, int8: onnx.ModelProto, lr_nchw: np.ndarray) -> dict:
    """Differences of the int8 graph from the fp32 graph, both clipped to [0, 1] as the SDK does."""
    reference = np.clip(run_onnx(fp32, lr_nchw), 0, 1)
    difference = np.abs(np.clip(run_onnx(int8, lr_nchw), 0, 1) - reference)
    return {"mean_abs_error": float(difference.mean()), "max_abs_error": float(difference.max()),
            "outlier_share": float((difference > INT8_OUTLIER_LEVEL).mean()),
            "psnr_db": float(10 * np.log10(1.0 / max(float((difference ** 2).mean()), 1e-12)))}


def check_int8(fp32: onnx.ModelProto, int8: onnx.ModelProto, lr_nchw: np.ndarray) -> dict:
    """:func:`int8_errors` on the parity faces with their bounds; raises if a bound is broken."""
    errors = int8_errors(fp32, int8, lr_nchw)
    report = {"faces": int(lr_nchw.shape[0]), "reference": "the fp32 ONNX graph, outputs clipped to [0, 1]",
              **{f"int8_{key}": value for key, value in errors.items()},
              "int8_mean_bound": INT8_MEAN_TOLERANCE, "int8_outlier_level": INT8_OUTLIER_LEVEL,
              "int8_outlier_share_bound": INT8_OUTLIER_SHARE}
    log.info("int8 against fp32 on %d LFW faces: mean %.2f/255 (bound %.1f/255), max %.1f/255, %.2g of values "
             "off by more than %.0f/255 (bound %.0e), PSNR %.1f dB", report["faces"], 255 * errors["mean_abs_error"],
             255 * INT8_MEAN_TOLERANCE, 255 * errors["max_abs_error"], errors["outlier_share"],
             255 * INT8_OUTLIER_LEVEL, INT8_OUTLIER_SHARE, errors["psnr_db"])
    if not errors["mean_abs_error"] <= INT8_MEAN_TOLERANCE:
        raise RuntimeError(f"int8 ONNX differs from fp32 by {errors['mean_abs_error']:.3g} on average "
                           f"> {INT8_MEAN_TOLERANCE:.3g}")
    if not errors["outlier_share"] <= INT8_OUTLIER_SHARE:
        raise RuntimeError(f"{errors['outlier_share']:.3g} of the int8 values differ from fp32 by more than "
                           f"{INT8_OUTLIER_LEVEL:.3g} (bound {INT8_OUTLIER_SHARE:.0e})")
    return report


def run_onnx(model: onnx.ModelProto, lr_nchw: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: lr_nchw})[0]


def parity_faces(path: Path = PARITY_FACES) -> np.ndarray:
    """Real LFW faces degraded to 16×16 as float32 NCHW in [0, 1]."""
    return to_nchw(np.load(path))


def to_nchw(faces: np.ndarray) -> np.ndarray:
    """(N, 16, 16, 3) uint8 faces as float32 NCHW in [0, 1], as the SDK feeds them."""
    return np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def check_parity(generator: Generator, fp32: onnx.ModelProto, fp16: onnx.ModelProto, lr_nchw: np.ndarray) -> dict:
    """Largest absolute differences against torch; raises if a bound is broken."""
    folded = fold_batch_norm(generator).eval()
    with torch.no_grad():
        reference = generator.eval()(torch.from_numpy(lr_nchw)).numpy()
        torch_half = folded.half()(torch.from_numpy(lr_nchw).half()).float().numpy()
    fp32_error = float(np.abs(run_onnx(fp32, lr_nchw) - reference).max())
    fp16_error = float(np.abs(run_onnx(fp16, lr_nchw) - reference).max())
    torch_half_error = float(np.abs(torch_half - reference).max())
    fp16_bound = max(2.0 * torch_half_error, FP16_FLOOR)
    report = {
        "faces": int(lr_nchw.shape[0]),
        "reference": "torch float32 eager, BatchNorm unfolded",
        "fp32_max_abs_error": fp32_error,
        "fp32_bound": FP32_TOLERANCE,
        "fp16_max_abs_error": fp16_error,
        "torch_fp16_max_abs_error": torch_half_error,
        "fp16_bound": fp16_bound,
        "fp16_bound_rule": "2 × torch's own float16 error vs float32 on the same faces, at least 2**-11",
    }
    log.info("parity on %d LFW faces: fp32 %.3g (bound %.0e), fp16 %.3g (bound %.3g; torch fp16 %.3g)",
             report["faces"], fp32_error, FP32_TOLERANCE, fp16_error, fp16_bound, torch_half_error)
    if not fp32_error <= FP32_TOLERANCE:
        raise RuntimeError(f"fp32 ONNX differs from torch by {fp32_error:.3g} > {FP32_TOLERANCE}")
    if not fp16_error <= fp16_bound:
        raise RuntimeError(f"fp16 ONNX differs from torch by {fp16_error:.3g} > {fp16_bound:.3g}")
    return report


def make_card(generator: Generator, config: dict, graph: onnx.ModelProto, parity: dict, command: str,
              metrics: dict | None, int8: dict | None = None) -> dict:
    placeholder = bool(config.get("placeholder", False))
    parameters = sum(p.numel() for p in fold_batch_norm(generator).parameters())
    training = (
        {"data": None, "seed": config.get("seed"), "note": f"PLACEHOLDER: randomly initialised with seed {config.get('seed')}, not trained. "
                               "Its output is not a face; it only exercises the runtime."}
        if placeholder
        else {"data": config.get("data", "UTKFace aligned & cropped subset, faces close to LFW/CelebA "
                                         "identities removed (results/pool_filter.md)"),
              "config": {k: v for k, v in config.items() if k != "weights_sha256"}}
    )
    return {
        "name": "iafsr_generator",
        "placeholder": placeholder,
        "summary": "Super-resolves aligned 16×16 faces to 128×128 (×8) for face recognition.",
        "architecture": {
            "type": "SRResNet generator (paper §II-B)",
            "head": "Conv 9×9 3→64 + PReLU",
            "residual_blocks": len(generator.blocks),
            "upsample_blocks": len(generator.upsample),
            "channels": 64,
            "tail": "Conv 9×9 64→3",
            "onnx_tail": "the tail computed on the 4 pixel phases of the last PixelShuffle: PReLU before the "
                         "shuffle, Conv 5×5 256→12 at 64×64, DepthToSpace 2 (CRD); the same sums",
            "onnx_prelu": "each PReLU with slopes in [0, 1] as Max(x, Mul(x, slope)), the same values; the "
                          "upsampling blocks' PReLUs before their shuffles, each slope repeated 4 times",
            "batch_norm": "folded into the preceding convolutions",
            "onnx_ops": sorted({node.op_type for node in graph.graph.node}),
            "opset": OPSET,
        },
        "parameters": int(parameters),
        "multiply_adds_per_face": int(multiply_adds_per_face(fold_batch_norm(generator))),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, LR_SIZE, LR_SIZE], "dtype": "float32",
                  "layout": "NCHW", "channels": "RGB", "range": "[0, 1] (uint8 / 255)"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", 3, HR_SIZE, HR_SIZE], "dtype": "float32",
                   "layout": "NCHW", "channels": "RGB", "range": "[0, 1] nominal, not clipped: clip before use"},
        "precision": {
            "fp32": "float32 weights and compute",
            "fp16": "float16 weights and compute, float32 input and output (Cast at both ends)",
            **({"int8": int8["summary"]} if int8 else {}),
        },
        "alignment": {
            "template": "ArcFace 5-point template scaled from 112 to 128: eye on the image's left, other eye, "
                        "nose tip, mouth corner on the image's left, other mouth corner",
            "points_128": [[round(float(v), 4) for v in point] for point in TEMPLATE_128],
            "warp": "similarity transform of the 5 detected landmarks onto the template (iafsr_sdk.align)",
            "low_resolution": "the 128×128 aligned crop resized to 16×16 by antialiased bicubic "
                              "(Pillow BICUBIC; iafsr_sdk.faces.degrade)",
        },
        "training": training,
        "terms": TERMS,
        "method": METHOD,
        "metrics": metrics,
        "export": {
            "command": command,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "source_weights_sha256": config.get("weights_sha256"),
            "parity": parity,
            **({"int8": {key: value for key, value in int8.items() if key != "summary"}} if int8 else {}),
        },
    }


def _embed_card(model: onnx.ModelProto, card: dict, precision: str) -> None:
    entries = {key: value for key, value in card.items() if key != "files"}
    entries["precision"] = precision
    del model.metadata_props[:]
    for key, value in entries.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        model.metadata_props.add(key=key, value=text)
    model.doc_string = card["summary"] + (" PLACEHOLDER weights, not trained." if card["placeholder"] else "")


def int8_section(calibration: dict, parity: dict, method: str = INT8_METHOD, activations: str = INT8_ACTIVATIONS,
                 float_layers: Sequence[str] = INT8_FLOAT_LAYERS, batch: int = CALIBRATION_BATCH,
                 tail_bands: int = TAIL_BANDS) -> dict:
    """What the card says about the int8 file."""
    kept = ", ".join(float_layers) or "none"
    return {
        "summary": f"int8 weights (per output channel) and {activations} activations (per tensor) in QDQ form, "
                   f"run by onnxruntime's integer kernels; float32 input and output; convolutions kept in "
                   f"float32: {kept}; a PReLU between two integer convolutions runs on the 8-bit values "
                   f"(com.microsoft.QLinearMul by the slopes and by 1, Max), as do the last two PixelShuffles "
                   f"(DepthToSpace on uint8); the output convolution runs on {tail_bands} row band(s). "
                   f"Made for CPUs (x86 with VNNI or AVX2, Arm)",
        "quantizer": f"onnxruntime.quantization.quantize_static {onnxruntime.__version__}: QDQ, per_channel=True, "
                     f"reduce_range=False, weight_type=QInt8, activation_type="
                     f"{'QUInt8' if activations == 'uint8' else 'QInt8'}",
        "calibration_method": method,
        "calibration_batch": batch,
        "calibration": calibration,
        "output_range": "[0, 1] in steps of 1/255 (zero point 0): the 8-bit image grid",
        "float_layers": list(float_layers),
        "output_conv_row_bands": tail_bands,
        "float_layers_reason": "measured layer by layer on the validation split of the pool (docs/usage.md): "
                               "the 9×9 head, the residual blocks, the fuse convolution and the first upsampling "
                               "convolution hold 14 % of the multiply-adds and most of the loss of an all-int8 "
                               "graph; the last two upsampling convolutions and the 9×9 tail (86 %) lose least",
        "parity": parity,
    }


def export(generator: Generator, config: dict, out_dir: Path, command: str,
           metrics: dict | None = None, faces: Path = PARITY_FACES, int8: bool = False,
           cache: Path = DEFAULT_CACHE, tail_bands: int = TAIL_BANDS) -> dict:
    """Write the fp32 and fp16 ONNX files (and with ``int8`` the int8 file, calibrated on the UTKFace cache
    under ``cache``, its output convolution on ``tail_bands`` row bands) and the card into ``out_dir``; return
    the card."""
    fp32 = export_fp32(generator)
    fp16 = to_fp16(fp32)
    lr_nchw = parity_faces(faces)
    parity = check_parity(generator, fp32, fp16, lr_nchw)
    models = [("fp32", fp32, FP32_FILE), ("fp16", fp16, FP16_FILE)]
    int8_card = None
    if int8:
        calibration_lr, calibration = calibration_faces(cache)
        quantized = to_int8(fp32, to_nchw(calibration_lr), tail_bands=tail_bands)
        int8_card = int8_section(calibration, check_int8(fp32, quantized, lr_nchw), tail_bands=tail_bands)
        models.append(("int8", quantized, INT8_FILE))
    card = make_card(generator, config, fp32, parity, command, metrics, int8_card)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / INT8_FILE
    if not int8 and stale.exists():
        stale.unlink()  # an int8 file of other weights must not sit beside this card
        log.info("removed %s (export without --int8)", stale)
    files = {}
    for precision, model, name in models:
        _embed_card(model, card, precision)
        onnx.checker.check_model(model, full_check=True)
        path = out_dir / name
        onnx.save_model(model, path)
        files[precision] = {"file": name, "sha256": sha256_of(path), "bytes": path.stat().st_size}
        log.info("wrote %s (%.2f MB)", path, path.stat().st_size / 1e6)
    card["files"] = files
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    log.info("wrote %s", out_dir / CARD_FILE)
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export the generator to ONNX (fp32, fp16, int8) with a model card.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help="generator weights written by training (save_generator)")
    source.add_argument("--random-init", action="store_true", help="placeholder: randomly initialised weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    parser.add_argument("--out", type=Path, default=ROOT / "iafsr_sdk" / "models")
    parser.add_argument("--metrics", type=Path, help="JSON of evaluation results to put in the card")
    parser.add_argument("--faces", type=Path, default=PARITY_FACES, help="(N, 16, 16, 3) uint8 faces for parity")
    parser.add_argument("--int8", action="store_true", help="also write the int8 file, calibrated on the training "
                        "split of the UTKFace cache (python -m training.prepare, training.filter_pool first)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="the face caches (for --int8)")
    parser.add_argument("--tail-bands", type=int, default=TAIL_BANDS,
                        help="row bands the int8 output convolution runs on, a divisor of 64 (1: the whole input)")
    args = parser.parse_args(argv)
    if args.tail_bands < 1 or 64 % args.tail_bands:
        parser.error(f"--tail-bands {args.tail_bands}: not a divisor of the output convolution's 64 rows")
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)

    arguments = sys.argv[1:] if argv is None else argv
    command = "python -m export.generator " + " ".join(shlex.quote(a) for a in arguments)
    generator, config = make_generator(args.weights, args.seed)
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    export(generator, config, args.out, command, metrics, args.faces, int8=args.int8, cache=args.cache,
           tail_bands=args.tail_bands)


if __name__ == "__main__":
    main()
