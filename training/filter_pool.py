"""Keep the evaluation identities out of the training pool.

    python -m training.filter_pool [--cache data/cache] [--data ../shared/data] [--threshold T]

Every aligned HR face of LFW, CelebA and UTKFace is described by the held-out dlib recognizer
(:class:`training.recognizers.dlib_resnet.DlibJudge`: dlib's own alignment, then our port of its ResNet). The
descriptors are the evaluation's cached HR features, ``<cache>/<set>/feat_dlib.npy``
(:func:`training.evaluation.hr_features`), computed once and shared.

A UTKFace face is dropped when its descriptor lies within the threshold (euclidean distance, as dlib compares
descriptors) of ANY LFW or CelebA face. The threshold comes from the evaluation sets' own identity labels,
never from results of a super-resolution method. It is chosen for this one-against-many use: each evaluation
face is matched against all the others, as a UTKFace face is, and the threshold maximizes

    catch(t) - false_match(t)          (Youden's J)

where catch(t) is the fraction of evaluation faces whose nearest face of the same identity (among the other
photos of that person) is closer than t, and false_match(t) the fraction whose nearest face of a different
identity (among all LFW and CelebA faces) is closer than t. dlib's documented 0.6 is a one-to-one rule: against
~14,000 faces almost every face has some stranger within 0.6 (see the report), so it cannot serve here.

Writes ``<cache>/utkface/keep.txt`` (0-based rows of the UTKFace ``faces.npy`` that are kept, one a line) and
``results/pool_filter.md``.
"""
from __future__ import annotations

import argparse
import csv
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.prepare import DEFAULT_DATA, DEFAULT_OUT

log = logging.getLogger("training.filter_pool")

EVALUATION_SETS = ("lfw", "celeba")
POOL_SET = "utkface"
DLIB_SAME_PERSON = 0.6
# Candidate thresholds for the one-against-many rule.
THRESHOLD_GRID = np.round(np.arange(0.30, 0.6001, 0.001), 3)
# Same-person pairs drawn per identity (identities with many photos would otherwise dominate).
PAIRS_PER_IDENTITY = 20
IMPOSTOR_PAIRS = 200_000
SEED = 0
REPORT = Path(__file__).resolve().parents[1] / "results" / "pool_filter.md"
def nearest(queries: np.ndarray, references: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from every query to its nearest reference, and that reference's index."""
    references64 = references.astype(np.float64)
    reference_norms = (references64**2).sum(1)
    distances = np.empty(len(queries))
    indices = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk].astype(np.float64)
        squared = (block**2).sum(1)[:, None] + reference_norms[None, :] - 2.0 * block @ references64.T
        best = squared.argmin(1)
        indices[start:start + len(block)] = best
        distances[start:start + len(block)] = np.sqrt(np.maximum(squared[np.arange(len(block)), best], 0.0))
    return distances, indices


def nearest_same_and_other(descriptors: np.ndarray, labels: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For every face: distance to its nearest other face of the same identity (inf when it has none) and
    to its nearest face of a different identity."""
    everything = descriptors.astype(np.float64)
    norms = (everything**2).sum(1)
    same = np.full(len(everything), np.inf)
    other = np.full(len(everything), np.inf)
    for start in tqdm(range(0, len(everything), chunk), desc="evaluation faces: nearest neighbours", unit="chunk"):
        rows = np.arange(start, min(start + chunk, len(everything)))
        block = everything[rows]
        distances = np.sqrt(np.maximum((block**2).sum(1)[:, None] + norms[None, :] - 2.0 * block @ everything.T, 0.0))
        distances[np.arange(len(rows)), rows] = np.inf  # not the face itself
        is_same = labels[rows][:, None] == labels[None, :]
        same[rows] = np.where(is_same, distances, np.inf).min(1)
        other[rows] = np.where(is_same, np.inf, distances).min(1)
    return same, other


def one_against_many_rates(nearest_same: np.ndarray, nearest_other: np.ndarray,
                           thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """catch(t) over the faces that have another photo of their identity, and false_match(t) over all."""
    has_partner = np.isfinite(nearest_same)
    catch = (nearest_same[has_partner][None, :] < thresholds[:, None]).mean(1)
    false_match = (nearest_other[None, :] < thresholds[:, None]).mean(1)
    return catch, false_match


def choose_threshold(nearest_same: np.ndarray, nearest_other: np.ndarray,
                     thresholds: np.ndarray = THRESHOLD_GRID) -> float:
    """The threshold of largest catch - false_match (the larger one on ties: it drops more)."""
    catch, false_match = one_against_many_rates(nearest_same, nearest_other, thresholds)
    score = np.round(catch - false_match, 12)
    return float(thresholds[np.flatnonzero(score == score.max())[-1]])


def same_identity_distances(descriptors: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                            per_identity: int = PAIRS_PER_IDENTITY) -> np.ndarray:
    """Distances of up to ``per_identity`` random pairs of faces of each identity with at least two faces."""
    out = []
    order = np.argsort(labels, kind="stable")
    boundaries = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
    for begin, end in zip(boundaries[:-1], boundaries[1:]):
        members = order[begin:end]
        if len(members) < 2:
            continue
        pairs = np.array([(i, j) for i in range(len(members)) for j in range(i + 1, len(members))])
        if len(pairs) > per_identity:
            pairs = pairs[rng.choice(len(pairs), per_identity, replace=False)]
        first, second = descriptors[members[pairs[:, 0]]], descriptors[members[pairs[:, 1]]]
        out.append(np.linalg.norm(first - second, axis=1))
    return np.concatenate(out)


def impostor_distances(descriptors: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                       count: int = IMPOSTOR_PAIRS) -> np.ndarray:
    first = rng.integers(0, len(labels), count)
    second = rng.integers(0, len(labels), count)
    different = labels[first] != labels[second]
    return np.linalg.norm(descriptors[first[different]] - descriptors[second[different]], axis=1)


def read_labels(set_name: str, paths: list[str], data_root: Path) -> np.ndarray:
    """Identity of each face: LFW's folder name; CelebA's ``identity.txt``."""
    if set_name == "lfw":
        return np.array([f"lfw:{Path(path).parent.name}" for path in paths])
    identities = {}
    with open(data_root / "celeba" / "identity.txt") as handle:
        for line in handle:
            name, identity = line.split()
            identities[name] = identity
    return np.array([f"celeba:{identities[Path(path).name]}" for path in paths])


def read_paths(folder: Path) -> list[str]:
    with open(folder / "index.tsv", newline="") as handle:
        return [row["path"] for row in csv.DictReader(handle, delimiter="\t")]


def _fraction(count: int, total: int) -> str:
    return f"{count:,} of {total:,} ({100.0 * count / total:.1f} %)"


def write_report(path: Path, facts: dict) -> None:
    f = facts
    pool = f["pool_faces"]
    lines = [
        "# Training pool filter: evaluation identities kept out of UTKFace",
        "",
        f"Command: `{f['command']}` (run time {f['seconds'] / 60:.1f} min on {f['threads']} CPU threads; "
        f"{f['computed']}).",
        "",
        "Recognizer: the held-out dlib ResNet (`training/recognizers/dlib_resnet.py`, `DlibJudge`: dlib's frontal "
        "detector, 5-point shape predictor and `get_face_chip(size=150, padding=0.25)` on each aligned 128×128 HR "
        "crop, then our torch port of `dlib_face_recognition_resnet_model_v1.dat`). Distance: euclidean between "
        "raw descriptors, as dlib compares them.",
        "",
        "Rule: a UTKFace face is dropped when it lies within the threshold of ANY LFW or CelebA face "
        f"({f['evaluation_faces']:,} faces: LFW {f['set_faces']['lfw']:,}, CelebA {f['set_faces']['celeba']:,}; "
        "all images of both sets, not only those the protocols use).",
        "",
        "## Result",
        "",
        "| threshold | UTKFace faces dropped | kept | nearest face of the dropped in LFW / CelebA |",
        "| --- | --- | --- | --- |",
    ]
    for row in f["count_rows"]:
        label = {True: " (chosen)", False: ""}[row["chosen"]]
        if row["threshold"] == DLIB_SAME_PERSON:
            label += " (dlib's 1:1 rule)"
        lines.append(f"| {row['threshold']:.3f}{label} | {_fraction(row['dropped'], pool)} | "
                     f"{pool - row['dropped']:,} | {row['by_set']['lfw']:,} / {row['by_set']['celeba']:,} |")
    lines += [
        "",
        f"`data/cache/utkface/keep.txt` lists the {f['kept']:,} kept rows of `faces.npy` (0-based; regenerate it "
        "with the command above). Training further leaves out faces YuNet did not detect or with less than half "
        "the crop inside the photo (`training.data.training_rows`); this filter covers every row.",
        "",
        "## Threshold",
        "",
        f"Chosen: **{f['threshold']:.3f}**. {f['threshold_reason']}",
        "",
        "Why not dlib's 0.6: it is a one-to-one rule (two photos, same person or not). Between random pairs of "
        "different people in LFW and CelebA it errs rarely, but a UTKFace face is compared with "
        f"{f['evaluation_faces']:,} faces at once, and almost every face has some stranger within 0.6:",
        "",
        "| distance t | same-person pairs closer than t | different-person pairs closer than t "
        "| catch(t) | false_match(t) | catch − false_match | UTKFace faces closer than t to an evaluation face |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in f["rate_rows"]:
        lines.append(f"| {row['t']:.3f} | {100 * row['pair_same']:.1f} % | {100 * row['pair_other']:.2f} % | "
                     f"{100 * row['catch']:.1f} % | {100 * row['false_match']:.1f} % | "
                     f"{row['catch'] - row['false_match']:.3f} | {_fraction(row['pool'], pool)} |")
    lines += [
        "",
        f"Pairs: up to {PAIRS_PER_IDENTITY} random same-person pairs per identity ({f['genuine_pairs']:,} pairs of "
        f"{f['genuine_identities']:,} identities) and {f['impostor_pairs']:,} random different-person pairs, all "
        "HR faces of LFW and CelebA. catch(t): of the "
        f"{f['faces_with_partner']:,} evaluation faces with another photo of the same person, those whose nearest "
        "such photo is closer than t (a UTKFace photo of an evaluation identity is dropped when any photo of that "
        "identity is within t). false_match(t): of all evaluation faces, those whose nearest face of a different "
        "identity (among all LFW and CelebA faces) is closer than t (a UTKFace face of no evaluation identity is "
        "dropped when any stranger is within t). Both are measured between evaluation photos; across data sets the "
        "same-person distances are likely larger, and UTKFace's faces are more crowded in dlib's space than the "
        "evaluation faces (at the chosen threshold it drops "
        f"{100 * f['pool_drop_rate']:.1f} % of UTKFace against a false_match of {100 * f['false_match']:.1f} %), "
        "so the dropped count is an upper bound on the faces of evaluation identities, not an estimate of it.",
        "",
        "Distance from each UTKFace face to its nearest evaluation face: "
        + ", ".join(f"{q} % of faces below {v:.3f}" for q, v in f["pool_percentiles"]) + ".",
        "",
        "## Closest UTKFace–evaluation pairs",
        "",
        "| distance | UTKFace file (age_gender_race_time) | nearest evaluation face |",
        "| --- | --- | --- |",
    ]
    for distance, pool_path, evaluation_path in f["closest"]:
        lines.append(f"| {distance:.3f} | `{pool_path}` | `{evaluation_path}` |")
    lines += [
        "",
        "## dlib's alignment on the HR crops",
        "",
        "| set | faces | dlib's detector found the face | fallback box |",
        "| --- | --- | --- | --- |",
    ]
    for name, (total, detected) in f["detection"].items():
        lines.append(f"| {name} | {total:,} | {_fraction(detected, total)} | {total - detected:,} |")
    lines += [
        "",
        "Descriptors are the evaluation's cached HR features, `data/cache/<set>/feat_dlib.npy` (one row per row "
        "of `faces.npy`); they are recomputed when the faces or `dlib_resnet.py` change.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.filter_pool", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_OUT, help="cache root (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="face data root, for CelebA's identities")
    parser.add_argument("--threshold", type=float, default=None,
                        help="use this distance instead of the one chosen from the evaluation sets' labels")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from training import evaluation

    started = time.perf_counter()
    for name in (*EVALUATION_SETS, POOL_SET):
        if not (args.cache / name / "DONE").exists():
            raise FileNotFoundError(f"{args.cache / name} is not prepared: run python -m training.prepare --sets {name}")
    embed = evaluation.load_recognizers(["dlib"])["dlib"]
    computed = []
    descriptors, detected_count, paths = {}, {}, {}
    for name in (*EVALUATION_SETS, POOL_SET):
        folder = args.cache / name
        reused = evaluation.hr_features_cached(folder, "dlib", embed)
        set_started = time.perf_counter()
        descriptors[name] = evaluation.hr_features(folder, "dlib", embed)
        fallback_rate = evaluation.hr_judge_fallback_rate(folder, "dlib")
        detected_count[name] = round(len(descriptors[name]) * (1 - fallback_rate))
        paths[name] = read_paths(folder)
        if len(paths[name]) != len(descriptors[name]):
            raise ValueError(f"{folder}: index.tsv has {len(paths[name])} rows, descriptors {len(descriptors[name])}")
        computed.append(f"{name} descriptors " + ("reused from the cache" if reused else
                                                  f"computed in {(time.perf_counter() - set_started) / 60:.1f} min"))

    evaluation_descriptors = np.concatenate([descriptors[name] for name in EVALUATION_SETS])
    evaluation_paths = [f"{name}/{path}" for name in EVALUATION_SETS for path in paths[name]]
    evaluation_sets = np.concatenate([np.full(len(paths[name]), name) for name in EVALUATION_SETS])
    labels = np.concatenate([read_labels(name, paths[name], args.data) for name in EVALUATION_SETS])

    nearest_same, nearest_other = nearest_same_and_other(evaluation_descriptors, labels)
    chosen = choose_threshold(nearest_same, nearest_other)
    catch, false_match = one_against_many_rates(nearest_same, nearest_other, np.array([chosen]))
    if args.threshold is not None:
        threshold = args.threshold
        reason = (f"Given on the command line (`--threshold {args.threshold}`); the rule below would choose "
                  f"{chosen:.3f}.")
    else:
        threshold = chosen
        reason = (f"Of the thresholds {THRESHOLD_GRID[0]:.3f}, {THRESHOLD_GRID[1]:.3f}, ..., {THRESHOLD_GRID[-1]:.3f}, "
                  f"the one with the largest catch − false_match (Youden's J) measured on the evaluation sets' own "
                  f"labels: catch {100 * catch[0]:.1f} %, false_match {100 * false_match[0]:.1f} % (defined below). "
                  "It weighs a missed evaluation identity and a needlessly dropped training face alike; on ties "
                  "the larger threshold (it drops more).")
    log.info("threshold %.3f (catch %.3f, false match %.3f at the chosen %.3f)", threshold, catch[0],
             false_match[0], chosen)

    distances, nearest_index = nearest(descriptors[POOL_SET], evaluation_descriptors)
    keep = np.flatnonzero(distances >= threshold)
    keep_path = args.cache / POOL_SET / "keep.txt"
    temporary = keep_path.with_suffix(".tmp")
    temporary.write_text("".join(f"{row}\n" for row in keep))
    temporary.replace(keep_path)
    log.info("dropped %d of %d UTKFace faces at %.3f; kept rows in %s", len(distances) - len(keep),
             len(distances), threshold, keep_path)

    rng = np.random.default_rng(SEED)
    genuine = same_identity_distances(evaluation_descriptors, labels, rng)
    impostor = impostor_distances(evaluation_descriptors, labels, rng)
    table = np.array(sorted({*np.round(np.arange(0.35, 0.601, 0.05), 3), round(chosen, 3), round(threshold, 3)}))
    table_catch, table_false = one_against_many_rates(nearest_same, nearest_other, table)
    rate_rows = [{"t": t, "pair_same": float((genuine < t).mean()), "pair_other": float((impostor < t).mean()),
                  "catch": float(c), "false_match": float(m), "pool": int((distances < t).sum())}
                 for t, c, m in zip(table, table_catch, table_false)]
    count_rows = []
    for value in sorted({DLIB_SAME_PERSON, threshold}):
        dropped = distances < value
        count_rows.append({
            "threshold": value, "chosen": value == threshold, "dropped": int(dropped.sum()),
            "by_set": {name: int((evaluation_sets[nearest_index[dropped]] == name).sum()) for name in EVALUATION_SETS},
        })
    closest = np.argsort(distances)[:15]
    facts = {
        "command": " ".join(["python -m training.filter_pool",
                             *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))]),
        "seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
        "computed": ", ".join(computed),
        "pool_faces": len(distances),
        "evaluation_faces": len(evaluation_descriptors),
        "set_faces": {name: len(paths[name]) for name in EVALUATION_SETS},
        "threshold": threshold,
        "threshold_reason": reason,
        "false_match": float(false_match[0]),
        "pool_drop_rate": float((distances < chosen).mean()),
        "faces_with_partner": int(np.isfinite(nearest_same).sum()),
        "genuine_pairs": len(genuine),
        "genuine_identities": int((np.unique(labels, return_counts=True)[1] > 1).sum()),
        "impostor_pairs": len(impostor),
        "rate_rows": rate_rows,
        "count_rows": count_rows,
        "kept": len(keep),
        "pool_percentiles": [(q, float(np.percentile(distances, q))) for q in (1, 5, 50)],
        "detection": {name: (len(descriptors[name]), detected_count[name]) for name in (*EVALUATION_SETS, POOL_SET)},
        "closest": [(float(distances[i]), paths[POOL_SET][i], evaluation_paths[nearest_index[i]]) for i in closest],
    }
    write_report(args.report, facts)
    log.info("report in %s (%.1f min)", args.report, facts["seconds"] / 60)


if __name__ == "__main__":
    main()
