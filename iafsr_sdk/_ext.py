"""Loading of the compiled extension ``iafsr_sdk._C`` and what it reports about its build.

Importing this module never fails: when ``_C`` cannot be imported (for example in a source checkout that was
not built) a warning is logged and the kernels raise :class:`ExtensionNotBuiltError` when called.
"""
from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any, Dict, Optional

__all__ = [
    "CudaUnavailableError",
    "ExtensionNotBuiltError",
    "build_info",
    "cuda_available",
    "cuda_status",
    "extension",
]

_log = logging.getLogger(__name__)

_BUILD_HINT = (
    "install the package with `pip install .` (or `pip install -e .` for a development checkout) so that "
    "the extension is compiled"
)


class ExtensionNotBuiltError(ImportError):
    """The compiled extension ``iafsr_sdk._C`` is missing or failed to load."""


class CudaUnavailableError(RuntimeError):
    """A CUDA array was given or CUDA was asked for, but this build has no CUDA support, or CUDA has no
    usable driver or device, or the build has no code for this GPU. The message says which."""


_C: Optional[ModuleType]
_import_error: Optional[BaseException] = None
try:
    from . import _C  # type: ignore[attr-defined,no-redef]
except ImportError as error:  # missing, or built for another Python / platform
    _C = None
    _import_error = error
    _log.warning("iafsr_sdk._C is not available (%s); the kernels in iafsr_sdk.ops will raise "
                 "ExtensionNotBuiltError: %s", error, _BUILD_HINT)
else:
    _C._register_exceptions(CudaUnavailableError)

_threads = os.environ.get("IAFSR_NUM_THREADS", "").strip()
if _threads and not (_threads.isdigit() and int(_threads) > 0):
    _log.warning("IAFSR_NUM_THREADS=%r is not a positive integer and is ignored", _threads)


def extension() -> ModuleType:
    """The loaded ``_C`` module; raises :class:`ExtensionNotBuiltError` if it is not available."""
    if _C is None:
        raise ExtensionNotBuiltError(f"iafsr_sdk._C could not be imported ({_import_error}); {_BUILD_HINT}")
    return _C


def build_info() -> Dict[str, Any]:
    """How the extension was built, as recorded at build time.

    Keys: ``built`` (False when ``_C`` is missing; then also ``error``), ``version``, ``cuda`` (CUDA kernels
    compiled in), ``cuda_version`` (CUDA runtime linked statically, e.g. ``"13.0"``, or None), ``cuda_archs``
    (e.g. ``["sm_80", "sm_90", "compute_90"]``), ``cudart``, ``compiler``, ``cxx_flags``, ``nvcc``,
    ``nvcc_flags``, and at run time ``cpu_simd`` (vector ISA of the CPU score kernel) and ``cpu_threads``.
    """
    if _C is None:
        return {"built": False, "error": str(_import_error), "cuda": False}
    info: Dict[str, Any] = {"built": True, **_C.build_info()}
    info["cuda_archs"] = info["cuda_archs"].split()
    info["cpu_simd"] = _C.simd_level()
    info["cpu_threads"] = _C.num_threads()
    return info


def cuda_available() -> bool:
    """True when the extension was built with CUDA and a CUDA driver and device are usable."""
    return _C is not None and _C.cuda_device_count() > 0


def cuda_status() -> str:
    """One line saying whether CUDA is usable, and why not."""
    if _C is None:
        return f"unavailable: the extension is not built ({_import_error})"
    return str(_C.cuda_status())
