"""The working tree stays small enough to travel, and archived weights come back from the history."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREE_LIMIT = 24 * 2**20  # the tree plus a training bundle of up to 36 MiB must stay under 64 MiB

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                                reason="needs a git checkout of the project")


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_tracked_tree_fits_the_limit():
    sizes = {path: path.stat().st_size for path in tracked_files() if path.is_file()}
    total = sum(sizes.values())
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:5]
    assert total <= TREE_LIMIT, (f"tracked files hold {total / 2**20:.1f} MiB, over {TREE_LIMIT / 2**20:.0f} MiB; "
                                 f"largest: {[(str(p.relative_to(ROOT)), s) for p, s in largest]}")


def test_archived_weights_restore_with_their_sha256(tmp_path):
    from training.models import sha256_of
    from training.weights import read_archive, restore

    records = read_archive()
    assert records, "results/weights.json lists no archived weights"
    name = "srnet" if "srnet" in records else sorted(records)[0]
    restored = restore(name, out=tmp_path / "generator.pt")
    assert sha256_of(restored) == records[name]["sha256"]
    assert not (ROOT / records[name]["path"]).exists()  # archived: out of the working tree


def test_every_archived_row_keeps_its_cached_scores():
    import json

    from training.weights import read_archive

    for name, entry in read_archive().items():
        scores = ROOT / "results" / "eval" / f"{name}.json"
        if scores.exists():  # stage-1 starting points have no Table I row
            assert json.loads(scores.read_text())["fingerprint"] == entry["sha256"], name


def test_restore_refuses_a_wrong_sha256(tmp_path):
    import json

    from training.weights import read_archive, restore

    records = read_archive()
    name = sorted(records)[0]
    forged = tmp_path / "weights.json"
    forged.write_text(json.dumps({name: {**records[name], "sha256": "0" * 64}}))
    with pytest.raises(RuntimeError, match="does not have sha256"):
        restore(name, archive_path=forged, out=tmp_path / "generator.pt")
    assert not (tmp_path / "generator.pt").exists()


def test_picture_grid_reads_archived_weights_from_the_history():
    import numpy as np

    from training.table1 import GRID_METHODS, METHODS, archived_sr
    from training.weights import read_archive

    assert set(GRID_METHODS) <= {key for _, key in METHODS}
    key = next(key for key in GRID_METHODS if key in read_archive())
    faces = archived_sr(key)(np.full((2, 16, 16, 3), 128, np.uint8))
    assert faces.shape == (2, 128, 128, 3) and faces.dtype == np.uint8
