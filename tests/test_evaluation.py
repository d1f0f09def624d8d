import math
from pathlib import Path

import numpy as np
import pytest

from training import evaluation as ev
from training.prepare import DEFAULT_DATA

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL_PAIRS = DEFAULT_DATA / "lfw" / "pairs.txt"


# ---- pairs ------------------------------------------------------------------------------------------------

def test_read_pairs_fixture():
    pairs = ev.read_lfw_pairs(FIXTURES / "pairs_small.txt")
    assert [p.fold for p in pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [p.same for p in pairs] == [True, True, False, False] * 2
    assert pairs[0] == ev.LfwPair(0, True, "Alice_Able/Alice_Able_0001.jpg", "Alice_Able/Alice_Able_0002.jpg")
    assert pairs[6] == ev.LfwPair(1, False, "Alice_Able/Alice_Able_0002.jpg", "Carol_Cole/Carol_Cole_0002.jpg")


@pytest.mark.parametrize("text, message", [
    ("10\n", "header"),
    ("2 x\n", "header"),
    ("1 1\nA 1 2\n", "2 pair lines, found 1"),
    ("1 1\nA 1 2\nA 1 B 2\nC 1 D 1\n", "2 pair lines, found 3"),
    ("1 1\nA 1 B 2\nA 1 2\n", ":2: fold 1, matched block"),
    ("1 1\nA 1 2\nA 1 2\n", ":3: fold 1, mismatched block"),
    ("1 1\nA one 2\nA 1 B 2\n", ":2:"),
])
def test_read_pairs_rejects_bad_files(tmp_path, text, message):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        ev.read_lfw_pairs(path)


@pytest.mark.skipif(not REAL_PAIRS.exists(), reason=f"the LFW pairs file is not at {REAL_PAIRS}")
def test_read_real_pairs_counts():
    pairs = ev.read_lfw_pairs(REAL_PAIRS)
    folds = np.array([p.fold for p in pairs])
    same = np.array([p.same for p in pairs])
    assert len(pairs) == 6000
    assert np.bincount(folds).tolist() == [600] * 10
    assert [int(same[folds == f].sum()) for f in range(10)] == [300] * 10
    assert pairs[0].first == "Abel_Pacheco/Abel_Pacheco_0001.jpg"


def test_pair_rows_maps_and_reports_missing():
    pairs = ev.read_lfw_pairs(FIXTURES / "pairs_small.txt")[:2]
    paths = ["Bob_Baker/Bob_Baker_0003.jpg", "Alice_Able/Alice_Able_0002.jpg", "Bob_Baker/Bob_Baker_0001.jpg",
             "Alice_Able/Alice_Able_0001.jpg"]
    assert ev.pair_rows(pairs, paths).tolist() == [[3, 1], [2, 0]]
    with pytest.raises(KeyError, match="1 pair images"):
        ev.pair_rows(pairs, paths[1:])


def test_lr_side_is_fixed_and_balanced():
    side = ev.choose_lr_side(6000)
    assert np.array_equal(side, ev.choose_lr_side(6000))
    assert set(np.unique(side)) == {0, 1}
    assert 0.47 < side.mean() < 0.53
    assert not np.array_equal(side, ev.choose_lr_side(6000, seed=ev.LR_SIDE_SEED + 1))


# ---- verification metrics --------------------------------------------------------------------------------

def test_best_threshold_separable_and_ties():
    assert ev.best_threshold([0.1, 0.2, 0.3, 0.4], [False, False, True, True]) == pytest.approx(0.25)
    # Sorted: 0.1 neg, 0.3 pos, 0.4 neg, 0.6 pos. Correct counts per gap: 2, 3, 2, 3, 2 -> the lower 3 wins.
    assert ev.best_threshold([0.1, 0.4, 0.3, 0.6], [False, False, True, True]) == pytest.approx(0.2)


def test_kfold_accuracy_by_hand():
    scores = [0.9, 0.1, 0.8, 0.2, 0.15, 0.7]
    same = [True, False, True, False, True, False]
    folds = [0, 0, 1, 1, 2, 2]
    # Thresholds from the other folds: 0.75 (fold 0 all right), 0.125 (fold 1 half), 0.5 (fold 2 all wrong).
    result = ev.kfold_accuracy(scores, same, folds)
    assert result["fold_thresholds"] == pytest.approx([0.75, 0.125, 0.5])
    assert result["fold_accuracies"] == pytest.approx([1.0, 0.5, 0.0])
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["accuracy_std"] == pytest.approx(math.sqrt(1 / 6))


def test_verification_rate_by_hand():
    negatives = np.arange(1, 11) * 0.05  # 0.05 .. 0.50
    positives = np.array([0.3, 0.46, 0.5, 0.9])
    scores = np.concatenate([negatives, positives])
    same = np.r_[np.zeros(10, bool), np.ones(4, bool)]
    at_10 = ev.verification_rate(scores, same, 0.1)  # one negative may pass: threshold = 2nd highest, 0.45
    assert at_10["threshold"] == pytest.approx(0.45)
    assert at_10["negatives_above"] == 1 and at_10["far_achieved"] == pytest.approx(0.1)
    assert at_10["vr"] == pytest.approx(0.75)
    at_1 = ev.verification_rate(scores, same, 0.01)  # none may pass: threshold 0.5, the tie 0.5 is rejected
    assert at_1["threshold"] == pytest.approx(0.5) and at_1["vr"] == pytest.approx(0.25)


def test_verification_rate_negative_counts():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=6000)
    same = np.r_[np.zeros(3000, bool), np.ones(3000, bool)]
    assert ev.verification_rate(scores, same, 0.001)["negatives_above"] == 3
    assert ev.verification_rate(scores, same, 0.01)["negatives_above"] == 30
    # 0.29 * 100 is 28.999999999999996 in floating point; the count must still be 29.
    assert ev.verification_rate(scores[2900:3100], same[2900:3100], 0.29)["negatives_above"] == 29


def test_feature_gaps_by_hand():
    gaps = ev.feature_gaps(np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[0.0, 5.0], [0.0, 2.0]]))
    assert gaps["mean_cosine"] == pytest.approx(0.4)
    assert gaps["mean_angle_deg"] == pytest.approx((math.degrees(math.acos(0.8)) + 90) / 2)
    assert gaps["mean_magnitude_gap"] == pytest.approx(0.5)
    assert gaps["mean_norm_reference"] == pytest.approx(3.0) and gaps["mean_norm_other"] == pytest.approx(3.5)


# ---- identification --------------------------------------------------------------------------------------

FRONTAL = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], dtype=float)


def _rotate(points, degrees, scale=1.0):
    angle = math.radians(degrees)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return scale * points @ rotation.T + [100, 50]


def test_yaw_proxy_on_synthetic_landmarks():
    turned = FRONTAL.copy()
    turned[2, 0] += 8  # nose 8 px off the axis, eyes 40 px apart
    faces = np.stack([FRONTAL, turned, _rotate(turned, 25, scale=2.5)])
    assert ev.yaw_proxy(faces) == pytest.approx([0.0, 0.2, 0.2])


def _with_yaw(offset):
    points = FRONTAL.copy()
    points[2, 0] += offset
    return points


def test_frontal_gallery_split():
    identities = np.array([7, 7, 7, 9, 9, 5])
    landmarks = np.stack([_with_yaw(8), _with_yaw(0), _with_yaw(4), _with_yaw(12), _with_yaw(-12), _with_yaw(0)])
    detected = np.array([True, False, True, True, True, True])
    split = ev.frontal_gallery_split(identities, landmarks, detected)
    # Identity 7: row 1 is the most frontal but undetected, so row 2; identity 9: a tie, the lower row;
    # identity 5 has a single face.
    assert split.gallery_rows.tolist() == [2, 3] and split.gallery_identities.tolist() == [7, 9]
    assert split.probe_rows.tolist() == [0, 1, 4] and split.probe_identities.tolist() == [7, 7, 9]
    assert split.skipped_identities == 1


def test_rank1_on_tiny_gallery():
    gallery = np.eye(3, dtype=np.float32)
    gallery_ids = np.array([10, 20, 30])
    probes = np.array([[0.9, 0.1, 0], [0.1, 0.2, 0.9], [0, 5, 0], [-1, 0, 0]], dtype=np.float32)
    probe_ids = np.array([10, 20, 20, 30])
    # Probe 2 is nearest identity 30; probe 4 ties between rows 1 and 2, the lower (identity 20) wins.
    assert ev.rank1_accuracy(probes, probe_ids, gallery, gallery_ids) == pytest.approx(0.5)


def _brute_force_top_k(probes, gallery, k):
    indices, scores = [], []
    for probe in probes:
        similarity = [float(np.dot(probe, g) / (np.linalg.norm(probe) * np.linalg.norm(g))) for g in gallery]
        order = sorted(range(len(gallery)), key=lambda g: (-similarity[g], g))[:k]
        indices.append(order)
        scores.append([similarity[g] for g in order])
    return np.array(indices), np.array(scores)


def test_numpy_top_k_matches_brute_force():
    rng = np.random.default_rng(1)
    probes = rng.normal(size=(37, 16)).astype(np.float32)
    gallery = rng.normal(size=(23, 16)).astype(np.float32)
    gallery[5] = gallery[2] * 4  # a power-of-two scale: an exact tie in cosine, even in float32
    probes[0] = gallery[2]
    indices, scores = ev.numpy_match(probes, gallery, 5, chunk=8)
    expected_indices, expected_scores = _brute_force_top_k(probes, gallery, 5)
    assert np.array_equal(indices, expected_indices)
    assert indices[0, :2].tolist() == [2, 5]
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    with pytest.raises(ValueError, match="k must be"):
        ev.numpy_match(probes, gallery, 24)


def test_compiled_match_agrees_with_numpy():
    ops = pytest.importorskip("iafsr_sdk.ops", reason="iafsr_sdk.ops is not available")
    rng = np.random.default_rng(2)
    probes = rng.normal(size=(300, 128)).astype(np.float32)
    gallery = rng.normal(size=(150, 128)).astype(np.float32)
    gallery[7] = gallery[3] * 4  # exact ties go to the lower index in both
    gallery[11] = 0.0  # a zero-norm row scores 0 in both
    try:
        indices, scores = ops.match(probes, gallery, 5)
    except ImportError as error:  # ExtensionNotBuiltError
        pytest.skip(f"the compiled extension is not built: {error}")
    expected_indices, expected_scores = ev.numpy_match(probes, gallery, 5)
    assert np.array_equal(np.asarray(indices), expected_indices)
    np.testing.assert_allclose(np.asarray(scores), expected_scores, atol=1e-5)


# ---- the runner on a tiny synthetic cache ----------------------------------------------------------------

COLOURS = {"Alice_Able": (255, 0, 0), "Bob_Baker": (0, 255, 0), "Carol_Cole": (0, 0, 255), "Dan_Dale": (0, 0, 0)}


def _write_cache(folder: Path, paths, colours, detected=None):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    faces = np.clip(np.array(colours, dtype=float)[:, None, None, :] + rng.normal(0, 3, (len(paths), 128, 128, 3)),
                    0, 255).astype(np.uint8)
    np.save(folder / "faces.npy", faces)
    detected = [True] * len(paths) if detected is None else detected
    header = "row\tpath\tstatus\tscore\tvalid_fraction\t" + "\t".join(f"{a}{i}" for i in range(5) for a in "xy")
    lines = [header] + [f"{row}\t{path}\t{'detected' if ok else 'fallback'}\t0.9\t1.0\t"
                        + "\t".join(f"{v:.2f}" for v in FRONTAL.ravel()) for row, (path, ok)
                        in enumerate(zip(paths, detected))]
    (folder / "index.tsv").write_text("\n".join(lines) + "\n")
    (folder / "DONE").write_text("ok\n")


def test_evaluate_end_to_end_on_synthetic_cache(tmp_path):
    cache, data = tmp_path / "cache", tmp_path / "data"
    counts = {"Alice_Able": 2, "Bob_Baker": 3, "Carol_Cole": 2, "Dan_Dale": 3}
    lfw_paths = sorted(ev.lfw_path(name, i) for name, count in counts.items() for i in range(1, count + 1))
    _write_cache(cache / "lfw", lfw_paths, [COLOURS[p.split("/")[0]] for p in lfw_paths])
    (data / "lfw").mkdir(parents=True)
    (data / "lfw" / "pairs.txt").write_text((FIXTURES / "pairs_small.txt").read_text())
    celeba_ids = [1, 1, 2, 2, 2, 3]
    celeba_paths = [f"{i:06d}.jpg" for i in range(6)]
    _write_cache(cache / "celeba", celeba_paths, [list(COLOURS.values())[i] for i in celeba_ids])
    (data / "celeba").mkdir(parents=True)
    (data / "celeba" / "identity.txt").write_text("".join(f"{p} {i}\n" for p, i in zip(celeba_paths, celeba_ids)))

    calls = []

    def mean_colour(faces):
        calls.append(len(faces))
        return faces.reshape(len(faces), -1, 3).mean(1).astype(np.float32) - 127.5

    recognizers = {"colour": mean_colour}
    for sr_fn, name in ((None, "HR-HR"), (ev.bicubic_sr, "Bicubic")):
        result = ev.evaluate(sr_fn, name, recognizers, cache_root=cache, data_root=data, batch_size=4)
        assert result["lfw"]["colour"]["accuracy"] == 1.0
        assert result["lfw"]["colour"]["vr@far=0.01"]["vr"] == 1.0
        assert result["celeba"]["colour"]["rank1"] == 1.0
        assert (result["celeba"]["gallery"], result["celeba"]["probes"]) == (2, 3)  # identity 3 has one face
    assert (cache / "lfw" / "feat_colour.npy").exists()
    pairs = ev.read_lfw_pairs(FIXTURES / "pairs_small.txt")
    side = ev.choose_lr_side(len(pairs))
    assert result["lfw"]["lr_faces"] == len({(p.first, p.second)[s] for p, s in zip(pairs, side)})
    assert result["lfw"]["colour"]["gaps"]["mean_cosine"] > 0.99
    # HR features were computed once per set; the Bicubic run embedded only its super-resolved faces.
    assert sum(calls) == 10 + 6 + result["lfw"]["lr_faces"] + 3
    spread = ev.evaluate(ev.bicubic_sr, "Bicubic", recognizers, protocols=("lfw",), cache_root=cache,
                         data_root=data, batch_size=4, seed_spread=3)["lfw"]["colour"]
    assert spread["seed_spread"]["seeds"] == [ev.LR_SIDE_SEED, ev.LR_SIDE_SEED + 1, ev.LR_SIDE_SEED + 2]
    assert spread["accuracy"] == result["lfw"]["colour"]["accuracy"]
    assert spread["seed_spread"]["accuracy"] == {"mean": 1.0, "std": 0.0, "min": 1.0, "max": 1.0}
    quality = ev.image_quality(ev.bicubic_sr, cache, data, batch_size=4)
    assert quality["faces"] == result["lfw"]["lr_faces"] and 10 < quality["psnr"] < 60 and 0 < quality["ssim"] < 1
    assert result["image_quality"] == quality  # the same faces, scored while evaluate super-resolves them
    table = ev.markdown_table([result])
    assert f"| colour | Bicubic | 100.00 ± 0.00 | 100.00 | 100.00 | 100.00 | {quality['psnr']:.2f} | {quality['ssim']:.4f} |" in table
    table = ev.markdown_table([{k: v for k, v in result.items() if k != "image_quality"}])
    assert "| colour | Bicubic | 100.00 ± 0.00 | 100.00 | 100.00 | 100.00 | – | – |" in table


def test_psnr_ssim_against_their_definitions():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    noisy = np.clip(hr.astype(int) + rng.choice([-4, 4], hr.shape), 0, 255).astype(np.uint8)
    psnr, ssim = ev.psnr_ssim(np.stack([hr[0], noisy[1]]), hr)
    assert ssim[0] == pytest.approx(1.0) and psnr[0] > 100  # identical
    mse = ((noisy[1].astype(float) - hr[1]) ** 2).mean()
    assert psnr[1] == pytest.approx(10 * np.log10(255 ** 2 / mse))
    # a flat image against a textured one: the structure term is zero, so SSIM is near zero
    flat = np.full_like(hr[:1], 128)
    assert abs(ev.psnr_ssim(flat, hr[:1])[1][0]) < 0.05
    assert 0.5 < ssim[1] < 1


def test_degrade_and_super_resolve_checks_shape_and_quantizes():
    hr = np.zeros((3, 128, 128, 3), np.uint8)
    seen = []

    def half_grey(lr):
        seen.append(lr.shape)
        return np.full((len(lr), 128, 128, 3), 0.5, np.float32)

    out = ev.degrade_and_super_resolve(half_grey, hr, batch_size=2)
    assert seen == [(2, 16, 16, 3), (1, 16, 16, 3)]
    assert out.dtype == np.uint8 and out.shape == (3, 128, 128, 3) and (out == 128).all()
    with pytest.raises(ValueError, match="expected"):
        ev.degrade_and_super_resolve(lambda x: np.zeros((len(x), 64, 64, 3), np.uint8), hr)


def test_hr_features_cache_follows_recognizer_version(tmp_path):
    _write_cache(tmp_path / "set", [f"{i}.jpg" for i in range(3)], [(10, 20, 30)] * 3)
    calls = []

    class Embed:
        def __init__(self, version):
            self.version = version

        def __call__(self, faces):
            calls.append(self.version)
            return faces.reshape(len(faces), -1)[:, :4].astype(np.float32)

    first = ev.hr_features(tmp_path / "set", "r", Embed("v1"))
    again = ev.hr_features(tmp_path / "set", "r", Embed("v1"))
    ev.hr_features(tmp_path / "set", "r", Embed("v2"))
    assert calls == ["v1", "v2"] and np.array_equal(first, again)


def test_lr_side_seed_spread_summarizes_each_seed():
    rng = np.random.default_rng(4)
    rows = np.array([[0, 1], [2, 3], [4, 5], [6, 7], [0, 2], [1, 3], [4, 6], [5, 7]])
    same = np.array([True] * 4 + [False] * 4)
    folds = np.array([0, 1] * 4)
    hr = rng.normal(size=(8, 5))
    sr = hr + rng.normal(scale=2.0, size=(8, 5))
    spread = ev.lr_side_seed_spread(sr, hr, rows, same, folds, seeds=[7, 8])
    accuracies = []
    for seed in (7, 8):
        side = ev.choose_lr_side(len(rows), seed)
        scores = ev.cosine_rows(sr[rows[np.arange(8), side]], hr[rows[np.arange(8), 1 - side]])
        accuracies.append(ev.kfold_accuracy(scores, same, folds)["accuracy"])
    assert spread["seeds"] == [7, 8]
    assert spread["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert spread["accuracy"]["min"] == pytest.approx(min(accuracies))
    assert spread["accuracy"]["max"] == pytest.approx(max(accuracies))
