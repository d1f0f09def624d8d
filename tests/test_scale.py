"""The archive path on Ray Data (iafsr_sdk.scale) and the CLI's refusal to write into its input.

The tests marked ``ray`` start one local Ray instance with 2 CPUs for the module (select them with
``pytest -m ray``); the others need no Ray.
"""
from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iafsr_sdk.cli import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, main, read_face, write_face
from iafsr_sdk.scale import FAILURES_FILE, TEMP_FOLDER, check_destination, encode, enhance_archive

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "fixtures" / "sdk_lfw_lr16.npy"
EXAMPLES = ROOT / "examples" / "lr"
ARCHIVE_SIZE = 240  # good faces in the archive, in three camera folders; 8 of them are JPEG
ACTOR_TITLE = b"ray::MapWorker(MapBatches(_EnhanceBatches))"


def on_ray(test):
    """Mark a test ``ray`` and run it on the module's local Ray instance."""
    test = pytest.mark.ray(test)
    test = pytest.mark.usefixtures("ray_cluster")(test)
    # Ray Data's DataContext warns about its own deprecated fields whenever one is created.
    return pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")(test)


def unique_faces() -> list[np.ndarray]:
    """72 distinct real 16×16 faces: the LFW fixture and the examples."""
    examples = [read_face(path) for path in sorted(EXAMPLES.glob("*.png"))]
    return list(np.load(FACES)) + examples


def read_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image)


# ----- no Ray needed -----

def test_check_destination(tmp_path):
    (tmp_path / "lr").mkdir()
    face = tmp_path / "lr" / "face.png"
    face.write_bytes(b"x")
    for destination in (tmp_path / "lr", tmp_path / "lr" / "sr", tmp_path / "lr" / "." / "sr" / "deep"):
        with pytest.raises(ValueError, match="IN"):
            check_destination(tmp_path / "lr", destination)
    with pytest.raises(ValueError, match="OUT is IN"):
        check_destination(face, tmp_path / "lr" / ".." / "lr" / "face.png")
    (tmp_path / "link").symlink_to(tmp_path / "lr")
    with pytest.raises(ValueError, match="inside IN"):
        check_destination(tmp_path / "lr", tmp_path / "link" / "sr")
    with pytest.raises(ValueError, match="inside OUT"):
        check_destination(tmp_path / "lr", tmp_path, tree=True)
    check_destination(tmp_path / "lr", tmp_path)               # not a tree: nothing of IN is overwritten
    check_destination(tmp_path / "lr", tmp_path / "sr", tree=True)
    check_destination(face, tmp_path / "lr" / "face_sr.png")


def test_plain_cli_never_overwrites_its_input(tmp_path):
    folder = tmp_path / "lr"
    folder.mkdir()
    Image.fromarray(unique_faces()[0]).save(folder / "face.png")
    original = (folder / "face.png").read_bytes()
    face = str(folder / "face.png")
    for arguments in ([face, face], [face, str(folder)], [str(folder), str(folder)],
                      [str(folder), str(folder / "sr")], [str(folder), str(folder / "a" / "b")]):
        assert main(["enhance", *arguments, "--device", "cpu", "-q"]) == EXIT_USAGE, arguments
    assert sorted(p.name for p in folder.iterdir()) == ["face.png"]
    assert (folder / "face.png").read_bytes() == original
    assert main(["enhance", face, str(folder / "face_sr.png"), "--device", "cpu", "-q"]) == EXIT_OK


def test_archive_refuses_out_in_or_around_in(tmp_path):
    folder = tmp_path / "lr"
    folder.mkdir()
    for destination in (folder, folder / "sr", folder / "sr.parquet", tmp_path):
        with pytest.raises(ValueError, match="IN"):
            enhance_archive(folder, destination)
        assert main(["enhance", str(folder), str(destination), "--ray", "-q"]) == EXIT_USAGE
    assert list(folder.iterdir()) == []


def test_encode_matches_the_cli_files(tmp_path):
    face = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    for name in ("a.png", "a.jpg"):
        write_face(tmp_path / name, face)
        assert encode(face, Path(name).suffix) == (tmp_path / name).read_bytes()


def test_workers_without_ray_is_a_usage_error(tmp_path):
    assert main(["enhance", str(EXAMPLES), str(tmp_path / "sr"), "--workers", "2"]) == EXIT_USAGE


# ----- on a local Ray instance -----

@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs; afterwards the environment and SIGTERM handler Ray set are undone."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    environment, sigterm = dict(os.environ), signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    os.environ.clear()
    os.environ.update(environment)
    signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A folder tree of 240 good faces (copies of 72 distinct ones, 8 of them as JPEG) and two bad files;
    the distinct inputs in ``unique/`` and their single-process outputs (``iafsr enhance``) in ``unique_sr/``.
    Returns (root, {archive name: unique name})."""
    root = tmp_path_factory.mktemp("archive")
    faces = unique_faces()
    (root / "unique").mkdir()
    for index, face in enumerate(faces):
        Image.fromarray(face).save(root / "unique" / f"u{index:02d}.png")
    for index in range(8):
        Image.fromarray(faces[index]).save(root / "unique" / f"u{index:02d}.jpg", quality=95)
    sources = {}
    for index in range(ARCHIVE_SIZE):
        suffix = ".jpg" if index % 30 == 0 else ".png"
        unique = f"u{index % 8 if suffix == '.jpg' else index % len(faces):02d}{suffix}"
        name = f"cam{index % 3}/face{index:03d}{suffix}"
        (root / "lr" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "lr" / name).write_bytes((root / "unique" / unique).read_bytes())
        sources[name] = unique
    (root / "lr" / "cam0" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(root / "lr" / "cam1" / "wide.png")
    assert main(["enhance", str(root / "unique"), str(root / "unique_sr"), "--device", "cpu", "-q"]) == EXIT_OK
    return root, sources


def expected_failures(root: Path) -> list[str]:
    return [str(root / "lr" / "cam0" / "corrupt.png"), str(root / "lr" / "cam1" / "wide.png")]


def read_parts(folder: Path) -> dict[str, list[tuple[bytes, str]]]:
    import pyarrow.parquet as pq

    rows: dict[str, list[tuple[bytes, str]]] = {}
    for part in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(part).to_pydict()
        assert set(table) == {"id", "image", "source"}
        for face_id, image, source in zip(table["id"], table["image"], table["source"]):
            rows.setdefault(face_id, []).append((image, source))
    return rows


@on_ray
def test_folder_sink_equals_single_process_and_resumes(archive, tmp_path):
    root, sources = archive
    out = tmp_path / "sr"
    summary = enhance_archive(root / "lr", out, device="cpu", workers=2, batch_size=16, progress=False)
    assert (summary.total, summary.written, summary.skipped) == (ARCHIVE_SIZE + 2, ARCHIVE_SIZE, 0)
    assert [path for path, _ in summary.failures] == expected_failures(root)
    assert "square" in summary.failures[1][1]
    lines = (out / FAILURES_FILE).read_text().splitlines()
    assert lines[0] == "path,reason" and len(lines) == 3
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([*sources, FAILURES_FILE])
    for name, unique in sources.items():
        assert (out / name).read_bytes() == (root / "unique_sr" / unique).read_bytes(), name
    assert not (out / TEMP_FOLDER).exists()

    stamps = {name: (out / name).stat().st_mtime_ns for name in sources}
    again = enhance_archive(root / "lr", out, device="cpu", workers=2, batch_size=16, progress=False)
    assert (again.written, again.skipped, len(again.failures)) == (0, ARCHIVE_SIZE, 2)
    assert stamps == {name: (out / name).stat().st_mtime_ns for name in sources}

    lost = sorted(sources)[:5]  # as if the first run had been killed before these
    for name in lost:
        (out / name).unlink()
    resumed = enhance_archive(root / "lr", out, device="cpu", workers=2, batch_size=16, progress=False)
    assert (resumed.written, resumed.skipped) == (5, ARCHIVE_SIZE - 5)
    for name in lost:
        assert (out / name).read_bytes() == (root / "unique_sr" / sources[name]).read_bytes()


@on_ray
def test_parquet_sink_and_parquet_source(archive, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, sources = archive
    out = tmp_path / "sr.parquet"
    summary = enhance_archive(root / "lr", out, device="cpu", workers=2, batch_size=32, progress=False)
    assert (summary.written, len(summary.failures)) == (ARCHIVE_SIZE, 2)
    rows = read_parts(out)
    assert sorted(rows) == sorted(sources) and all(len(copies) == 1 for copies in rows.values())
    for name, [(image, source)] in rows.items():
        assert source == str(root / "lr" / name)
        if name.endswith(".png"):  # the single-process output of a PNG input is a PNG file
            assert image == (root / "unique_sr" / sources[name]).read_bytes(), name
        else:
            assert read_png(image).shape == (128, 128, 3)
    parts = sorted(p.name for p in out.iterdir())
    again = enhance_archive(root / "lr", out, device="cpu", workers=2, batch_size=32, progress=False)
    assert (again.written, again.skipped) == (0, ARCHIVE_SIZE)
    assert sorted(p.name for p in out.iterdir()) == parts

    # Parquet in: ids and encoded faces, two files of several row groups, a row without bytes.
    png_names = sorted(name for name in sources if name.endswith(".png"))[:60]
    ids = [f"id{index:02d}" for index in range(len(png_names))] + ["empty"]
    blobs = [(root / "lr" / name).read_bytes() for name in png_names] + [None]
    table = pa.table({"id": ids, "image": pa.array(blobs, pa.binary()), "other": list(range(len(ids)))})
    (root / "in.parquet").mkdir(exist_ok=True)
    pq.write_table(table.slice(0, 30), root / "in.parquet" / "a.parquet", row_group_size=7)
    pq.write_table(table.slice(30), root / "in.parquet" / "b.parquet", row_group_size=7)
    for sink in ("faces", "faces.parquet"):
        result = enhance_archive(root / "in.parquet", tmp_path / sink, device="cpu", workers=2, batch_size=8,
                                 progress=False)
        assert (result.total, result.written) == (len(ids), len(png_names))
        assert [path for path, _ in result.failures] == [f"{root / 'in.parquet' / 'b.parquet'}#empty"]
    by_id = {face_id: copies[0][0] for face_id, copies in read_parts(tmp_path / "faces.parquet").items()}
    assert sorted(by_id) == ids[:-1]
    for face_id, name in zip(ids, png_names):
        expected = (root / "unique_sr" / sources[name]).read_bytes()
        assert by_id[face_id] == expected and (tmp_path / "faces" / f"{face_id}.png").read_bytes() == expected


@on_ray
def test_cli_ray(tmp_path, capsys):
    out = tmp_path / "sr"
    arguments = ["enhance", str(EXAMPLES), str(out), "--ray", "--workers", "2", "--device", "cpu", "-q"]
    assert main(arguments) == EXIT_OK
    assert "enhanced 8 of 8 faces" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in EXAMPLES.glob("*.png"))
    (tmp_path / "lr").mkdir()
    (tmp_path / "lr" / "bad.jpg").write_bytes(b"not a jpeg")
    status = main(["enhance", str(tmp_path / "lr"), str(tmp_path / "sr2"), "--ray", "--device", "cpu", "-q"])
    assert status == EXIT_FAILURES
    assert "1 failed" in capsys.readouterr().err
    assert (tmp_path / "sr2" / FAILURES_FILE).is_file()
    for options in (["--device", "cuda"], ["--device", "cuda:1"], ["--workers", "3"], ["--model", "none.onnx"]):
        assert main(["enhance", str(EXAMPLES), str(tmp_path / "sr3"), "--ray", "-q", *options]) == EXIT_USAGE


def busy_actor_pids() -> list[int]:
    """Processes of the enhancing actors that are running a batch now (Ray names them by what they run)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(ACTOR_TITLE + b".submit"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the Ray actors through /proc")
@on_ray
def test_a_killed_worker_costs_a_retry_not_an_output(archive, tmp_path):
    root, sources = archive
    out = tmp_path / "sr.parquet"
    outcome: dict = {}

    def job() -> None:
        try:
            outcome["summary"] = enhance_archive(root / "lr", out, device="cpu", workers=2, batch_size=8,
                                                 progress=False)
        except BaseException as error:  # handed to the test thread
            outcome["error"] = error

    worker = threading.Thread(target=job)
    worker.start()
    deadline = time.monotonic() + 120
    pids: list[int] = []
    while worker.is_alive() and time.monotonic() < deadline and not pids:
        time.sleep(0.05)
        pids = busy_actor_pids() if list(out.glob("part-*.parquet")) else []
    assert worker.is_alive() and pids, "the job ended before a worker could be killed mid-batch"
    os.kill(pids[0], signal.SIGKILL)
    worker.join(timeout=240)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert (summary.written, len(summary.failures)) == (ARCHIVE_SIZE, 2)
    rows = read_parts(out)
    assert sorted(rows) == sorted(sources)
    assert all(len(copies) == 1 for copies in rows.values()), "an output was written twice"
    for name, [(image, _)] in rows.items():
        assert read_png(image).shape == (128, 128, 3)
        if name.endswith(".png"):
            assert image == (root / "unique_sr" / sources[name]).read_bytes()
    assert not (out / TEMP_FOLDER).exists()
