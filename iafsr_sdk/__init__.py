"""iafsr: identity-aware super-resolution of tiny faces (16×16 → 128×128) for face recognition.

    from iafsr_sdk import FaceEnhancer
    sr_faces = FaceEnhancer().enhance(lr_faces)      # (N, 16, 16, 3) uint8 RGB → (N, 128, 128, 3) uint8

Faces must be aligned on the 5-point template (:func:`align`). :mod:`iafsr_sdk.ops` holds the compiled
kernels a recognition system needs beside it: ``match``, ``cosine_similarity``, ``l2_normalize``, ``quality``.
"""
from importlib.metadata import PackageNotFoundError, version as _version

from . import ops
from ._ext import CudaUnavailableError, ExtensionNotBuiltError, build_info, cuda_available
from .enhancer import FaceEnhancer, ModelFileError
from .faces import align, degrade, resize

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
    "ops",
    "build_info",
    "cuda_available",
    "ExtensionNotBuiltError",
    "CudaUnavailableError",
    "__version__",
]
