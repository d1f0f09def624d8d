"""iafsr: identity-aware super-resolution of tiny faces (16×16 → 128×128) for face recognition.

    from iafsr_sdk import FaceEnhancer
    sr_faces = FaceEnhancer().enhance(lr_faces)      # (N, 16, 16, 3) uint8 RGB → (N, 128, 128, 3) uint8

Faces must be aligned on the 5-point template (:func:`align`). :mod:`iafsr_sdk.ops` holds the compiled
kernels a recognition system needs beside it: ``match``, ``cosine_similarity``, ``l2_normalize``, ``quality``.
From a camera frame: :func:`find_faces` and :func:`enhance_frame` (:mod:`iafsr_sdk.detect`, loaded on first
use; detection needs the ``detect`` extra, OpenCV).
"""
from importlib.metadata import PackageNotFoundError, version as _version

from . import ops
from ._ext import CudaUnavailableError, ExtensionNotBuiltError, build_info, cuda_available
from .enhancer import FaceEnhancer, ModelFileError
from .faces import align, degrade, resize

# Names of iafsr_sdk.detect, imported on first access so that the package imports without OpenCV.
_DETECT_NAMES = ("find_faces", "enhance_frame", "FaceDetector", "crop_face")


def __getattr__(name: str):
    if name in _DETECT_NAMES:
        from . import detect

        return getattr(detect, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    __version__ = _version("iafsr")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "FaceEnhancer",
    "ModelFileError",
    "align",
    "degrade",
    "resize",
    *_DETECT_NAMES,
    "ops",
    "build_info",
    "cuda_available",
    "ExtensionNotBuiltError",
    "CudaUnavailableError",
    "__version__",
]
