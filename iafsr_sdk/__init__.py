from ._ext import build_info, cuda_available, ExtensionNotBuiltError, CudaUnavailableError
from . import ops
