"""The benchmark's helpers measure what they name (no timing is asserted)."""
from __future__ import annotations

import numpy as np

from benchmarks.enhancer import FACES, nchw, node_profile, tiled
from iafsr_sdk.enhancer import MODEL_FILES, _shipped_model_dir


def test_node_profile_lists_every_node_of_the_optimised_int8_graph():
    nodes = node_profile(_shipped_model_dir() / MODEL_FILES["int8"], nchw(tiled(np.load(FACES), 2)), threads=1,
                         calls=2)
    ops = {node["op"] for node in nodes}
    assert {"QLinearConv", "Conv", "DepthToSpace", "QLinearMul"} <= ops  # integer and float convolutions
    assert all(node["ms"] >= 0 for node in nodes) and sum(node["ms"] for node in nodes) > 0
    assert [node["ms"] for node in nodes] == sorted((node["ms"] for node in nodes), reverse=True)
