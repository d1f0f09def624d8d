"""Face super-resolution at run time: aligned low-resolution faces in, 128×128 faces out.

Runs the exported generator with onnxruntime on numpy arrays; it needs neither torch nor a GPU.

    from iafsr_sdk import FaceEnhancer
    enhancer = FaceEnhancer()                 # the shipped model, CUDA if it works here, else CPU
    sr = enhancer.enhance(lr_faces)           # (N, h, w, 3) uint8 RGB  ->  (N, 128, 128, 3) uint8 RGB

Faces must be aligned to the 5-point template (see :func:`iafsr_sdk.align` and ``docs/template.png``);
any square size is brought to 16×16 with the same antialiased bicubic resize that made the training data.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import numpy as np
import numpy.typing as npt
import onnxruntime

from .faces import HR_SIZE, LR_SIZE, resize
from ._ext import CudaUnavailableError

__all__ = ["FaceEnhancer", "ModelFileError", "MAX_FACE_SIDE", "PRECISIONS", "shipped_precisions"]

log = logging.getLogger(__name__)

#: Largest accepted side of an input face, in pixels. Aligned low-resolution faces are far smaller;
#: anything bigger is almost certainly a whole photo passed by mistake.
MAX_FACE_SIDE = 1024
#: On the CPU, onnxruntime runs at most this many faces per call (see ``batch_size``).
CPU_RUN_FACES = 8
MODEL_FILES = {"fp32": "iafsr_generator.onnx", "fp16": "iafsr_generator_fp16.onnx",
               "int8": "iafsr_generator_int8.onnx"}
PRECISIONS = tuple(MODEL_FILES)
CARD_FILE = "iafsr_generator.json"
# Floating point faces may exceed [0, 1] by this much (rounding in the caller's arithmetic); they are clipped.
_RANGE_SLACK = 1e-3

Faces = Union[npt.ArrayLike, Sequence[npt.ArrayLike]]
Providers = Sequence[Union[str, tuple[str, dict[str, Any]]]]


class ModelFileError(ValueError):
    """The model file cannot be used: unreadable, not an ONNX generator of this SDK, or its sha256 differs
    from the one in its model card."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shipped_model_dir() -> Path:
    return Path(str(resources.files(__package__).joinpath("models")))


def _card_beside(path: Path) -> Path:
    """The model card that covers ``path``: ``name.json`` beside ``name.onnx`` / ``name_fp16.onnx`` /
    ``name_int8.onnx``."""
    stem = path.stem
    for suffix in ("_fp16", "_int8"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return path.with_name(stem + ".json")


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelFileError(f"cannot read the model card {path}: {error}") from error
    if not isinstance(card, dict) or not isinstance(card.get("files"), dict):
        raise ModelFileError(f"model card {path} has no 'files' table")
    return card


def _verify(model_path: Path, data: bytes, card: dict[str, Any], card_path: Path) -> str:
    """The precision under which ``card`` lists ``model_path``; raises if the sha256 differs."""
    for precision, entry in card["files"].items():
        if isinstance(entry, dict) and entry.get("file") == model_path.name:
            actual = _sha256(data)
            if actual != entry.get("sha256"):
                raise ModelFileError(
                    f"{model_path} does not match its model card {card_path}: sha256 {actual}, card says "
                    f"{entry.get('sha256')}. The file is damaged or was replaced; reinstall iafsr or re-export."
                )
            return str(precision)
    raise ModelFileError(f"model card {card_path} does not list {model_path.name}")


def shipped_precisions() -> list[str]:
    """The precisions of the shipped model installed here: listed in its card, file present."""
    folder = _shipped_model_dir()
    try:
        files = _read_card(folder / CARD_FILE)["files"]
    except ModelFileError:
        return []
    return [p for p in PRECISIONS if isinstance(files.get(p), dict) and (folder / MODEL_FILES[p]).is_file()]


def _cuda_driver_present() -> bool:
    library = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def _parse_device(device: str) -> tuple[str, int]:
    if not isinstance(device, str):
        raise TypeError(f"device must be a string ('auto', 'cpu', 'cuda' or 'cuda:N'), got {type(device).__name__}")
    name, _, index = device.lower().partition(":")
    if name in ("auto", "cpu") and not index:
        return name, 0
    if name == "cuda" and (not index or index.isdigit()):
        return name, int(index or 0)
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _provider_name(provider: str | tuple[str, dict[str, Any]]) -> str:
    return provider if isinstance(provider, str) else provider[0]


class FaceEnhancer:
    """Super-resolves aligned faces with the exported generator on onnxruntime.

    Args:
        model: ``None`` for the model shipped with the package, or the path of an ``.onnx`` file exported by
            ``python -m export.generator``. A model card beside the file (``<name>.json``) is checked: the
            file's sha256 must match it. The shipped model must always match.
        device: ``"auto"`` (CUDA where it works, else CPU; the choice is logged), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``. Asking for CUDA where it cannot run raises :class:`~iafsr_sdk.CudaUnavailableError`;
            there is no silent fallback to the CPU.
        providers: onnxruntime execution providers (names or ``(name, options)`` pairs), passed through
            instead of ``device``; every one asked for must be in use, else ``RuntimeError``.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice, one per physical core, the
            threads spinning briefly between operators). Pass fewer where other work shares the cores.
        batch_size: faces per onnxruntime call; bigger inputs are processed in chunks of this size, so
            working memory stays bounded. On the CPU a call holds at most ``CPU_RUN_FACES`` (8) faces
            whatever ``batch_size`` says: from 8 faces up onnxruntime's speed per face no longer grows, and
            the memory it needs does (about 20 MB per face). The output array comes on top: 48 KB per face.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``; picks the shipped file (default fp32). With a path it
            must agree with the file's card when given. fp16 pays off on GPUs; on CPUs it is slower. int8 is
            the fast CPU path (integer kernels; its difference from fp32 is in the model card and
            ``docs/usage.md``); on GPUs use fp16.
        memory_arena: keep onnxruntime's CPU memory arena (default). It holds on to the memory of the
            largest call, bounded by ``CPU_RUN_FACES`` (0.25 GB resident in all); without it every call maps
            and faults in fresh pages (about 9 MB per face), which cost a quarter of the fp32 throughput at
            batch 32 (``python -m benchmarks.enhancer`` measures both). ``False`` returns the memory after
            each call.

    The object is thread-safe (one onnxruntime session, no mutable state per call) and picklable (the
    configuration is pickled; unpickling builds a new session).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        device: str = "auto",
        providers: Providers | None = None,
        threads: int | None = None,
        batch_size: int = 64,
        precision: Literal["fp32", "fp16", "int8"] | None = None,
        memory_arena: bool = True,
    ) -> None:
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"model must be None or a path, got {type(model).__name__}")
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be 'fp32', 'fp16' or 'int8', got {precision!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        device_kind, device_id = _parse_device(device)
        if providers is not None and device_kind != "auto":
            raise ValueError(f"pass either device or providers, not both (got device={device!r})")
        self._config = dict(model=None if model is None else os.fspath(model), device=device,
                            providers=None if providers is None else list(providers), threads=threads,
                            batch_size=int(batch_size), precision=precision, memory_arena=bool(memory_arena))
        self.batch_size = int(batch_size)

        self.model_path, data, self.card, self.precision = self._load_model(model, precision)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.enable_cpu_mem_arena = bool(memory_arena)
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        if providers is not None:
            self._check_available([_provider_name(p) for p in providers])
            self._session = self._create_session(data, options, list(providers))
            self._check_providers([_provider_name(p) for p in providers])
        else:
            self._session = self._session_for_device(data, options, device_kind, device_id)
        self._check_signature()
        gpu_providers = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
        self.device = "cuda" if gpu_providers & set(self.providers) else "cpu"
        self._run_faces = self.batch_size if self.device == "cuda" else min(self.batch_size, CPU_RUN_FACES)
        if not self.card:
            self.card = dict(self._session.get_modelmeta().custom_metadata_map)
        if self.precision == "int8" and self.device == "cuda":
            log.warning("the int8 model is made for CPUs (integer kernels); on CUDA use fp16")
        log.info("FaceEnhancer: %s (%s) on %s", self.model_path.name, self.precision, ", ".join(self.providers))

    # ----- construction -----

    def _load_model(self, model: str | os.PathLike[str] | None,
                    precision: str | None) -> tuple[Path, bytes, dict[str, Any], str]:
        """The model's path, bytes (verified against its card), card and precision."""
        if model is None:
            precision = precision or "fp32"
            path = _shipped_model_dir() / MODEL_FILES[precision]
            card_path = _shipped_model_dir() / CARD_FILE
            if not card_path.is_file():
                raise ModelFileError(f"the shipped model card {card_path} is missing: reinstall iafsr")
        else:
            path = Path(model)
            card_path = _card_beside(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"no model file at {path}") from None
        except OSError as error:
            raise ModelFileError(f"cannot read model file {path}: {error}") from error
        card: dict[str, Any] = {}
        if card_path.is_file():
            card = _read_card(card_path)
            listed_precision = _verify(path, data, card, card_path)
            if precision is not None and listed_precision != precision:
                raise ValueError(f"precision={precision!r} asked, but {path.name} is the card's {listed_precision!r} file")
            precision = listed_precision
        else:
            log.info("no model card beside %s: its sha256 is not verified", path)
        return path, data, card, precision or "fp32"

    def _create_session(self, data: bytes, options: onnxruntime.SessionOptions,
                        providers: list) -> onnxruntime.InferenceSession:
        try:
            return onnxruntime.InferenceSession(data, options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
            raise ModelFileError(f"cannot load {self.model_path} as an ONNX model: {error}") from error

    def _session_for_device(self, data: bytes, options: onnxruntime.SessionOptions, device_kind: str,
                            device_id: int) -> onnxruntime.InferenceSession:
        cpu = ["CPUExecutionProvider"]
        if device_kind == "cpu":
            return self._create_session(data, options, cpu)
        cuda = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        compiled_with_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        if device_kind == "cuda":
            if not compiled_with_cuda:
                raise CudaUnavailableError(
                    "device='cuda' asked, but this onnxruntime has no CUDA provider "
                    f"(onnxruntime {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}); "
                    "install onnxruntime-gpu"
                )
            session = self._session_trying_cuda(data, options, cuda)
            if "CUDAExecutionProvider" not in session.get_providers():
                raise CudaUnavailableError(
                    "device='cuda' asked, but onnxruntime could not start CUDA and would run on the CPU "
                    "(no GPU or driver, or CUDA / cuDNN libraries missing: onnxruntime's log above says which)"
                )
            return session
        # auto
        if compiled_with_cuda and _cuda_driver_present():
            session = self._session_trying_cuda(data, options, cuda)
            if "CUDAExecutionProvider" in session.get_providers():
                log.info("device='auto': using CUDA device %d", device_id)
            else:
                log.warning("device='auto': a CUDA driver is present but onnxruntime could not use it "
                            "(see its log above); running on the CPU")
            return session
        log.info("device='auto': no usable CUDA device here; running on the CPU")
        return self._create_session(data, options, cpu)

    def _session_trying_cuda(self, data: bytes, options: onnxruntime.SessionOptions,
                             providers: list) -> onnxruntime.InferenceSession:
        """A session asking for CUDA. Where creating it fails, a CPU session instead: if that fails too, the
        model is at fault and its ModelFileError propagates; callers tell the two apart by the providers."""
        try:
            return self._create_session(data, options, providers)
        except ModelFileError as cuda_error:
            cpu_session = self._create_session(data, options, ["CPUExecutionProvider"])
            log.warning("onnxruntime failed to create a CUDA session: %s", cuda_error.__cause__)
            return cpu_session

    @staticmethod
    def _check_available(asked: list[str]) -> None:
        available = onnxruntime.get_available_providers()
        unknown = [name for name in asked if name not in available]
        if "CUDAExecutionProvider" in unknown:
            raise CudaUnavailableError(f"CUDAExecutionProvider asked, but this onnxruntime offers only {available}")
        if unknown:
            raise ValueError(f"providers {unknown} are not offered by this onnxruntime; it offers {available}")

    def _check_providers(self, asked: list[str]) -> None:
        missing = [name for name in asked if name not in self.providers]
        if not missing:
            return
        message = f"providers {missing} were asked for but onnxruntime runs {self.providers}"
        if "CUDAExecutionProvider" in missing:
            raise CudaUnavailableError(message)
        raise RuntimeError(message)

    def _check_signature(self) -> None:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        expected_in, expected_out = [3, LR_SIZE, LR_SIZE], [3, HR_SIZE, HR_SIZE]
        if (len(inputs) != 1 or len(outputs) != 1 or inputs[0].type != "tensor(float)"
                or outputs[0].type != "tensor(float)" or list(inputs[0].shape[1:]) != expected_in
                or list(outputs[0].shape[1:]) != expected_out):
            found = [(i.name, i.type, i.shape) for i in inputs], [(o.name, o.type, o.shape) for o in outputs]
            raise ModelFileError(
                f"{self.model_path} is not a face super-resolution generator of this SDK: expected one float "
                f"input (N, 3, {LR_SIZE}, {LR_SIZE}) and one float output (N, 3, {HR_SIZE}, {HR_SIZE}); "
                f"it has inputs {found[0]} and outputs {found[1]}"
            )
        self._input_name, self._output_name = inputs[0].name, outputs[0].name

    @property
    def providers(self) -> list[str]:
        """The onnxruntime execution providers in use, in priority order."""
        return list(self._session.get_providers())

    def __repr__(self) -> str:
        return (f"FaceEnhancer(model={self.model_path.name!r}, precision={self.precision!r}, "
                f"providers={self.providers}, batch_size={self.batch_size})")

    def __getstate__(self) -> dict[str, Any]:
        return dict(self._config)

    def __setstate__(self, config: dict[str, Any]) -> None:
        self.__init__(**config)  # type: ignore[misc]

    # ----- inference -----

    def enhance(
        self,
        faces: Faces,
        channel_order: Literal["rgb", "bgr"] = "rgb",
        output: Literal["uint8", "float32"] = "uint8",
    ) -> np.ndarray:
        """Super-resolve aligned faces.

        Args:
            faces: one face (H, W, 3), a batch (N, H, W, 3), or a list of (H, W, 3) faces of different sizes.
                uint8 in 0..255 or floating point in [0, 1]. Faces must be square and aligned to the
                template; any side from 1 to ``MAX_FACE_SIDE`` is resized to 16×16 first (antialiased
                bicubic, as the training data was made). Non-contiguous arrays are fine.
            channel_order: ``"rgb"`` (default) or ``"bgr"`` (OpenCV's order), for input and output alike.
            output: ``"uint8"`` (0..255, rounded) or ``"float32"`` (in [0, 1]). Values are clipped.

        Returns:
            (128, 128, 3) for one (H, W, 3) face; (N, 128, 128, 3) for a batch or a list.

        Raises:
            TypeError: not an array, or a dtype other than uint8 / floating point.
            ValueError: wrong rank, channels or size, an empty batch, NaN / Inf, floats outside [0, 1].
        """
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        if output not in ("uint8", "float32"):
            raise ValueError(f"output must be 'uint8' or 'float32', got {output!r}")
        single = False
        if isinstance(faces, (list, tuple)):
            if not faces:
                raise ValueError("expected at least one face, got an empty list")
            batch: np.ndarray | list[np.ndarray] = [_checked(face, f"faces[{i}]", 3) for i, face in enumerate(faces)]
        else:
            array = _checked(faces, "faces", None)
            single = array.ndim == 3
            batch = array[None] if single else array
        count = len(batch)
        result = np.empty((count, HR_SIZE, HR_SIZE, 3), dtype=np.uint8 if output == "uint8" else np.float32)
        for start in range(0, count, self._run_faces):
            chunk = batch[start:start + self._run_faces]
            lr = _to_network_input(chunk, channel_order == "bgr")
            sr = self._session.run([self._output_name], {self._input_name: lr})[0]
            _to_images(sr, result[start:start + len(chunk)], channel_order == "bgr")
        return result[0] if single else result


def _checked(faces: Any, what: str, rank: int | None) -> np.ndarray:
    """``faces`` as an array of checked rank, dtype, size and values (a copy only where needed)."""
    try:
        array = np.asarray(faces)
    except Exception as error:
        raise TypeError(f"{what}: expected a numpy array of faces, got {type(faces).__name__}") from error
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{what}: expected uint8 (0..255) or floating point ([0, 1]) pixels, got dtype "
                        f"{array.dtype} ({type(faces).__name__})")
    ranks = (rank,) if rank else (3, 4)
    if array.ndim not in ranks:
        wanted = "(H, W, 3)" if rank == 3 else "(H, W, 3) or (N, H, W, 3)"
        raise ValueError(f"{what}: expected {wanted} faces, got a {array.ndim}-D array of shape {array.shape}")
    if array.shape[-1] != 3:
        raise ValueError(f"{what}: expected 3 colour channels last, got shape {array.shape}")
    if array.ndim == 4 and array.shape[0] == 0:
        raise ValueError(f"{what}: expected at least one face, got an empty batch of shape {array.shape}")
    height, width = array.shape[-3:-1]
    if height != width:
        raise ValueError(f"{what}: faces must be square crops aligned to the template (see iafsr_sdk.align), "
                         f"got {height}×{width}")
    if not 1 <= height <= MAX_FACE_SIDE:
        raise ValueError(f"{what}: face side must be 1..{MAX_FACE_SIDE} pixels, got {height}×{width}; "
                         "pass aligned low-resolution face crops, not photos")
    if array.dtype != np.uint8:
        if not np.isfinite(array).all():
            raise ValueError(f"{what}: faces contain NaN or Inf")
        low, high = float(array.min()), float(array.max())
        if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
            raise ValueError(f"{what}: floating point faces must be in [0, 1], got values in [{low:g}, {high:g}]"
                             " (for 0..255 pixels pass uint8)")
    return array


def _to_lr_float(faces: np.ndarray) -> np.ndarray:
    """(n, s, s, 3) faces → (n, 16, 16, 3) float32 in [0, 1], by the shared resize rule."""
    if faces.shape[1] != LR_SIZE:
        faces = resize(faces, LR_SIZE)
    if faces.dtype == np.uint8:
        return faces.astype(np.float32) / np.float32(255)
    return np.clip(faces, 0.0, 1.0, dtype=np.float32)


def _to_network_input(chunk: np.ndarray | list[np.ndarray], bgr: bool) -> np.ndarray:
    """A chunk of checked faces → contiguous float32 NCHW RGB 16×16 in [0, 1]."""
    if isinstance(chunk, list):
        lr = np.stack([_to_lr_float(face[None])[0] for face in chunk])
    else:
        lr = _to_lr_float(chunk)
    if bgr:
        lr = lr[..., ::-1]
    return np.ascontiguousarray(lr.transpose(0, 3, 1, 2))


def _to_images(sr: np.ndarray, out: np.ndarray, bgr: bool) -> None:
    """float32 NCHW RGB network output → ``out`` (n, 128, 128, 3) uint8 or float32, clipped.

    Works in place on ``sr`` (a fresh array from onnxruntime) and moves one channel at a time: a single
    NCHW → NHWC transposing copy is several times slower (measured in benchmarks/enhancer.py).
    """
    if out.dtype == np.uint8:
        np.multiply(sr, np.float32(255), out=sr)
        np.clip(sr, 0, 255, out=sr)
        np.rint(sr, out=sr)
    else:
        np.clip(sr, 0, 1, out=sr)
    planes = sr.reshape(sr.shape[0], 3, -1)
    pixels = out.reshape(out.shape[0], -1, 3)
    for channel in range(3):
        np.copyto(pixels[:, :, channel], planes[:, 2 - channel if bgr else channel], casting="unsafe")
