"""Enhance face archives with Ray Data: a pool of Ray actors, one :class:`FaceEnhancer` each.

    from iafsr_sdk.scale import enhance_archive
    summary = enhance_archive("faces/", "faces_sr/")                       # a local Ray instance
    summary = enhance_archive("faces.parquet", "sr.parquet", address="auto")  # join a running cluster

Needs the ``scale`` extra (``pip install "iafsr[scale]"``: Ray Data); the rest of the SDK does not.

Input (``source``): a folder tree of aligned low-resolution PNG / JPEG faces, or Parquet (a ``.parquet`` file
or folder of them) with a column of unique ids and a column of encoded image bytes. Output (``destination``):
a folder tree that mirrors the input (same relative names; Parquet rows become ``<id>.png``), or, when its
name ends in ``.parquet``, a folder of Parquet part files with the columns ``id`` (string), ``image`` (the
128×128 face as PNG bytes) and ``source`` (the input file; ``file#id`` for Parquet input). Pixels are those of
``FaceEnhancer.enhance`` and files are encoded as ``iafsr enhance`` writes them, so on the CPU the output
equals the single-process path byte for byte. One job per destination at a time.

What is guaranteed:
- The input is never written: a destination equal to the source, inside it, or containing it is refused.
- Every output is written under a temporary name in ``<destination>/.iafsr-tmp/`` and then renamed into
  place, so an output that exists is complete. Running the same call again skips complete outputs and does
  the rest: a killed job resumes.
- Inputs that cannot be read or enhanced (corrupt, not square, too large) are listed with the reason in
  ``<destination>/_failures.csv``; the rest proceeds. The file reflects the last run and is removed by a run
  without failures.
- Ray Data restarts an actor that dies (``max_restarts=-1``) and retries its batches on another actor
  (``max_task_retries=-1``, its default for actor pools). A retried batch writes the same outputs under the
  same names (Parquet part files are named by the ids they hold), so a dead worker costs time, never a
  missing or a duplicated output.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from .cli import IMAGE_SUFFIXES, read_face
from .enhancer import FaceEnhancer

__all__ = ["ArchiveSummary", "check_destination", "enhance_archive"]

log = logging.getLogger(__name__)

TEMP_FOLDER = ".iafsr-tmp"
FAILURES_FILE = "_failures.csv"
PART_PREFIX = "part-"
CPU_BATCH, GPU_BATCH = 64, 256


@dataclass
class ArchiveSummary:
    """What one :func:`enhance_archive` call did."""

    total: int                 #: inputs found
    written: int               #: outputs written by this run
    skipped: int               #: inputs whose output was already complete
    failures: list[tuple[str, str]] = field(default_factory=list)  #: (input, reason), sorted
    failures_file: Optional[Path] = None
    workers: int = 0
    device: str = "cpu"
    seconds: float = 0.0


def check_destination(source: str | os.PathLike[str], destination: str | os.PathLike[str],
                      tree: bool = False) -> None:
    """Raise ``ValueError`` if writing ``destination`` could overwrite ``source``.

    Refused: the same path (also through links), and a destination inside a source folder. With ``tree``
    (the output mirrors the whole input tree) a destination folder that contains the source is refused too.
    """
    src, dst = Path(source).resolve(), Path(destination).resolve()
    if src == dst or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise ValueError(f"OUT is IN ({destination}): refusing to overwrite the input; choose another OUT")
    if src.is_dir() and src in dst.parents:
        raise ValueError(f"OUT ({destination}) is inside IN ({source}): refusing to write into the input; "
                         "choose an OUT outside it")
    if tree and dst in src.parents:
        raise ValueError(f"IN ({source}) is inside OUT ({destination}): the mirrored tree could overwrite "
                         "inputs; choose an OUT outside it")


def encode(face: np.ndarray, suffix: str = ".png") -> bytes:
    """A face as the bytes ``iafsr enhance`` writes for a file with this suffix (PNG, or JPEG quality 95)."""
    buffer = io.BytesIO()
    if suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(face).save(buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(face).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes, temp_folder: Path) -> None:
    """Write ``data`` under a unique temporary name, then rename it to ``path`` (same file system)."""
    temp = temp_folder / f"{path.name}.{uuid.uuid4().hex}"
    temp.write_bytes(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temp, path)


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def _safe_relative(name: str) -> Optional[Path]:
    """``name`` as a relative path that stays inside the destination, or None."""
    path = Path(name)
    if not name or path.is_absolute() or ".." in path.parts:
        return None
    return path


class _EnhanceBatches:
    """The Ray Data actor: reads, enhances and writes one batch, returns one status row per input face."""

    def __init__(self, *, source: str, destination: str, from_parquet: bool, to_parquet: bool,
                 id_column: str, image_column: str, done: frozenset, enhancer: dict[str, Any]) -> None:
        self.source, self.destination = Path(source), Path(destination)
        self.from_parquet, self.to_parquet = from_parquet, to_parquet
        self.columns = [id_column, image_column]
        self.done = done
        self.temp = self.destination / TEMP_FOLDER
        self.enhancer = FaceEnhancer(**enhancer)
        self._row_group: tuple[Any, Any] = (None, None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.from_parquet:
            ids, sources, blobs = [], [], []
            for unit in zip(batch["file"], batch["row_group"], batch["start"], batch["stop"]):
                unit_ids, unit_blobs = self._read_unit(*unit)
                ids += unit_ids
                sources += [f"{unit[0]}#{face_id}" for face_id in unit_ids]
                blobs += unit_blobs
        else:
            ids = [str(name) for name in batch["id"]]
            sources = [str(self.source / name) for name in ids]
            blobs = [None] * len(ids)
        status, reasons = ["written"] * len(ids), [""] * len(ids)
        faces: dict[int, np.ndarray] = {}
        for index, (face_id, blob) in enumerate(zip(ids, blobs)):
            target = None if self.to_parquet else self._target(face_id)
            if not self.to_parquet and target is None:
                status[index], reasons[index] = "failed", f"id {face_id!r} is not a relative file name"
            elif face_id in self.done if self.to_parquet else target.exists():
                status[index] = "skipped"
            elif self.from_parquet and blob is None:
                status[index], reasons[index] = "failed", f"no bytes in column {self.columns[1]!r}"
            else:
                try:
                    faces[index] = read_face(io.BytesIO(blob) if self.from_parquet else Path(sources[index]))
                except ValueError as error:
                    status[index], reasons[index] = "failed", str(error)
        results = self._enhance(faces, status, reasons)
        if self.to_parquet:
            self._write_part(ids, sources, results)
        else:
            for index, face in results.items():
                target = self._target(ids[index])
                _write_atomic(target, encode(face, target.suffix), self.temp)
        return {"source": np.array(sources, dtype=object), "status": np.array(status, dtype=object),
                "reason": np.array(reasons, dtype=object)}

    def _target(self, face_id: str) -> Optional[Path]:
        relative = _safe_relative(face_id + ".png" if self.from_parquet else face_id)
        return None if relative is None else self.destination / relative

    def _read_unit(self, file: str, row_group: int, start: int, stop: int) -> tuple[list[str], list[Any]]:
        """Ids and image bytes of rows start..stop of one row group (the last row group read is kept)."""
        import pyarrow.parquet as pq

        key = (str(file), int(row_group))
        if self._row_group[0] != key:
            self._row_group = (key, pq.ParquetFile(key[0]).read_row_group(key[1], columns=self.columns))
        rows = self._row_group[1].slice(int(start), int(stop) - int(start))
        return [str(value) for value in rows.column(0).to_pylist()], rows.column(1).to_pylist()

    def _enhance(self, faces: dict[int, np.ndarray], status: list[str],
                 reasons: list[str]) -> dict[int, np.ndarray]:
        if not faces:
            return {}
        try:
            return dict(zip(faces, self.enhancer.enhance(list(faces.values()))))
        except (ValueError, TypeError):
            pass  # one bad face spoils the batch: redo them one by one to name it and keep the others
        results = {}
        for index, face in faces.items():
            try:
                results[index] = self.enhancer.enhance(face)
            except (ValueError, TypeError) as error:
                status[index], reasons[index] = "failed", str(error)
        return results

    def _write_part(self, ids: list[str], sources: list[str], results: dict[int, np.ndarray]) -> None:
        """One Parquet part file per batch, named by its ids: a retried batch replaces its own file."""
        if not results:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        order = sorted(results)
        names = [ids[i] for i in order]
        digest = hashlib.sha1("\0".join(names).encode()).hexdigest()[:24]
        table = pa.table({"id": pa.array(names, pa.string()),
                          "image": pa.array([encode(results[i]) for i in order], pa.binary()),
                          "source": pa.array([sources[i] for i in order], pa.string())})
        temp = self.temp / f"{PART_PREFIX}{digest}.{uuid.uuid4().hex}"
        pq.write_table(table, temp)
        os.replace(temp, self.destination / f"{PART_PREFIX}{digest}.parquet")


def _image_files(source: Path) -> list[str]:
    """Relative POSIX names of the image files under ``source`` (recursive, sorted, hidden files skipped)."""
    names = []
    for folder, subfolders, files in os.walk(source):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                names.append((Path(folder) / name).relative_to(source).as_posix())
    return sorted(names)


def _parquet_units(source: Path, columns: list[str], batch: int) -> tuple[list[tuple[str, int, int, int]], int]:
    """(file, row group, first row, end row) slices of at most ``batch`` rows, and the number of rows."""
    import pyarrow.parquet as pq

    files = [source] if source.is_file() else sorted(
        p for p in source.rglob("*.parquet") if p.is_file() and not any(part.startswith((".", "_"))
                                                                        for part in p.relative_to(source).parts))
    if not files:
        raise ValueError(f"no .parquet files in {source}")
    units, total = [], 0
    for file in files:
        try:
            metadata = pq.ParquetFile(file).metadata
        except Exception as error:  # pyarrow raises several types for a file that is not Parquet
            raise ValueError(f"cannot read Parquet file {file}: {error}") from error
        missing = [c for c in columns if c not in metadata.schema.names]
        if missing:
            raise ValueError(f"{file} has no column {missing[0]!r} (columns: {', '.join(metadata.schema.names)}); "
                             "name the id and image columns")
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            units += [(str(file), group, start, min(start + batch, rows)) for start in range(0, rows, batch)]
            total += rows
    return units, total


def _done_ids(destination: Path) -> set[str]:
    """Ids already in the Parquet part files of ``destination``."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for part in sorted(destination.glob(f"{PART_PREFIX}*.parquet")):
        done.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())
    return done


def _write_failures(destination: Path, failures: list[tuple[str, str]]) -> Optional[Path]:
    path = destination / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)
        return None
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(failures)
    _write_atomic(path, text.getvalue().encode(), destination / TEMP_FOLDER)
    return path


def _connect(address: Optional[str]) -> bool:
    """Start or join Ray; True if this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
    return True


def _plan_workers(device: str, workers: Optional[int]) -> tuple[str, int]:
    """('cpu' | 'cuda', number of actors) from the device asked for and what the cluster has."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    kind = device.lower()
    if kind not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda' on Ray (Ray assigns the GPUs), got {device!r}")
    if kind == "cuda" and gpus < 1:
        raise ValueError("device='cuda' asked, but the Ray cluster has no GPU")
    use = "cuda" if kind == "cuda" or (kind == "auto" and gpus >= 1) else "cpu"
    available = gpus if use == "cuda" else cpus
    if workers is not None and workers > available:
        raise ValueError(f"{workers} workers asked, but the Ray cluster has {available} "
                         f"{'GPU' if use == 'cuda' else 'CPU'}s and each actor takes one")
    return use, workers if workers is not None else max(1, available)


def enhance_archive(source: str | os.PathLike[str], destination: str | os.PathLike[str], *,
                    device: str = "auto", batch_size: Optional[int] = None, workers: Optional[int] = None,
                    address: Optional[str] = None, model: Optional[str] = None,
                    precision: Optional[str] = None, id_column: str = "id", image_column: str = "image",
                    progress: bool = True) -> ArchiveSummary:
    """Enhance every face of an archive on a Ray actor pool; see the module's documentation.

    Args:
        source: a folder tree of PNG / JPEG faces, or a ``.parquet`` file or folder.
        destination: a folder (mirrors the input), or a name ending in ``.parquet`` (Parquet part files).
            On a cluster both must be paths that every Ray node sees (a shared file system).
        device: ``"auto"`` (one GPU per actor where the cluster has GPUs, else CPU actors), ``"cpu"`` or
            ``"cuda"``.
        batch_size: faces per actor call (default 64 on CPUs, 256 on GPUs).
        workers: actors in the pool (default: one per CPU, or one per GPU, of the cluster). A CPU actor
            takes one CPU and runs onnxruntime with one intra-op thread.
        address: ``None`` starts a local Ray instance (or uses the one this process already runs); an
            address (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``) joins that cluster.
        model, precision: as for :class:`FaceEnhancer`.
        id_column, image_column: the columns of Parquet input (image: encoded PNG / JPEG bytes).
        progress: show Ray Data's progress bars.

    Returns:
        An :class:`ArchiveSummary`; failed inputs are in it and in ``<destination>/_failures.csv``.

    Raises:
        ValueError: unusable source, destination, device, batch size or worker count.
        ImportError: Ray Data is not installed.
    """
    started = time.perf_counter()
    source, destination = Path(source), Path(destination)
    if not source.exists():
        raise ValueError(f"IN does not exist: {source}")
    from_parquet, to_parquet = _is_parquet(source), _is_parquet(destination)
    if not from_parquet and not source.is_dir():
        raise ValueError(f"IN must be a folder of images or a .parquet file or folder, got {source}")
    if destination.exists() and not destination.is_dir():
        raise ValueError(f"OUT must be a folder (a name ending in .parquet for Parquet output): {destination}")
    check_destination(source, destination, tree=True)
    for name, value in (("batch_size", batch_size), ("workers", workers)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    try:  # a model that cannot be used fails here, with its own message, not in every actor
        FaceEnhancer(model=model, precision=precision, device="cpu", threads=1)  # type: ignore[arg-type]
    except (OSError, RuntimeError) as error:
        raise ValueError(f"cannot set up the enhancer: {error}") from error
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise ImportError(f'the Ray path needs Ray Data: pip install "iafsr[scale]" ({error})') from error

    own_ray = _connect(address)
    try:
        use, count = _plan_workers(device, workers)
        batch = batch_size or (GPU_BATCH if use == "cuda" else CPU_BATCH)
        destination.mkdir(parents=True, exist_ok=True)
        temp = destination / TEMP_FOLDER
        shutil.rmtree(temp, ignore_errors=True)  # left by a killed run; never a complete output
        temp.mkdir()
        done = frozenset(_done_ids(destination)) if to_parquet else frozenset()
        if from_parquet:
            units, total = _parquet_units(source, [id_column, image_column], batch)
            blocks = [_table(file=[u[0]], row_group=[u[1]], start=[u[2]], stop=[u[3]]) for u in units]
            summary = ArchiveSummary(total=total, written=0, skipped=0)
        else:
            names = _image_files(source)
            if not names:
                raise ValueError(f"no .png or .jpg files under {source}")
            pending = [n for n in names if (n not in done if to_parquet else not (destination / n).exists())]
            blocks = [_table(id=pending[i:i + batch]) for i in range(0, len(pending), batch)]
            summary = ArchiveSummary(total=len(names), written=0, skipped=len(names) - len(pending))
        summary.device, summary.workers = use, min(count, len(blocks))
        if blocks:
            _run(blocks, summary, batch=1 if from_parquet else batch, progress=progress,
                 constructor=dict(source=str(source), destination=str(destination), from_parquet=from_parquet,
                                  to_parquet=to_parquet, id_column=id_column, image_column=image_column,
                                  done=done if from_parquet else frozenset(),
                                  enhancer=dict(model=model, precision=precision, batch_size=batch,
                                                device=use, threads=None if use == "cuda" else 1)))
        summary.failures.sort()
        summary.failures_file = _write_failures(destination, summary.failures)
        shutil.rmtree(temp, ignore_errors=True)
    finally:
        if own_ray:
            ray.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary


def _table(**columns: list) -> Any:
    import pyarrow as pa

    return pa.table(columns)


def _run(blocks: list, summary: ArchiveSummary, *, batch: int, progress: bool, constructor: dict) -> None:
    """Map the blocks through a fixed pool of ``summary.workers`` actors and count what they report.

    Each block is one task (one batch of names, or one Parquet slice), so a task that Ray retries redoes
    exactly the same outputs.
    """
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = progress
    resources = {"num_gpus": 1} if summary.device == "cuda" else {"num_cpus": 1}
    log.info("enhancing %d faces on %d %s actor(s)", summary.total - summary.skipped, summary.workers,
             summary.device.upper())
    results = ray.data.from_arrow(blocks).map_batches(
        _EnhanceBatches, batch_size=batch, compute=ray.data.ActorPoolStrategy(size=summary.workers),
        fn_constructor_kwargs=constructor, **resources)
    for rows in results.iter_batches(batch_size=None, batch_format="numpy"):
        for source, status, reason in zip(rows["source"], rows["status"], rows["reason"]):
            if status == "written":
                summary.written += 1
            elif status == "skipped":
                summary.skipped += 1
            else:
                summary.failures.append((str(source), str(reason)))


def run_cli(args: Any) -> int:
    """``iafsr enhance IN OUT --ray [ADDRESS]``: the archive path, a summary, and the CLI's exit status."""
    from .cli import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, _write

    try:
        summary = enhance_archive(args.input, args.output, device=args.device, batch_size=args.batch_size,
                                  workers=args.workers, address=args.ray or None, model=args.model,
                                  precision=args.precision, progress=not args.quiet)
    except (ValueError, ImportError, OSError) as error:
        log.error("%s", error)
        return EXIT_USAGE
    except Exception as error:  # a failed Ray job (e.g. the enhancer cannot start on the workers)
        log.error("the Ray job failed: %s", error)
        return EXIT_USAGE
    _write(f"enhanced {summary.written} of {summary.total} faces into {args.output} on {summary.workers} "
           f"{summary.device.upper()} actor(s) in {summary.seconds:.1f} s ({summary.skipped} already done, "
           f"{len(summary.failures)} failed)")
    if summary.failures:
        _write(f"{len(summary.failures)} failed, listed in {summary.failures_file}:", sys.stderr)
        for source, reason in summary.failures[:20]:
            _write(f"  {source}: {reason}", sys.stderr)
        if len(summary.failures) > 20:
            _write(f"  ... and {len(summary.failures) - 20} more", sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK
