"""Generator → ONNX export: parity with torch on real faces, the operators written, dynamic batch, checker,
model card; and the same checks on the model files shipped in the package."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
import onnxruntime  # noqa: E402

from export import generator as exporter  # noqa: E402
from training.models import Generator, save_generator  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHIPPED = Path(exporter.__file__).resolve().parents[1] / "iafsr_sdk" / "models"
ALLOWED_OPS = {"Conv", "Mul", "Max", "DepthToSpace", "Add", "Cast"}  # PReLU as Max(x, Mul(x, slope))
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearMul", "Reshape", "Transpose", "Pad", "Slice", "Concat"}


def trained_like_generator(seed: int) -> Generator:
    """A generator whose BatchNorm statistics and PReLU slopes are not at their defaults, so that BN
    folding and per-layer slopes are really exercised, with outputs around the [0, 1] image range."""
    torch.manual_seed(seed)
    generator = Generator()
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.05, 0.4)
        generator.tail.weight.mul_(20.0)
        generator.tail.bias.fill_(0.5)
    return generator.eval()


@pytest.fixture(scope="module")
def lr_faces() -> np.ndarray:
    """16 real LFW faces degraded to 16×16, float32 NCHW in [0, 1]."""
    return exporter.parity_faces()[:16]


def synthetic_pool(folder: Path, count: int = 48) -> Path:
    """A UTKFace cache as training.prepare and training.filter_pool leave it: smooth random 128×128 faces,
    all detected and inside the photo, every row kept."""
    rng = np.random.default_rng(5)
    coarse = rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
    faces = coarse.repeat(16, axis=1).repeat(16, axis=2)
    pool = folder / "utkface"
    pool.mkdir(parents=True)
    np.save(pool / "faces.npy", faces)
    np.save(pool / "masks.npy", np.ones((count, 128, 128), np.uint8))
    lines = ["row\tpath\tstatus\tscore\tvalid_fraction"] + [f"{i}\t{i}.jpg\tdetected\t0.9\t1.0" for i in range(count)]
    (pool / "index.tsv").write_text("\n".join(lines) + "\n")
    (pool / "keep.txt").write_text("".join(f"{i}\n" for i in range(count)))
    (pool / "DONE").write_text("ok\n")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, lr_faces) -> dict[str, tuple[Path, Generator]]:
    """Two exports of different generators: one through the command line (from a weights file, with the int8
    file calibrated on a synthetic training pool, its output convolution on 4 row bands), one through
    :func:`export.generator.export`."""
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (the train extra)")
    root = tmp_path_factory.mktemp("export")
    faces = root / "faces.npy"
    np.save(faces, (lr_faces.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8))

    plain = trained_like_generator(seed=1)
    weights = root / "plain.pt"
    save_generator(weights, plain, {"method": "test"})
    exporter.main(["--weights", str(weights), "--out", str(root / "plain"), "--faces", str(faces), "--int8",
                   "--cache", str(synthetic_pool(root / "cache")), "--tail-bands", "4"])

    other = trained_like_generator(seed=2)
    exporter.export(other, {"method": "other"}, root / "api", "test", faces=faces)
    return {"cli": (root / "plain", plain), "api": (root / "api", other)}


def run(path: Path, lr: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: lr})[0]


@pytest.mark.parametrize("variant", ["cli", "api"])
def test_parity_with_torch_on_real_faces(exported, lr_faces, variant):
    folder, generator = exported[variant]
    with torch.no_grad():
        reference = generator(torch.from_numpy(lr_faces)).numpy()
        torch_half = exporter.fold_batch_norm(generator).half()(torch.from_numpy(lr_faces).half()).float().numpy()
    assert 0.2 < reference.std() and reference.max() - reference.min() > 1, "outputs should span an image range"
    fp32_error = np.abs(run(folder / exporter.FP32_FILE, lr_faces) - reference).max()
    assert fp32_error <= 1e-4
    fp16_error = np.abs(run(folder / exporter.FP16_FILE, lr_faces) - reference).max()
    assert fp16_error <= max(2 * np.abs(torch_half - reference).max(), exporter.FP16_FLOOR)


@pytest.mark.parametrize("variant", ["cli", "api"])
def test_card_records_parity_and_files(exported, variant):
    folder, _ = exported[variant]
    card = json.loads((folder / exporter.CARD_FILE).read_text())
    parity = card["export"]["parity"]
    assert parity["fp32_max_abs_error"] <= parity["fp32_bound"] == exporter.FP32_TOLERANCE
    assert parity["fp16_max_abs_error"] <= parity["fp16_bound"]
    for precision, entry in card["files"].items():
        assert hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert card["placeholder"] is False


def test_card_names_the_source_weights(exported):
    folder, _ = exported["cli"]
    card = json.loads((folder / exporter.CARD_FILE).read_text())
    assert card["export"]["source_weights_sha256"] and card["training"]["config"]["method"] == "test"
    assert card["export"]["command"].startswith("python -m export.generator --weights")


def check_graph(path: Path) -> None:
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    ops = [node.op_type for node in model.graph.node]
    assert set(ops) <= ALLOWED_OPS, f"unexpected operators {set(ops) - ALLOWED_OPS}"
    shuffles = [node for node in model.graph.node if node.op_type == "DepthToSpace"]
    assert len(shuffles) == 3
    for node in shuffles:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes == {"blocksize": 2, "mode": b"CRD"}
    initializers = {init.name: init for init in model.graph.initializer}
    slopes = [list(initializers[node.input[1]].dims) for node in model.graph.node if node.op_type == "Mul"]
    assert slopes == [[64, 1, 1]] * 7 + [[256, 1, 1]] * 3  # the upsampling PReLUs act before their shuffles
    # The output convolution runs on the 4 pixel phases before the last shuffle: 256 → 12 channels, 5×5.
    body = [node for node in model.graph.node if node.op_type != "Cast"]
    assert [node.op_type for node in body[-3:]] == ["Max", "Conv", "DepthToSpace"]
    assert list(initializers[body[-2].input[1]].dims) == [12, 256, 5, 5]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def check_dynamic_batch(path: Path, lr: np.ndarray) -> None:
    one = run(path, lr[:1])
    five = run(path, lr[:5])
    assert one.shape == (1, 3, 128, 128) and five.shape == (5, 3, 128, 128)
    np.testing.assert_allclose(five[:1], one, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["cli", "api"])
@pytest.mark.parametrize("file", [exporter.FP32_FILE, exporter.FP16_FILE])
def test_exported_graph(exported, lr_faces, variant, file):
    folder, _ = exported[variant]
    check_graph(folder / file)
    check_dynamic_batch(folder / file, lr_faces)


def check_int8_graph(path: Path, float_layers: tuple[str, ...], bands: int) -> None:
    """QDQ int8: every convolution but those of ``float_layers`` reads int8 weights, per output channel; the
    output convolution runs on ``bands`` row bands."""
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert QDQ_OPS <= ops and ops <= ALLOWED_OPS | QDQ_OPS, ops
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convs) == 18
    # The PReLUs after the last two upsampling convolutions run on 8-bit values (by the slopes and by 1), and
    # so do the shuffle between the two and the last one.
    on_bytes = [node for node in model.graph.node if node.op_type == "QLinearMul"]
    assert len(on_bytes) == 4 and all(node.domain == "com.microsoft" for node in on_bytes)
    for node in on_bytes:
        slopes = initializers[node.input[3]]
        assert slopes.data_type == onnx.TensorProto.UINT8
        assert list(slopes.dims) in ([1, 256, 1, 1], [])
    shuffles = [node for node in model.graph.node if node.op_type == "DepthToSpace"]
    assert [producers[node.input[0]].op_type for node in shuffles] == ["Max", "Max", "Reshape"]
    assert {producers[name].op_type for name in producers[shuffles[1].input[0]].input} == {"QLinearMul"}
    assert model.graph.node[-1].op_type == "DequantizeLinear" and model.graph.node[-1].input[0] == shuffles[-1].output[0]
    # The output convolution runs on horizontal bands stacked along the batch axis, padded only by columns.
    tail = producers[producers[exporter.TAIL_PHASES].input[0]] if exporter.TAIL_PHASES in producers else None
    assert tail is not None and tail.op_type == "DequantizeLinear" and producers[tail.input[0]].op_type == "Concat"
    assert len(producers[tail.input[0]].input) == bands
    pads = [a for a in producers[exporter.TAIL_PHASES].attribute if a.name == "pads"][0].ints
    assert pads[0] == pads[2] == 0 and pads[1] == pads[3] > 0
    for conv in convs:
        weight = conv.input[1]
        if weight in initializers:  # a float layer
            assert any(weight.startswith(layer + ".") for layer in float_layers), weight
            assert initializers[weight].data_type == onnx.TensorProto.FLOAT
            continue
        dequantize = producers[weight]
        assert dequantize.op_type == "DequantizeLinear"
        quantized, scale = initializers[dequantize.input[0]], initializers[dequantize.input[1]]
        assert not any(quantized.name.startswith(layer + ".") for layer in float_layers), quantized.name
        assert quantized.data_type == onnx.TensorProto.INT8
        assert list(scale.dims) == [quantized.dims[0]]  # one scale per output channel
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_int8_file_and_card(exported, lr_faces):
    folder, _ = exported["cli"]
    check_int8_graph(folder / exporter.INT8_FILE, exporter.INT8_FLOAT_LAYERS, bands=4)
    check_dynamic_batch(folder / exporter.INT8_FILE, lr_faces)
    card = json.loads((folder / exporter.CARD_FILE).read_text())
    section = card["export"]["int8"]
    assert section["calibration"]["faces"] == 39 and section["calibration_method"] == exporter.INT8_METHOD
    assert section["float_layers"] == list(exporter.INT8_FLOAT_LAYERS) and "int8" in card["precision"]
    assert section["output_conv_row_bands"] == 4
    assert section["parity"]["int8_mean_abs_error"] <= section["parity"]["int8_mean_bound"]
    assert "int8" not in json.loads((exported["api"][0] / exporter.CARD_FILE).read_text())["files"]
    from iafsr_sdk import FaceEnhancer

    enhancer = FaceEnhancer(folder / exporter.INT8_FILE, device="cpu")
    assert enhancer.precision == "int8"


@pytest.mark.parametrize("float_layers", [("head", "tail"), ()])
def test_int8_with_other_float_layers(exported, lr_faces, float_layers):
    """The variants export.int8_study measures: the graph rewrites apply where their layers are integer."""
    fp32 = onnx.load(exported["cli"][0] / exporter.FP32_FILE)
    int8 = exporter.to_int8(fp32, lr_faces[:8], float_layers=float_layers, batch=8)
    ops = [node.op_type for node in int8.graph.node]
    assert ops.count("Slice") == (0 if "tail" in float_layers else exporter.TAIL_BANDS)
    assert ops[-1] == ("DepthToSpace" if "tail" in float_layers else "DequantizeLinear")
    errors = exporter.int8_errors(fp32, int8, lr_faces)
    assert errors["mean_abs_error"] < 4 / 255


@pytest.mark.parametrize("bands", ["0", "3"])
def test_tail_bands_must_divide_the_rows(tmp_path, bands):
    with pytest.raises(SystemExit):
        exporter.main(["--random-init", "--out", str(tmp_path), "--int8", "--tail-bands", bands])
    assert not any(tmp_path.iterdir())


def test_calibration_faces_come_from_the_training_split(tmp_path):
    cache = synthetic_pool(tmp_path, count=60)
    faces, description = exporter.calibration_faces(cache, count=20, seed=3)
    assert faces.shape == (20, 16, 16, 3) and faces.dtype == np.uint8
    again, same = exporter.calibration_faces(cache, count=20, seed=3)
    np.testing.assert_array_equal(faces, again)
    assert description == same and description["pool_faces"] == 48  # 60 rows, 12 held out for validation
    assert exporter.calibration_faces(cache, count=20, seed=4)[1]["rows_sha256"] != description["rows_sha256"]


def test_float_layers_are_found_by_module_name(exported):
    model = onnx.load(exported["cli"][0] / exporter.FP32_FILE)
    assert len(exporter.float_conv_nodes(model, ["head", "tail", "upsample.2"])) == 3
    assert len(exporter.float_conv_nodes(model, ["blocks", "fuse"])) == 13
    with pytest.raises(ValueError, match="no convolution"):
        exporter.float_conv_nodes(model, ["neck"])


def test_fp16_file_computes_in_half(exported):
    model = onnx.load(exported["cli"][0] / exporter.FP16_FILE)
    kinds = {init.data_type for init in model.graph.initializer}
    assert kinds == {onnx.TensorProto.FLOAT16}


def test_slopes_of_each_layer_are_kept(exported):
    model = onnx.load(exported["cli"][0] / exporter.FP32_FILE)
    slopes = {node.input[1] for node in model.graph.node if node.op_type == "Mul"}
    assert len(slopes) == 10  # head, six residual blocks, three upsampling blocks


def prelu_graph(slopes: np.ndarray) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    shape = [None, len(slopes), 4, 4]
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "slopes"], ["y"], name="prelu")], "prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(slopes.reshape(-1, 1, 1).astype(np.float32), "slopes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", exporter.OPSET)], ir_version=9)


def run_graph(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_prelu_as_max_is_exact_and_keeps_other_slopes():
    x = np.random.default_rng(0).normal(0, 3, (3, 5, 4, 4)).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, 1e-30]
    for slopes, rewritten in ((np.array([0.0, 0.25, 0.5, 1.0, 0.01]), True),
                              (np.array([0.2, -0.1, 0.3, 0.3, 0.3]), False),
                              (np.array([0.2, 0.1, 1.5, 0.3, 0.3]), False)):
        model = prelu_graph(slopes)
        expected = run_graph(model, x)
        exporter._prelu_as_max(model)
        assert ({node.op_type for node in model.graph.node} == {"Mul", "Max"}) == rewritten
        np.testing.assert_array_equal(run_graph(model, x), expected)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_prelu_on_quantized_matches_the_float_prelu_within_a_step(shuffle, dtype):
    from onnx import helper, numpy_helper

    slopes = np.array([0.0, 0.1, 0.25, 0.7], np.float32)
    model = prelu_graph(slopes)
    exporter._prelu_as_max(model)
    offset = 0 if dtype == np.uint8 else -128
    scales = {"x": (0.02, 128 + offset), "y": (0.01, 40 + offset)}  # the output's own, finer grid
    graph = model.graph
    for name, (scale, zero_point) in scales.items():
        graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), name + "_scale"),
                                  numpy_helper.from_array(np.array(zero_point, dtype), name + "_zero_point")])
    # input → Q → DQ → Max(x, Mul(x, slope)) [→ DepthToSpace] → Q → DQ → output, as the quantizer writes it
    first, maximum = graph.node[0], graph.node[1]
    first.input[0] = maximum.input[0] = "x_dq"
    maximum.output[0] = "y_float"
    graph.node.insert(0, helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["x_q"], name="q_x"))
    graph.node.insert(1, helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero_point"], ["x_dq"],
                                          name="dq_x"))
    if shuffle:
        maximum.output[0] = "y_phases"
        graph.node.append(helper.make_node("DepthToSpace", ["y_phases"], ["y_float"], name="shuffle", blocksize=2,
                                           mode="CRD"))
        del graph.output[0].type.tensor_type.shape.dim[1:]
        graph.output[0].type.tensor_type.shape.dim.extend(
            [onnx.TensorShapeProto.Dimension(dim_value=v) for v in (1, 8, 8)])
    graph.node.extend([helper.make_node("QuantizeLinear", ["y_float", "y_scale", "y_zero_point"], ["y_q"], name="q_y"),
                       helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero_point"], ["y"], name="dq_y")])
    x = np.random.default_rng(1).uniform(-2.5, 2.5, (2, 4, 4, 4)).astype(np.float32)
    expected = run_graph(model, x)
    exporter._prelu_on_quantized(model)
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QLinearMul") == 2 and "Mul" not in ops and ops.count("DequantizeLinear") == 1
    assert ops.count("DepthToSpace") == shuffle and "Transpose" not in ops
    if shuffle:  # the shuffle moves the 8-bit output of the Max
        producers = {output: node for node in model.graph.node for output in node.output}
        depth_to_space = model.graph.node[ops.index("DepthToSpace")]
        assert producers[depth_to_space.input[0]].op_type == "Max"
    got = run_graph(model, x)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 0.01 + 1e-6  # one step of the output grid at most
    assert np.mean(got == expected) > 0.9
    reference = np.maximum(x, slopes.reshape(-1, 1, 1) * x)
    if shuffle:
        reference = torch.nn.functional.pixel_shuffle(torch.from_numpy(reference), 2).numpy()
    assert np.abs(got - np.clip(reference, -0.4, 2.15)).max() <= 0.02  # grid y: [-0.4, 2.15]


def tail_graph(rows: int = 8) -> onnx.ModelProto:
    """input → Q → DQ → the output convolution (5×5, padding 2) → Q → DQ, as the quantizer writes it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    initializers = [
        numpy_helper.from_array(np.array(0.03, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(131, np.uint8), "x_zero_point"),
        numpy_helper.from_array(rng.normal(0, 0.2, (3, 4, 5, 5)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 3).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0.02, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(100, np.uint8), "y_zero_point"),
    ]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["x_q"], name="q_x"),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero_point"], ["x_dq"], name="dq_x"),
             helper.make_node("Conv", ["x_dq", "w", "b"], [exporter.TAIL_PHASES], name="tail", kernel_shape=[5, 5],
                              pads=[2, 2, 2, 2]),
             helper.make_node("QuantizeLinear", [exporter.TAIL_PHASES, "y_scale", "y_zero_point"], ["y_q"], name="q_y"),
             helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero_point"], ["y"], name="dq_y")]
    graph = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, rows, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, rows, 6])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", exporter.OPSET)], ir_version=9)


@pytest.mark.parametrize("bands", [1, 2, 4])
def test_tail_in_row_bands_is_exact(bands):
    """The output convolution on bands of rows computes what it computed on the whole input, bit for bit,
    for a batch of one and of three, with the rows padded by the input's zero point."""
    model = tail_graph()
    x = np.random.default_rng(4).uniform(-4, 4, (3, 4, 8, 6)).astype(np.float32)  # some values clip at -3.93
    one, three = run_graph(model, x[:1]), run_graph(model, x)
    exporter._tail_in_row_bands(model, bands)
    onnx.checker.check_model(model, full_check=True)
    assert [node.op_type for node in model.graph.node].count("Slice") == bands
    assert np.array_equal(run_graph(model, x[:1]), one)
    assert np.array_equal(run_graph(model, x), three)


def test_tail_in_row_bands_refuses_uneven_bands():
    with pytest.raises(ValueError, match="do not split"):
        exporter._tail_in_row_bands(tail_graph(rows=8), 3)


def test_output_shuffle_on_quantized_is_exact():
    """input → Q → DQ → DepthToSpace becomes input → Q → DepthToSpace → DQ with the same outputs."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["x_q"], name="q"),
             helper.make_node("DequantizeLinear", ["x_q", "scale", "zero_point"], ["x_dq"], name="dq"),
             helper.make_node("DepthToSpace", ["x_dq"], [exporter.OUTPUT_NAME], name="shuffle", blocksize=2,
                              mode="CRD")]
    graph = helper.make_graph(
        nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 12, 4, 6])],
        [helper.make_tensor_value_info(exporter.OUTPUT_NAME, TensorProto.FLOAT, [None, 3, 8, 12])],
        [numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
         numpy_helper.from_array(np.array(0, np.uint8), "zero_point")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", exporter.OPSET)], ir_version=9)
    x = np.random.default_rng(4).uniform(-0.1, 1.1, (2, 12, 4, 6)).astype(np.float32)
    expected = run_graph(model, x)
    exporter._output_shuffle_on_quantized(model)
    onnx.checker.check_model(model, full_check=True)
    assert [node.op_type for node in model.graph.node] == ["QuantizeLinear", "DepthToSpace", "DequantizeLinear"]
    np.testing.assert_array_equal(run_graph(model, x), expected)
    with pytest.raises(ValueError, match="does not end"):
        exporter._output_shuffle_on_quantized(model)


# ----- the shipped files -----

@pytest.fixture(scope="module")
def shipped_card() -> dict:
    return json.loads((SHIPPED / exporter.CARD_FILE).read_text())


def test_shipped_card_matches_the_files(shipped_card):
    assert set(shipped_card["files"]) == {"fp32", "fp16", "int8"}
    for entry in shipped_card["files"].values():
        data = (SHIPPED / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]
    assert (SHIPPED / exporter.FP32_FILE).stat().st_size < 5_000_000


def test_shipped_int8_graph(lr_faces, shipped_card):
    section = shipped_card["export"]["int8"]
    check_int8_graph(SHIPPED / exporter.INT8_FILE, tuple(section["float_layers"]), section["output_conv_row_bands"])
    check_dynamic_batch(SHIPPED / exporter.INT8_FILE, lr_faces)
    properties = {p.key: p.value for p in onnx.load(SHIPPED / exporter.INT8_FILE).metadata_props}
    assert properties["precision"] == "int8"
    calibration = shipped_card["export"]["int8"]["calibration"]
    assert calibration["set"].startswith("UTKFace") and calibration["faces"] > 0 and calibration["rows_sha256"]


@pytest.mark.parametrize("file", [exporter.FP32_FILE, exporter.FP16_FILE])
def test_shipped_graphs(lr_faces, shipped_card, file):
    check_graph(SHIPPED / file)
    check_dynamic_batch(SHIPPED / file, lr_faces)
    properties = {p.key: p.value for p in onnx.load(SHIPPED / file).metadata_props}
    assert properties["precision"] == ("fp16" if "fp16" in file else "fp32")
    for key in ("name", "terms", "method", "alignment", "input", "output", "training", "export"):
        value = shipped_card[key]
        assert properties[key] == (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def test_shipped_model_matches_its_source_weights(lr_faces, shipped_card):
    """The shipped ONNX file computes what the committed weights it names (by sha256) compute in torch."""
    if shipped_card["placeholder"]:
        generator, _ = exporter.make_generator(None, shipped_card["training"]["seed"])
    else:
        sha = shipped_card["export"]["source_weights_sha256"]
        sources = [path for path in sorted((SHIPPED.parents[1] / "weights").glob("*/generator.pt"))
                   if exporter.sha256_of(path) == sha]
        assert sources, f"no weights/*/generator.pt has the card's source sha256 {sha}"
        generator, _ = exporter.make_generator(sources[0], 0)
    with torch.no_grad():
        reference = generator(torch.from_numpy(lr_faces)).numpy()
    assert np.abs(run(SHIPPED / exporter.FP32_FILE, lr_faces) - reference).max() <= 1e-4


class OffsetEnhancer:
    """Stands in for FaceEnhancer: the LR face upsampled by repetition, plus a fixed offset; counts calls."""

    def __init__(self, offset: int):
        self.offset, self.faces_seen = offset, 0

    def enhance(self, lr: np.ndarray) -> np.ndarray:
        self.faces_seen += len(lr)
        return np.clip(lr.repeat(8, 1).repeat(8, 2).astype(np.int16) + self.offset, 0, 255).astype(np.uint8)


def test_precision_differences_come_from_the_evaluation_pass():
    from export.evaluate import ProbeRecorder, pixel_differences

    rng = np.random.default_rng(0)
    probes = rng.integers(10, 240, (5, 16, 16, 3), dtype=np.uint8)
    others = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    keys = {face.tobytes() for face in probes}
    fp32 = ProbeRecorder(OffsetEnhancer(0), keys)
    recorders = {"fp32": fp32, **{name: ProbeRecorder(OffsetEnhancer(offset), keys, reference=fp32)
                                  for name, offset in (("fp16", 1), ("int8", -4))}}
    fp32(np.concatenate([probes[:3], others]))  # an evaluation pass met part of the probes
    fp32.cover(probes)
    recorders["int8"](np.concatenate([others, probes]))
    differences = pixel_differences(recorders, probes)
    assert fp32.enhancer.faces_seen == 6 + 2  # only the two probes it had not met
    assert recorders["int8"].enhancer.faces_seen == 8
    assert recorders["fp16"].enhancer.faces_seen == 5
    assert len(fp32.outputs) == 5  # faces outside the probes are not kept
    assert not recorders["int8"].outputs and len(recorders["int8"].differences) == 5  # no second copy of outputs
    assert differences == {"fp16": {"faces": 5, "mean_abs_levels": 1.0, "max_abs_levels": 1},
                           "int8": {"faces": 5, "mean_abs_levels": 4.0, "max_abs_levels": 4}}
