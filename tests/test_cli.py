"""The ``iafsr`` command: enhance files and folders, failure summary and exit codes, info."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iafsr_sdk.cli import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, main

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture()
def lr_folder(tmp_path) -> Path:
    """Three real 16×16 faces as PNG and one as JPEG."""
    faces = np.load(FIXTURES / "sdk_lfw_lr16.npy")[:4]
    folder = tmp_path / "lr"
    folder.mkdir()
    for index, face in enumerate(faces[:3]):
        Image.fromarray(face).save(folder / f"face{index}.png")
    Image.fromarray(faces[3]).save(folder / "face3.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_folder_to_folder(lr_folder, tmp_path, capsys):
    out = tmp_path / "sr"
    assert main(["enhance", str(lr_folder), str(out), "--device", "cpu", "--quiet"]) == EXIT_OK
    written = sorted(p.name for p in out.iterdir())
    assert written == ["face0.png", "face1.png", "face2.png", "face3.jpg"]
    assert all(read(out / name).shape == (128, 128, 3) for name in written)
    assert "enhanced 4 of 4" in capsys.readouterr().out


def test_output_matches_the_sdk(lr_folder, tmp_path):
    from iafsr_sdk.enhancer import FaceEnhancer

    out = tmp_path / "sr"
    main(["enhance", str(lr_folder), str(out), "--device", "cpu", "--quiet", "--batch-size", "2"])
    expected = FaceEnhancer(device="cpu").enhance(read(lr_folder / "face1.png"))
    np.testing.assert_array_equal(read(out / "face1.png"), expected)


def test_failures_are_listed_and_the_rest_processed(lr_folder, tmp_path, capsys):
    (lr_folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    shutil.copy(lr_folder / "face0.png", lr_folder / "cut.png")
    data = (lr_folder / "cut.png").read_bytes()
    (lr_folder / "cut.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(lr_folder / "wide.png")
    Image.fromarray(np.zeros((1100, 1100, 3), np.uint8)).save(lr_folder / "photo.jpg")
    out = tmp_path / "sr"
    status = main(["enhance", str(lr_folder), str(out), "--device", "cpu", "--quiet", "--batch-size", "3"])
    captured = capsys.readouterr()
    assert status == EXIT_FAILURES
    assert sorted(p.name for p in out.iterdir()) == ["face0.png", "face1.png", "face2.png", "face3.jpg"]
    assert "enhanced 4 of 8" in captured.out
    assert "4 failed" in captured.err
    for name, reasons in [("corrupt.png", ("not a readable", "cannot read")), ("cut.png", ("cannot read",)),
                          ("wide.png", ("square",)), ("photo.jpg", ("larger than",))]:
        line = next(line for line in captured.err.splitlines() if name in line)
        assert any(reason in line for reason in reasons), line


def test_single_file(lr_folder, tmp_path):
    out = tmp_path / "deep" / "face.png"
    assert main(["enhance", str(lr_folder / "face0.png"), str(out), "--device", "cpu", "-q"]) == EXIT_OK
    assert read(out).shape == (128, 128, 3)
    assert main(["enhance", str(lr_folder / "face0.png"), str(tmp_path), "--device", "cpu", "-q"]) == EXIT_OK
    assert (tmp_path / "face0.png").is_file()
    assert main(["enhance", str(lr_folder / "face0.png"), str(tmp_path / "new"), "--device", "cpu", "-q"]) == EXIT_OK
    assert (tmp_path / "new" / "face0.png").is_file()


@pytest.mark.parametrize(
    "arguments",
    [
        ["enhance", "{missing}", "{out}"],
        ["enhance", "{lr}", "{lr}/face0.png"],
        ["enhance", "{lr}/face0.png", "{out}/face.txt"],
        ["enhance", "{lr}", "{out}", "--batch-size", "0"],
        ["enhance", "{lr}", "{out}", "--device", "tpu"],
        ["enhance", "{lr}", "{out}", "--model", "{missing}"],
    ],
)
def test_usage_errors(lr_folder, tmp_path, arguments):
    names = {"lr": lr_folder, "out": tmp_path / "sr", "missing": tmp_path / "missing"}
    assert main([a.format(**names) for a in arguments]) == EXIT_USAGE


def test_empty_folder_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["enhance", str(tmp_path / "empty"), str(tmp_path / "sr")]) == EXIT_USAGE


def test_info_json(capsys):
    assert main(["info", "--device", "cpu", "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["providers_in_use"] == ["CPUExecutionProvider"]
    assert "CPUExecutionProvider" in info["available_providers"]
    assert info["model_card"]["files"]["fp32"]["sha256"]
    assert "extension" in info


def test_info_text(capsys):
    assert main(["info", "--device", "cpu"]) == EXIT_OK
    assert "providers_in_use" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("iafsr") is None, reason="the iafsr console script is not installed")
def test_console_script(lr_folder, tmp_path):
    done = subprocess.run(["iafsr", "enhance", str(lr_folder), str(tmp_path / "sr"), "--device", "cpu", "-q"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == EXIT_OK, done.stderr
    assert len(list((tmp_path / "sr").iterdir())) == 4


def test_int8_precision(lr_folder, tmp_path, capsys):
    from iafsr_sdk.enhancer import FaceEnhancer

    out = tmp_path / "sr"
    assert main(["enhance", str(lr_folder), str(out), "--device", "cpu", "-q", "--precision", "int8"]) == EXIT_OK
    expected = FaceEnhancer(device="cpu", precision="int8").enhance(read(lr_folder / "face1.png"))
    np.testing.assert_array_equal(read(out / "face1.png"), expected)
    capsys.readouterr()
    assert main(["info", "--device", "cpu", "--json", "--precision", "int8"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["precision"] == "int8" and info["shipped_precisions"] == ["fp32", "fp16", "int8"]
    assert info["model_card"]["files"]["int8"]["sha256"]
