import sys
from pathlib import Path

# `training` and `export` run from the checkout; `iafsr_sdk` must resolve to the installed
# package (with its compiled extension), so the checkout goes to the end of the path.
_root = str(Path(__file__).resolve().parent)
if _root not in sys.path:
    sys.path.append(_root)
