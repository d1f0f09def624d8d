"""Benchmarks of the SDK, each printing ratios against a baseline run in the same process."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("benchmarks")


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def write_results(results: dict, path: Path | None) -> None:
    """Record the load average after the run and, with ``path``, write ``results`` there as JSON."""
    results["machine"]["load_average_after"] = load_average()
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        log.info("wrote %s", path)
