"""Evaluation protocols for super-resolved faces (paper §III-A, Table I, Fig. 2 and 5).

- LFW LR-HR verification: the official View 2 ``pairs.txt`` (10 folds of 300 matched + 300 mismatched pairs).
  In each pair one face, chosen once with ``numpy.random.default_rng(LR_SIDE_SEED)``, is degraded 128→16
  (:func:`iafsr_sdk.faces.degrade`) and super-resolved; the other stays HR. Score: cosine similarity.
  Accuracy is 10-fold (threshold chosen on 9 folds to maximize accuracy, applied to the 10th; mean ± std over
  the folds, population std); VR@FAR is over all 6,000 pairs with the threshold set on the 3,000 negatives.
- CelebA rank-1 identification: per identity with at least 2 faces, the gallery is its most frontal detected
  face (:func:`yaw_proxy`), kept HR; the probes are all its other faces, degraded 128→16 and super-resolved.
  A probe is right when its top-1 gallery face (cosine) has its identity.
- Feature gaps (Fig. 2 / 5): mean cosine, angle and magnitude gap between F(HR) and F(X).

Recognizers take aligned 128×128 uint8 RGB faces and return raw 128-D features: ``sface`` (the training F)
and ``dlib`` (the held-out judge, which re-aligns every face with dlib's own landmarks). HR-side features are
cached per recognizer next to the aligned faces (``<cache>/<set>/feat_<recognizer>.npy``), so evaluating a
method only computes its super-resolved side.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from iafsr_sdk.faces import HR_SIZE, degrade, resize
from training.prepare import DEFAULT_DATA, DEFAULT_OUT

log = logging.getLogger(__name__)

# Seed of the choice of the degraded face in each LFW pair (the paper's year; any fixed value would do).
LR_SIDE_SEED = 2020
# Seed and size of the fixed sample of LFW faces for the resolution analysis (Fig. 2).
SAMPLE_SEED = 2020
SAMPLE_SIZE = 2000
FAR_TARGETS = (0.01, 0.001)
RECOGNIZER_NAMES = ("sface", "dlib")
BATCH_SIZE = 64

SRFunction = Callable[[np.ndarray], np.ndarray]
EmbedFunction = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------------------
# LFW pairs


@dataclass(frozen=True)
class LfwPair:
    fold: int
    same: bool
    first: str  # path relative to the LFW image folder, e.g. "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
    second: str


def lfw_path(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"


def read_lfw_pairs(path: str | Path) -> list[LfwPair]:
    """Parse an LFW View 2 ``pairs.txt``: a header ``folds pairs_per_class``, then per fold that many matched
    lines ``name i j`` followed by as many mismatched lines ``name1 i name2 j``."""
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty pairs file")
    header = lines[0]
    if len(header) != 2 or not all(field.isdigit() for field in header):
        raise ValueError(f"{path}: expected a header 'folds pairs_per_class' like '10 300', got {' '.join(header)!r}")
    folds, per_class = int(header[0]), int(header[1])
    if folds < 1 or per_class < 1:
        raise ValueError(f"{path}: header says {folds} folds of {per_class} pairs per class")
    body = lines[1:]
    expected = folds * 2 * per_class
    if len(body) != expected:
        raise ValueError(f"{path}: header '{folds} {per_class}' means {expected} pair lines, found {len(body)}")
    pairs = []
    for number, fields in enumerate(body):
        fold, position = divmod(number, 2 * per_class)
        same = position < per_class
        line_number = number + 2
        try:
            if same:
                if len(fields) != 3:
                    raise ValueError("a matched pair needs 3 fields 'name i j'")
                name, first, second = fields
                pairs.append(LfwPair(fold, True, lfw_path(name, int(first)), lfw_path(name, int(second))))
            else:
                if len(fields) != 4:
                    raise ValueError("a mismatched pair needs 4 fields 'name1 i name2 j'")
                name1, first, name2, second = fields
                pairs.append(LfwPair(fold, False, lfw_path(name1, int(first)), lfw_path(name2, int(second))))
        except ValueError as error:
            kind = "matched" if same else "mismatched"
            raise ValueError(f"{path}:{line_number}: fold {fold + 1}, {kind} block: {error}; got "
                             f"{' '.join(fields)!r}") from None
    return pairs


def pair_rows(pairs: Sequence[LfwPair], paths: Sequence[str]) -> np.ndarray:
    """(P, 2) rows of both faces of every pair in a cache whose row r holds ``paths[r]``."""
    row_of = {path: row for row, path in enumerate(paths)}
    missing = sorted({p for pair in pairs for p in (pair.first, pair.second) if p not in row_of})
    if missing:
        raise KeyError(f"{len(missing)} pair images are not in the cache, e.g. {missing[:3]}")
    return np.array([[row_of[pair.first], row_of[pair.second]] for pair in pairs], dtype=np.int64)


def choose_lr_side(pair_count: int, seed: int = LR_SIDE_SEED) -> np.ndarray:
    """Per pair, which face (0 = first, 1 = second) is degraded; fixed by ``seed``."""
    return np.random.default_rng(seed).integers(0, 2, size=pair_count)


# ----------------------------------------------------------------------------------------------------------
# Verification metrics


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold t that maximizes the accuracy of "same iff score > t" on these pairs.

    Candidates are the midpoints between consecutive distinct scores plus one below the lowest and one above
    the highest; on ties the lowest such threshold wins.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    # For candidate c (c-th gap, c distinct values below it): correct = negatives at or below + positives above.
    order = np.searchsorted(values, scores)
    negatives_at = np.bincount(order[~same], minlength=len(values))
    positives_at = np.bincount(order[same], minlength=len(values))
    negatives_below = np.concatenate([[0], np.cumsum(negatives_at)])
    positives_above = same.sum() - np.concatenate([[0], np.cumsum(positives_at)])
    correct = negatives_below + positives_above
    return float(candidates[int(np.argmax(correct))])


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """Accuracy with the threshold chosen on the other folds; mean and (population) std over folds."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = best_threshold(scores[~test], same[~test])
        accuracies.append(float(((scores[test] > threshold) == same[test]).mean()))
        thresholds.append(threshold)
    return {"accuracy": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
            "fold_accuracies": accuracies, "fold_thresholds": thresholds}


def verification_rate(scores: np.ndarray, same: np.ndarray, far: float) -> dict:
    """VR@FAR: the share of positives with score > t, where t lets at most floor(far × negatives) negatives
    through (t is the score of the next-highest negative). ``negatives_above`` says how many negatives fix t."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    negatives = np.sort(scores[~same])[::-1]
    if len(negatives) == 0 or same.sum() == 0:
        raise ValueError("verification rate needs both positive and negative pairs")
    allowed = int(math.floor(far * len(negatives) + 1e-9))
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
    return {"vr": float((scores[same] > threshold).mean()), "threshold": float(threshold),
            "negatives_above": allowed, "far_achieved": float((negatives > threshold).mean())}


def verification_metrics(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    metrics = kfold_accuracy(scores, same, folds)
    for far in FAR_TARGETS:
        metrics[f"vr@far={far:g}"] = verification_rate(scores, same, far)
    return metrics


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (N, D) feature arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def feature_gaps(reference: np.ndarray, other: np.ndarray) -> dict:
    """Mean cosine, mean angle (degrees) and mean magnitude gap |‖reference‖ − ‖other‖| between matching
    rows of raw features, plus both mean norms (paper Fig. 2 and 5)."""
    cosine = cosine_rows(reference, other)
    norm_reference = np.linalg.norm(np.asarray(reference, dtype=np.float64), axis=1)
    norm_other = np.linalg.norm(np.asarray(other, dtype=np.float64), axis=1)
    return {"faces": len(cosine), "mean_cosine": float(cosine.mean()),
            "mean_angle_deg": float(np.degrees(np.arccos(np.clip(cosine, -1, 1))).mean()),
            "mean_magnitude_gap": float(np.abs(norm_reference - norm_other).mean()),
            "mean_norm_reference": float(norm_reference.mean()), "mean_norm_other": float(norm_other.mean())}


# ----------------------------------------------------------------------------------------------------------
# Identification


def numpy_match(probes: np.ndarray, gallery: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery rows by cosine for every probe: (indices int64, scores float32), each (P, k), best first,
    ties to the lower gallery index. Probes go in chunks, so the full score matrix is never held."""
    probes = np.asarray(probes, dtype=np.float32)
    gallery = np.asarray(gallery, dtype=np.float32)
    if probes.ndim != 2 or gallery.ndim != 2 or probes.shape[1] != gallery.shape[1]:
        raise ValueError(f"expected (P, D) probes and (G, D) gallery, got {probes.shape} and {gallery.shape}")
    if not 1 <= k <= len(gallery):
        raise ValueError(f"k must be in 1..{len(gallery)} (gallery size), got {k}")
    gallery_unit = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    indices = np.empty((len(probes), k), dtype=np.int64)
    scores = np.empty((len(probes), k), dtype=np.float32)
    for start in range(0, len(probes), chunk):
        part = probes[start:start + chunk]
        part = part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
        similarity = part @ gallery_unit.T
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        indices[start:start + chunk] = top
        scores[start:start + chunk] = np.take_along_axis(similarity, top, axis=1)
    return indices, scores


def match(probes: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine matching: the compiled ``iafsr_sdk.ops.match`` where it is built, else :func:`numpy_match`
    (same order: best first, ties to the lower gallery index; zero-norm rows score 0)."""
    probes = np.ascontiguousarray(probes, dtype=np.float32)
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    try:
        from iafsr_sdk import ops

        indices, scores = ops.match(probes, gallery, k)
    except ImportError as error:  # no ops module, or its extension is not built (ExtensionNotBuiltError)
        log.debug("iafsr_sdk.ops.match unavailable (%s); using the numpy top-k", error)
        indices, scores = numpy_match(probes, gallery, k)
    return np.asarray(indices, dtype=np.int64), np.asarray(scores, dtype=np.float32)


def rank1_accuracy(probe_features: np.ndarray, probe_identities: np.ndarray,
                   gallery_features: np.ndarray, gallery_identities: np.ndarray) -> float:
    top, _ = match(probe_features, gallery_features, 1)
    return float((np.asarray(gallery_identities)[top[:, 0]] == np.asarray(probe_identities)).mean())


def yaw_proxy(landmarks: np.ndarray) -> np.ndarray:
    """How far the nose sits off the line through the eyes' midpoint and the mouth's midpoint, in units of the
    eye distance: 0 for a frontal face, growing with yaw, unaffected by roll and scale. (N, 5, 2) -> (N,)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    eye_mid = (landmarks[:, 0] + landmarks[:, 1]) / 2
    mouth_mid = (landmarks[:, 3] + landmarks[:, 4]) / 2
    axis = mouth_mid - eye_mid
    to_nose = landmarks[:, 2] - eye_mid
    off_axis = np.abs(axis[:, 0] * to_nose[:, 1] - axis[:, 1] * to_nose[:, 0]) / np.maximum(
        np.linalg.norm(axis, axis=1), 1e-12)
    return off_axis / np.maximum(np.linalg.norm(landmarks[:, 1] - landmarks[:, 0], axis=1), 1e-12)


@dataclass(frozen=True)
class GallerySplit:
    gallery_rows: np.ndarray
    gallery_identities: np.ndarray
    probe_rows: np.ndarray
    probe_identities: np.ndarray
    skipped_identities: int  # identities with one face, or with no detected face to put in the gallery


def frontal_gallery_split(identities: np.ndarray, landmarks: np.ndarray, detected: np.ndarray) -> GallerySplit:
    """Per identity with at least 2 faces: the gallery face is its detected face of smallest :func:`yaw_proxy`
    (ties: the lower row); every other face of it, detected or not, is a probe."""
    identities = np.asarray(identities)
    detected = np.asarray(detected, dtype=bool)
    yaw = yaw_proxy(landmarks)
    gallery, probes, skipped = [], [], 0
    for identity in np.unique(identities):
        rows = np.flatnonzero(identities == identity)
        candidates = rows[detected[rows]]
        if len(rows) < 2 or len(candidates) == 0:
            skipped += 1
            continue
        chosen = candidates[np.argmin(yaw[candidates])]
        gallery.append(chosen)
        probes.extend(row for row in rows if row != chosen)
    gallery_rows = np.array(gallery, dtype=np.int64)
    probe_rows = np.array(probes, dtype=np.int64)
    return GallerySplit(gallery_rows, identities[gallery_rows], probe_rows, identities[probe_rows], skipped)


# ----------------------------------------------------------------------------------------------------------
# Caches, recognizers, features


@dataclass(frozen=True)
class CacheIndex:
    paths: list[str]
    detected: np.ndarray  # bool (N,)
    landmarks: np.ndarray  # (N, 5, 2) in the original photo


def cache_dir(cache_root: Path, set_name: str) -> Path:
    folder = Path(cache_root) / set_name
    if not (folder / "DONE").exists():
        raise FileNotFoundError(f"{folder} holds no finished cache: run python -m training.prepare --sets {set_name}")
    return folder


def read_cache_index(folder: Path) -> CacheIndex:
    lines = (Path(folder) / "index.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    fields = [line.split("\t") for line in lines[1:]]
    if [int(f[0]) for f in fields] != list(range(len(fields))):
        raise ValueError(f"{folder}/index.tsv: rows are not 0..{len(fields) - 1} in order")
    first_landmark = header.index("x0")
    landmarks = np.array([[float(v) for v in f[first_landmark:first_landmark + 10]] for f in fields])
    return CacheIndex(paths=[f[1] for f in fields], detected=np.array([f[2] == "detected" for f in fields]),
                      landmarks=landmarks.reshape(-1, 5, 2))


def load_faces(folder: Path, rows: np.ndarray | None = None) -> np.ndarray:
    faces = np.load(Path(folder) / "faces.npy", mmap_mode="r")
    return np.array(faces if rows is None else faces[np.asarray(rows)])


def _source_sha256(module) -> str:
    return hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()


class _SFaceEmbedder:
    """SFace (the training F) on uint8 faces. ``version`` is the SHA-256 of its source when it was loaded."""

    def __init__(self):
        from training.recognizers import sface

        self.version = _source_sha256(sface)
        self.model = sface.load_sface()

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode():
            return self.model(batch).numpy().astype(np.float32)


class _DlibEmbedder:
    """The held-out judge on uint8 faces; ``judge.counts`` tells how often dlib found no face."""

    def __init__(self):
        from training.recognizers import dlib_resnet

        self.version = _source_sha256(dlib_resnet)
        self.judge = dlib_resnet.DlibJudge()

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        return np.asarray(self.judge.embed(np.ascontiguousarray(faces)), dtype=np.float32)


_EMBEDDERS = {"sface": _SFaceEmbedder, "dlib": _DlibEmbedder}


def load_recognizers(names: Sequence[str] = RECOGNIZER_NAMES) -> dict[str, EmbedFunction]:
    """Name -> function from (N, 128, 128, 3) uint8 RGB aligned faces to raw (N, 128) float32 features."""
    unknown = [name for name in names if name not in _EMBEDDERS]
    if unknown:
        raise ValueError(f"unknown recognizers {unknown}; known: {sorted(_EMBEDDERS)}")
    return {name: _EMBEDDERS[name]() for name in names}


def embed_all(embed: EmbedFunction, faces: np.ndarray, batch_size: int = BATCH_SIZE,
              desc: str = "") -> tuple[np.ndarray, float | None]:
    """Features of ``faces`` (an array or a memmap) in batches, and, for the dlib judge, the share of faces in
    which dlib found no face and used its fallback box (else None)."""
    judge = getattr(embed, "judge", None)
    if judge is not None:
        judge.reset_counts()
    parts = [embed(np.array(faces[start:start + batch_size]))
             for start in tqdm(range(0, len(faces), batch_size), desc=desc, unit="batch")]
    features = np.concatenate(parts) if parts else np.zeros((0, 128), np.float32)
    return features, (judge.fallback_rate if judge is not None else None)


def _fingerprint(folder: Path, embed: EmbedFunction) -> dict:
    # The recognizer's source as it was when loaded: any change to it invalidates the cached features.
    stat = (Path(folder) / "faces.npy").stat()
    return {"faces_bytes": stat.st_size, "faces_mtime_ns": stat.st_mtime_ns,
            "recognizer_source_sha256": getattr(embed, "version", None)}


def hr_features_cached(folder: Path, recognizer: str, embed: EmbedFunction) -> bool:
    """Whether ``feat_<recognizer>.npy`` of this cache is there and was made from these faces and recognizer."""
    path, meta_path = Path(folder) / f"feat_{recognizer}.npy", Path(folder) / f"feat_{recognizer}.json"
    if not (path.exists() and meta_path.exists()):
        return False
    meta = json.loads(meta_path.read_text())
    return all(meta.get(key) == value for key, value in _fingerprint(folder, embed).items())


def hr_features(folder: Path, recognizer: str, embed: EmbedFunction, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Features of every HR face of a cache, computed once and kept in ``feat_<recognizer>.npy``."""
    folder = Path(folder)
    path, meta_path = folder / f"feat_{recognizer}.npy", folder / f"feat_{recognizer}.json"
    if hr_features_cached(folder, recognizer, embed):
        return np.load(path)
    fingerprint = _fingerprint(folder, embed)
    faces = np.load(folder / "faces.npy", mmap_mode="r")
    log.info("%s: computing %s features of %d HR faces (cached afterwards in %s)", folder.name, recognizer,
             len(faces), path)
    features, fallback_rate = embed_all(embed, faces, batch_size, desc=f"{folder.name} HR {recognizer}")
    if fallback_rate is not None:
        log.info("%s HR faces: the dlib judge found no face in %.2f %%", folder.name, 100 * fallback_rate)
    temporary = path.with_suffix(".tmp.npy")
    np.save(temporary, features)
    temporary.replace(path)
    meta_path.write_text(json.dumps({**fingerprint, "judge_fallback_rate": fallback_rate}) + "\n")
    return features


def hr_judge_fallback_rate(folder: Path, recognizer: str) -> float | None:
    """The judge's fallback rate recorded when the HR features of a cache were computed."""
    meta_path = Path(folder) / f"feat_{recognizer}.json"
    return json.loads(meta_path.read_text()).get("judge_fallback_rate") if meta_path.exists() else None


def degrade_and_super_resolve(sr_fn: SRFunction, hr_faces: np.ndarray, batch_size: int = BATCH_SIZE,
                              desc: str = "SR") -> np.ndarray:
    """Degrade HR faces 128→16 and apply ``sr_fn``, batch by batch (so no float copy of the whole set is
    made); float outputs in [0, 1] are stored as 8-bit images, as a product would."""
    out = np.empty((len(hr_faces), HR_SIZE, HR_SIZE, 3), dtype=np.uint8)
    for start in tqdm(range(0, len(hr_faces), batch_size), desc=desc, unit="batch", leave=False):
        lr = degrade(hr_faces[start:start + batch_size])
        result = np.asarray(sr_fn(lr))
        if result.shape != (len(lr), HR_SIZE, HR_SIZE, 3):
            raise ValueError(f"sr_fn returned shape {result.shape} for {len(lr)} faces, expected "
                             f"({len(lr)}, {HR_SIZE}, {HR_SIZE}, 3)")
        if result.dtype != np.uint8:
            result = np.clip(np.rint(result.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        out[start:start + len(lr)] = result
    return out


def bicubic_sr(lr_faces: np.ndarray) -> np.ndarray:
    """The Bicubic row: antialiased bicubic (Pillow's rule) from LR to 128×128."""
    return resize(lr_faces, HR_SIZE)


def psnr_ssim(sr_faces: np.ndarray, hr_faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per face PSNR (dB) and SSIM (Wang et al. 2004: Gaussian window σ 1.5, K1 0.01, K2 0.03, on 8-bit values,
    averaged over the RGB channels) of uint8 faces against their HR originals, over the whole 128×128 crop."""
    import cv2

    sr, hr = sr_faces.astype(np.float64), hr_faces.astype(np.float64)
    mse = ((sr - hr) ** 2).reshape(len(sr), -1).mean(1)
    psnr = 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim = np.empty(len(sr))

    def blur(image):
        return cv2.GaussianBlur(image, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    for index, (x, y) in enumerate(zip(sr, hr)):
        mu_x, mu_y = blur(x), blur(y)
        var_x, var_y, cov = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2, blur(x * y) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        ssim[index] = ssim_map.mean()
    return psnr, ssim


def image_quality(sr_fn: SRFunction, cache_root: Path = DEFAULT_OUT, data_root: Path = DEFAULT_DATA,
                  batch_size: int = BATCH_SIZE) -> dict:
    """Mean PSNR and SSIM of the super-resolved LFW faces of the verification protocol (the degraded side of
    each pair) against their HR crops; :func:`evaluate` reports the same from the faces it super-resolves."""
    hr_faces = lfw_probe_faces(cache_root, data_root)
    return quality_of(degrade_and_super_resolve(sr_fn, hr_faces, batch_size, desc="LFW SR"), hr_faces)


def lfw_probe_faces(cache_root: Path = DEFAULT_OUT, data_root: Path = DEFAULT_DATA) -> np.ndarray:
    """The HR faces of the LFW protocol's degraded side (one face of each pair, each face once, in cache
    row order)."""
    folder = cache_dir(cache_root, "lfw")
    pairs = read_lfw_pairs(Path(data_root) / "lfw" / "pairs.txt")
    rows = pair_rows(pairs, read_cache_index(folder).paths)
    return load_faces(folder, np.unique(rows[np.arange(len(pairs)), choose_lr_side(len(pairs))]))


def quality_of(sr_faces: np.ndarray, hr_faces: np.ndarray) -> dict:
    psnr, ssim = psnr_ssim(sr_faces, hr_faces)
    return {"faces": len(sr_faces), "psnr": float(psnr.mean()), "ssim": float(ssim.mean())}


# ----------------------------------------------------------------------------------------------------------
# The runner


def lr_side_seed_spread(sr_features: np.ndarray, hr_features: np.ndarray, rows: np.ndarray, same: np.ndarray,
                        folds: np.ndarray, seeds: Sequence[int]) -> dict:
    """Verification metrics when the degraded side of each pair is drawn with other seeds: mean, std, min and
    max over ``seeds``. ``sr_features`` and ``hr_features`` are indexed by cache row and cover every face of
    ``rows`` (P, 2)."""
    per_seed = []
    for seed in seeds:
        side = choose_lr_side(len(rows), seed)
        probe, other = rows[np.arange(len(rows)), side], rows[np.arange(len(rows)), 1 - side]
        metrics = verification_metrics(cosine_rows(sr_features[probe], hr_features[other]), same, folds)
        per_seed.append([metrics["accuracy"]] + [metrics[f"vr@far={far:g}"]["vr"] for far in FAR_TARGETS])
    values = np.array(per_seed)
    keys = ["accuracy"] + [f"vr@far={far:g}" for far in FAR_TARGETS]
    return {"seeds": [int(seed) for seed in seeds], **{
        key: {"mean": float(column.mean()), "std": float(column.std()), "min": float(column.min()),
              "max": float(column.max())} for key, column in zip(keys, values.T)}}


def evaluate_lfw(sr_fn: SRFunction | None, recognizers: Mapping[str, EmbedFunction], cache_root: Path,
                 data_root: Path, batch_size: int = BATCH_SIZE, seed_spread: int = 0) -> dict:
    """LFW LR-HR verification. With ``seed_spread`` > 0 every face of the pairs is super-resolved (not only
    the degraded side of ``LR_SIDE_SEED``) and the metrics are also summarized over that many seeds."""
    folder = cache_dir(cache_root, "lfw")
    pairs = read_lfw_pairs(Path(data_root) / "lfw" / "pairs.txt")
    rows = pair_rows(pairs, read_cache_index(folder).paths)
    same = np.array([pair.same for pair in pairs])
    folds = np.array([pair.fold for pair in pairs])
    result = {"pairs": len(pairs), "negatives": int((~same).sum())}
    if sr_fn is None:
        probe_rows, other_rows = rows[:, 0], rows[:, 1]
        sr_faces = None
    else:
        side = choose_lr_side(len(pairs))
        probe_rows = rows[np.arange(len(pairs)), side]
        other_rows = rows[np.arange(len(pairs)), 1 - side]
        lr_rows = np.unique(probe_rows)
        sr_rows = np.unique(rows) if seed_spread else lr_rows
        hr_faces = load_faces(folder, sr_rows)
        sr_faces = degrade_and_super_resolve(sr_fn, hr_faces, batch_size, desc="LFW SR")
        result["lr_faces"] = len(lr_rows)
        lr_positions = np.searchsorted(sr_rows, lr_rows)
        result["image_quality"] = quality_of(sr_faces[lr_positions], hr_faces[lr_positions])
        del hr_faces
    for name, embed in recognizers.items():
        hr = hr_features(folder, name, embed, batch_size)
        if sr_faces is None:
            probe_features, fallback_rate = hr[probe_rows], hr_judge_fallback_rate(folder, name)
        else:
            # Indexed by cache row, like hr; rows that were not super-resolved stay zero and are never read.
            sr_features = np.zeros_like(hr)
            sr_features[sr_rows], fallback_rate = embed_all(embed, sr_faces, batch_size, desc=f"LFW {name}")
            probe_features = sr_features[probe_rows]
        scores = cosine_rows(probe_features, hr[other_rows])
        metrics = verification_metrics(scores, same, folds)
        if sr_faces is not None:
            # Fig. 5: F(SR) against F(HR) of the same faces, over the LR side of the pairs.
            metrics["gaps"] = feature_gaps(hr[lr_rows], sr_features[lr_rows])
            if seed_spread:
                seeds = range(LR_SIDE_SEED, LR_SIDE_SEED + seed_spread)
                metrics["seed_spread"] = lr_side_seed_spread(sr_features, hr, rows, same, folds, seeds)
        if fallback_rate is not None:
            metrics["judge_fallback_rate"] = fallback_rate
        result[name] = metrics
    return result


def evaluate_celeba(sr_fn: SRFunction | None, recognizers: Mapping[str, EmbedFunction], cache_root: Path,
                    data_root: Path, batch_size: int = BATCH_SIZE) -> dict:
    folder = cache_dir(cache_root, "celeba")
    index = read_cache_index(folder)
    identity_of = dict(line.split() for line in (Path(data_root) / "celeba" / "identity.txt").read_text().splitlines()
                       if line.strip())
    missing = [path for path in index.paths if path not in identity_of]
    if missing:
        raise KeyError(f"{len(missing)} CelebA faces have no identity in identity.txt, e.g. {missing[:3]}")
    identities = np.array([int(identity_of[path]) for path in index.paths])
    split = frontal_gallery_split(identities, index.landmarks, index.detected)
    result = {"identities": len(split.gallery_rows), "gallery": len(split.gallery_rows),
              "probes": len(split.probe_rows), "skipped_identities": split.skipped_identities}
    sr_faces = None
    if sr_fn is not None:
        sr_faces = degrade_and_super_resolve(sr_fn, load_faces(folder, split.probe_rows), batch_size,
                                             desc="CelebA SR")
    for name, embed in recognizers.items():
        hr = hr_features(folder, name, embed, batch_size)
        if sr_faces is None:
            probe_features, fallback_rate = hr[split.probe_rows], hr_judge_fallback_rate(folder, name)
        else:
            probe_features, fallback_rate = embed_all(embed, sr_faces, batch_size, desc=f"CelebA {name}")
        result[name] = {"rank1": rank1_accuracy(probe_features, split.probe_identities,
                                                hr[split.gallery_rows], split.gallery_identities)}
        if fallback_rate is not None:
            result[name]["judge_fallback_rate"] = fallback_rate
    return result


def evaluate(sr_fn: SRFunction | None, name: str, recognizers: Mapping[str, EmbedFunction] | None = None,
             protocols: Sequence[str] = ("lfw", "celeba"), cache_root: Path = DEFAULT_OUT,
             data_root: Path = DEFAULT_DATA, batch_size: int = BATCH_SIZE, seed_spread: int = 0) -> dict:
    """Evaluate one method: LFW LR-HR verification and CelebA rank-1 with every recognizer.

    ``sr_fn(lr)`` maps (N, 16, 16, 3) uint8 LR faces to (N, 128, 128, 3) uint8 (or float in [0, 1]);
    ``None`` is the HR-HR upper bound (nothing degraded). ``recognizers`` maps a name to an embed function
    (default: :func:`load_recognizers`; pass them in to reuse across methods). ``seed_spread`` > 0 also
    reports the LFW metrics over that many LR-side seeds (about 60 % more LFW faces to super-resolve).
    """
    started = time.perf_counter()
    recognizers = load_recognizers() if recognizers is None else recognizers
    result = {"name": name, "recognizers": list(recognizers)}
    for protocol in protocols:
        arguments = (sr_fn, recognizers, Path(cache_root), Path(data_root), batch_size)
        if protocol == "lfw":
            result["lfw"] = evaluate_lfw(*arguments, seed_spread=seed_spread)
            if "image_quality" in result["lfw"]:
                result["image_quality"] = result["lfw"].pop("image_quality")
        elif protocol == "celeba":
            result["celeba"] = evaluate_celeba(*arguments)
        else:
            raise ValueError(f"unknown protocol {protocol!r}; known: lfw, celeba")
    result["seconds"] = time.perf_counter() - started
    log.info("%s evaluated in %.0f s", name, result["seconds"])
    return result


def markdown_table(results: Sequence[dict]) -> str:
    """Table I layout: per recognizer, one row per method: LFW ACC ± std, VR@FAR=1 %, 0.1 %, CelebA rank-1."""
    lines = ["| Recognizer | Method | LFW ACC. | VR@FAR=1% | VR@FAR=0.1% | CelebA Rank-1 | PSNR (dB) | SSIM |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    recognizers = list(dict.fromkeys(name for result in results for name in result["recognizers"]))
    for recognizer in recognizers:
        for result in results:
            lfw = result.get("lfw", {}).get(recognizer)
            celeba = result.get("celeba", {}).get(recognizer)
            cells = ["–"] * 4
            if lfw:
                cells[:3] = [f"{100 * lfw['accuracy']:.2f} ± {100 * lfw['accuracy_std']:.2f}",
                             f"{100 * lfw['vr@far=0.01']['vr']:.2f}", f"{100 * lfw['vr@far=0.001']['vr']:.2f}"]
            if celeba:
                cells[3] = f"{100 * celeba['rank1']:.2f}"
            quality = result.get("image_quality")
            cells += [f"{quality['psnr']:.2f}", f"{quality['ssim']:.4f}"] if quality else ["–", "–"]
            lines.append(f"| {recognizer} | {result['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Fig. 2: feature gaps against resolution


def fixed_sample(count: int, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Sorted rows of a fixed random sample of ``size`` out of ``count`` faces."""
    return np.sort(np.random.default_rng(seed).choice(count, size=min(size, count), replace=False))


def resolution_gaps(faces: np.ndarray, hr_feature_sets: Mapping[str, np.ndarray],
                    recognizers: Mapping[str, EmbedFunction], sizes: Sequence[int],
                    batch_size: int = BATCH_SIZE) -> dict:
    """Per recognizer and size s: :func:`feature_gaps` between F(HR) and F(bicubic(degrade(HR, s)) to 128)."""
    gaps: dict[str, dict[int, dict]] = {name: {} for name in recognizers}
    for size in sizes:
        upscaled = resize(degrade(faces, size), HR_SIZE)
        for name, embed in recognizers.items():
            features, fallback_rate = embed_all(embed, upscaled, batch_size, desc=f"{size}px {name}")
            gaps[name][size] = feature_gaps(hr_feature_sets[name], features)
            if fallback_rate is not None:
                gaps[name][size]["judge_fallback_rate"] = fallback_rate
            log.info("%d px, %s: %s", size, name, gaps[name][size])
    return gaps

