"""How the int8 model was chosen: quantization variants of the fp32 graph, measured on held-out faces.

    python -m export.int8_study --weights weights/iafsr_shift_long/generator.pt [--out int8_study.md]

Every variant is calibrated on the same faces as the shipped int8 file (``export.generator.calibration_faces``)
and scored on the validation split of the UTKFace pool (the 500 faces training holds out for model selection;
never LFW or CelebA), against the fp32 graph: mean and largest absolute difference of the uint8 outputs (levels
of 255), PSNR, the mean cosine between SFace features of the int8 and the fp32 faces, and the change of the
validation mean cos(F(SR), F(HR)), the score training selects its weights on. Variants: calibration method and
activation type with every convolution in int8, one layer group at a time in int8 (the sensitivity of each),
and the candidate sets of int8 layers. Each row is logged as it comes; ``--out`` writes the table (Markdown).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from export import generator as ex
from iafsr_sdk.faces import degrade
from training.data import DEFAULT_CACHE, load_set, split_pool, training_rows
from training.models import load_generator

log = logging.getLogger("export.int8_study")

GROUPS = ("head", "blocks", "fuse", "upsample.0", "upsample.1", "upsample.2", "tail")
# (label, method, activations, layer groups in int8)
VARIANTS = [
    ("all int8, MinMax", "minmax", "uint8", GROUPS),
    ("all int8, Entropy", "entropy", "uint8", GROUPS),
    ("all int8, Percentile", "percentile", "uint8", GROUPS),
    ("all int8, Percentile, int8 activations", "percentile", "int8", GROUPS),
    *[(f"only {group} int8", "percentile", "uint8", (group,)) for group in GROUPS],
    ("upsample.1, upsample.2, tail int8, MinMax", "minmax", "uint8", ("upsample.1", "upsample.2", "tail")),
    ("upsample.1, upsample.2, tail int8, Entropy", "entropy", "uint8", ("upsample.1", "upsample.2", "tail")),
    ("upsample.1, upsample.2, tail int8, Percentile (shipped)", "percentile", "uint8",
     ("upsample.1", "upsample.2", "tail")),
    ("upsample.0–2, tail int8", "percentile", "uint8", ("upsample.0", "upsample.1", "upsample.2", "tail")),
    ("upsample.1, upsample.2 int8", "percentile", "uint8", ("upsample.1", "upsample.2")),
]


def run(model, lr_nchw: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {ex.INPUT_NAME: lr_nchw[i:i + 50]})[0] for i in range(0, len(lr_nchw), 50)])


def to_uint8(sr: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(sr, 0, 1) * 255).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, help="write the table here (Markdown)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from training.recognizers.sface import load_sface

    fp32 = ex.export_fp32(load_generator(args.weights)[0])
    calibration = ex.to_nchw(ex.calibration_faces(args.cache)[0])
    _, validation_rows = split_pool(training_rows(args.cache))
    hr = np.asarray(load_set("utkface", args.cache).faces[validation_rows])
    lr = ex.to_nchw(degrade(hr))
    sface = load_sface()

    def features(uint8_nchw: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return sface(torch.from_numpy(uint8_nchw / np.float32(255))).numpy()

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    reference = to_uint8(run(fp32, lr))
    f_reference, f_hr = features(reference), features(hr.transpose(0, 3, 1, 2).astype(np.float32))
    base = float(cosine(f_reference, f_hr).mean())
    all_convs = ex.float_conv_nodes(fp32, GROUPS)
    lines = [f"{len(hr)} validation faces of the UTKFace pool; fp32 validation mean cos(F(SR), F(HR)) {base:.4f}. "
             f"Calibration: {len(calibration)} faces of the training split.", "",
             "| variant | multiply-adds in int8 | mean abs. diff. (levels) | max | PSNR (dB) | "
             "cos(F(int8), F(fp32)) | Δ validation cos |", "| --- | --- | --- | --- | --- | --- | --- |"]
    macs = {node.name: mac for node, mac in zip((n for n in fp32.graph.node if n.op_type == "Conv"),
                                               _conv_multiply_adds(fp32))}
    with tempfile.TemporaryDirectory() as folder:
        for label, method, activations, groups in VARIANTS:
            float_layers = [group for group in GROUPS if group not in groups]
            int8 = ex.to_int8(fp32, calibration, method, activations, float_layers,
                              calibration_cache=Path(folder) / f"{method}.json")
            quantized = set(all_convs) - set(ex.float_conv_nodes(fp32, float_layers) if float_layers else [])
            share = sum(macs[name] for name in quantized) / sum(macs.values())
            outputs = to_uint8(run(int8, lr))
            difference = np.abs(outputs - reference)
            f_int8 = features(outputs)
            row = (f"| {label} | {100 * share:.0f} % | {difference.mean():.2f} | {difference.max():.0f} | "
                   f"{10 * np.log10(255 ** 2 / max(float((difference ** 2).mean()), 1e-12)):.1f} | "
                   f"{cosine(f_int8, f_reference).mean():.4f} | {1e3 * (cosine(f_int8, f_hr).mean() - base):+.2f}e-3 |")
            log.info("%s", row)
            lines.append(row)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        log.info("wrote %s", args.out)


def _conv_multiply_adds(model) -> list[int]:
    """Multiply-adds per face of each Conv node, in graph order, from a run that records output shapes."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    convs = [node for node in probe.graph.node if node.op_type == "Conv"]
    for node in convs:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.output[0]))
    names = [node.output[0] for node in convs]
    outputs = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        names, {ex.INPUT_NAME: np.zeros((1, 3, 16, 16), np.float32)})
    weights = {init.name: int(np.prod(init.dims[1:])) for init in model.graph.initializer}
    return [int(output.size) * weights[node.input[1]] for node, output in zip(convs, outputs)]


if __name__ == "__main__":
    main()
