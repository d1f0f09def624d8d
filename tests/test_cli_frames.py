"""``iafsr frames``: camera frames to enhanced crops, JSON and previews; bad frames listed; exit codes."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iafsr_sdk.cli import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "frames"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("cv2") is None,
                                reason='OpenCV is not installed (pip install ".[detect]")')


@pytest.fixture()
def frames(tmp_path) -> Path:
    folder = tmp_path / "frames"
    shutil.copytree(EXAMPLES, folder)
    return folder


def run(*arguments: str) -> int:
    return main(["frames", *arguments, "--device", "cpu", "--quiet"])


def test_example_frames(frames, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(str(frames), str(out)) == EXIT_OK
    assert "2 of 2 frames: 9 faces" in capsys.readouterr().out
    crowd = json.loads((out / "crowd.json").read_text())
    assert (crowd["width"], crowd["height"]) == (288, 144) and len(crowd["faces"]) == 8
    for face in crowd["faces"]:
        assert len(face["box"]) == 4 and np.shape(face["landmarks"]) == (5, 2) and 0 < face["score"] <= 1
        with Image.open(out / face["face"]) as image:
            assert image.size == (128, 128)
        assert face["enhanced"] == (face["face_size"] < 20) == (face["lr"] is not None)
        if face["lr"]:
            with Image.open(out / face["lr"]) as image:
                assert image.size == (16, 16)
    portrait = json.loads((out / "portrait.json").read_text())
    assert len(portrait["faces"]) == 1 and not portrait["faces"][0]["enhanced"]
    with Image.open(out / "crowd_preview.jpg") as preview:
        assert max(preview.size) >= 512


def test_bad_frames_are_listed_and_the_rest_processed(frames, tmp_path, capsys):
    crowd = np.asarray(Image.open(frames / "crowd.png"))
    Image.fromarray(crowd.mean(axis=2).astype(np.uint8)).save(frames / "gray.png")
    Image.fromarray(np.dstack([crowd, np.full(crowd.shape[:2], 255, np.uint8)])).save(frames / "rgba.png")
    Image.fromarray(np.full((120, 200, 3), 90, np.uint8)).save(frames / "empty.png")
    (frames / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = (frames / "portrait.jpg").read_bytes()
    (frames / "cut.jpg").write_bytes(data[: len(data) // 2])
    Image.new("1", (12000, 12000)).save(frames / "huge.png")  # 144 megapixels, never decoded
    out = tmp_path / "out"
    status = run(str(frames), str(out))
    captured = capsys.readouterr()
    assert status == EXIT_FAILURES
    assert "5 of 8 frames" in captured.out and "3 failed" in captured.err
    for name, reason in [("corrupt.png", "not a readable"), ("cut.jpg", "cannot read"), ("huge.png", "megapixels")]:
        assert reason in next(line for line in captured.err.splitlines() if name in line)
    assert len(json.loads((out / "gray.json").read_text())["faces"]) == 8
    assert len(json.loads((out / "rgba.json").read_text())["faces"]) == 8
    assert json.loads((out / "empty.json").read_text())["faces"] == []
    assert (out / "empty_preview.jpg").is_file()
    assert not any(path.name.startswith(("corrupt", "cut", "huge")) for path in out.iterdir())


def test_single_file_and_colliding_names(frames, tmp_path):
    out = tmp_path / "out"
    assert run(str(frames / "portrait.jpg"), str(out)) == EXIT_OK
    assert sorted(path.name for path in out.iterdir()) == ["portrait.json", "portrait_face00.png",
                                                          "portrait_preview.jpg"]
    Image.open(frames / "portrait.jpg").save(frames / "portrait.png")
    assert run(str(frames), str(tmp_path / "both")) == EXIT_OK
    assert (tmp_path / "both" / "portrait_jpg.json").is_file() and (tmp_path / "both" / "portrait_png.json").is_file()


def test_native_size_inf_enhances_every_face(frames, tmp_path):
    assert run(str(frames / "crowd.png"), str(tmp_path / "out"), "--native-size", "inf") == EXIT_OK
    faces = json.loads((tmp_path / "out" / "crowd.json").read_text())["faces"]
    assert len(faces) == 8 and all(face["enhanced"] for face in faces)


@pytest.mark.parametrize("arguments", [
    ["{missing}", "{out}"],
    ["{frames}", "{frames}/crowd.png"],
    ["{empty}", "{out}"],
    ["{frames}", "{out}", "--min-face", "0"],
    ["{frames}", "{out}", "--model", "{missing}"],
])
def test_usage_errors(frames, tmp_path, arguments):
    (tmp_path / "empty").mkdir()
    names = {"frames": frames, "out": tmp_path / "out", "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    assert run(*[argument.format(**names) for argument in arguments]) == EXIT_USAGE


def test_without_opencv_is_a_usage_error(frames, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "cv2", None)
    assert run(str(frames), str(tmp_path / "out")) == EXIT_USAGE
    assert "iafsr[detect]" in caplog.text


@pytest.mark.skipif(shutil.which("iafsr") is None, reason="the iafsr console script is not installed")
def test_console_script(tmp_path):
    done = subprocess.run(["iafsr", "frames", str(EXAMPLES), str(tmp_path / "out"), "--device", "cpu", "-q"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == EXIT_OK, done.stderr
    assert (tmp_path / "out" / "crowd_preview.jpg").is_file()
