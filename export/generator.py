"""Export the generator to ONNX: an fp32 and an fp16 file and one model card for both.

    python -m export.generator --weights runs/iafsr/generator.pt --out iafsr_sdk/models/
    python -m export.generator --random-init --seed 0 --out iafsr_sdk/models/     # placeholder weights

The graph holds standard operators only: BatchNorm is folded into the convolutions, PixelShuffle is
``DepthToSpace`` (mode CRD) and PReLU slopes are shaped (C, 1, 1). The batch dimension is dynamic; height
and width are fixed at 16 in, 128 out.

Both files take and return float32 NCHW RGB in [0, 1] (output not clipped). The fp16 file stores weights and
computes in float16 between a Cast after the input and a Cast before the output, so callers feed the same
arrays to either file.

Before anything is written, both graphs are checked against torch on real LFW faces degraded to 16×16
(``tests/fixtures/sdk_lfw_lr16.npy``): fp32 within ``FP32_TOLERANCE``; fp16 within twice the error that
torch's own float16 run of the same weights makes against its float32 run (at least ``FP16_FLOOR``).
The card (``iafsr_generator.json``) records the measured errors, the sha256 of both files and the command.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import TensorProto, helper, numpy_helper

from iafsr_sdk.faces import HR_SIZE, LR_SIZE, TEMPLATE_128
from training.models import Generator, fold_batch_norm, load_generator, sha256_of

log = logging.getLogger("export.generator")

ROOT = Path(__file__).resolve().parents[1]
PARITY_FACES = ROOT / "tests" / "fixtures" / "sdk_lfw_lr16.npy"
OPSET = 18
INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
FP32_FILE = "iafsr_generator.onnx"
FP16_FILE = "iafsr_generator_fp16.onnx"
CARD_FILE = "iafsr_generator.json"
FP32_TOLERANCE = 1e-4
# A float16 value near 1 is exact to 2**-11 ≈ 4.9e-4; the bound never goes below that resolution.
FP16_FLOOR = 2.0**-11

TERMS = (
    "The shipped weights are for non-commercial research only: they inherit the terms of the face data "
    "they were trained on (UTKFace) and evaluated on (LFW, CelebA), which are distributed for non-commercial "
    "research. For other uses, retrain on data you hold the rights to with the same scripts "
    "(python -m training.prepare, python -m training.train) and export with python -m export.generator."
)
METHOD = (
    "Identity-Aware Face Super-Resolution (Chen et al., IEEE Signal Processing Letters 2020): an SRResNet "
    "generator trained first with a pixel loss, then with the pixel loss plus an identity loss on a frozen "
    "face recognizer's features: the cosine (angle) between F(SR) and F(HR) and the gap of their magnitudes."
)


def make_generator(weights: Path | None, seed: int) -> tuple[Generator, dict]:
    """The trained generator from ``weights``, or a randomly initialised one (placeholder) from ``seed``."""
    if weights is not None:
        generator, config = load_generator(weights)
        return generator, dict(config, weights_sha256=sha256_of(weights))
    torch.manual_seed(seed)
    generator = Generator().eval()
    return generator, {"placeholder": True, "seed": seed}


def multiply_adds_per_face(model: torch.nn.Module) -> int:
    """Multiply-adds of the convolutions and matrix products for one 16×16 face."""
    total = 0

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.weight[0].numel()  # in_channels × kh × kw
        total += output.numel() * kernel

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, LR_SIZE, LR_SIZE))
    for hook in hooks:
        hook.remove()
    return total


def _strip_export_metadata(model: onnx.ModelProto) -> None:
    # The exporter records stack traces with local paths on every node; they make the file depend on
    # where it was built and carry nothing a user needs.
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        del value.metadata_props[:]
    for initializer in model.graph.initializer:
        del initializer.metadata_props[:]
    del model.metadata_props[:]
    model.graph.doc_string = ""


def _squeeze_prelu_slopes(model: onnx.ModelProto) -> None:
    """Give every PReLU slope the shape (C, 1, 1), which broadcasts over NCHW in every runtime."""
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in initializers:
            continue
        slope = initializers[node.input[1]]
        dims = list(slope.dims)
        if len(dims) == 4 and dims[0] == 1:
            values = numpy_helper.to_array(slope).reshape(dims[1:])
            slope.CopyFrom(numpy_helper.from_array(values, slope.name))
    # Shapes recorded before the change would contradict it; let the checker infer them again.
    del model.graph.value_info[:]


def export_fp32(generator: Generator) -> onnx.ModelProto:
    """The BN-folded generator as an ONNX graph with a dynamic batch dimension."""
    folded = fold_batch_norm(generator).eval()
    example = torch.rand(2, 3, LR_SIZE, LR_SIZE)
    with warnings.catch_warnings():
        # The exporter's own deprecation notices are not about this model.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        program = torch.onnx.export(
            folded,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    model = program.model_proto
    _strip_export_metadata(model)
    _squeeze_prelu_slopes(model)
    model.producer_name = "iafsr export.generator"
    model.producer_version = ""
    onnx.checker.check_model(model, full_check=True)
    return model


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and compute, float32 input and output (a Cast at each end)."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    for initializer in graph.initializer:
        if initializer.data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(initializer).astype(np.float16)
            initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
    for node in graph.node:
        if node.op_type == "Constant" or node.op_type == "Cast":
            raise ValueError(f"unexpected {node.op_type} node in the generator graph: extend to_fp16")
    input_half, output_half = f"{INPUT_NAME}_fp16", f"{OUTPUT_NAME}_fp16"
    for node in graph.node:
        node.input[:] = [input_half if name == INPUT_NAME else name for name in node.input]
        node.output[:] = [output_half if name == OUTPUT_NAME else name for name in node.output]
    graph.node.insert(0, helper.make_node("Cast", [INPUT_NAME], [input_half], to=TensorProto.FLOAT16,
                                          name="cast_input_to_fp16"))
    graph.node.append(helper.make_node("Cast", [output_half], [OUTPUT_NAME], to=TensorProto.FLOAT,
                                       name="cast_output_to_fp32"))
    del graph.value_info[:]
    half = onnx.shape_inference.infer_shapes(half, strict_mode=True)
    onnx.checker.check_model(half, full_check=True)
    return half


def run_onnx(model: onnx.ModelProto, lr_nchw: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: lr_nchw})[0]


def parity_faces(path: Path = PARITY_FACES) -> np.ndarray:
    """Real LFW faces degraded to 16×16 as float32 NCHW in [0, 1]."""
    faces = np.load(path)
    return np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def check_parity(generator: Generator, fp32: onnx.ModelProto, fp16: onnx.ModelProto, lr_nchw: np.ndarray) -> dict:
    """Largest absolute differences against torch; raises if a bound is broken."""
    folded = fold_batch_norm(generator).eval()
    with torch.no_grad():
        reference = generator.eval()(torch.from_numpy(lr_nchw)).numpy()
        torch_half = folded.half()(torch.from_numpy(lr_nchw).half()).float().numpy()
    fp32_error = float(np.abs(run_onnx(fp32, lr_nchw) - reference).max())
    fp16_error = float(np.abs(run_onnx(fp16, lr_nchw) - reference).max())
    torch_half_error = float(np.abs(torch_half - reference).max())
    fp16_bound = max(2.0 * torch_half_error, FP16_FLOOR)
    report = {
        "faces": int(lr_nchw.shape[0]),
        "reference": "torch float32 eager, BatchNorm unfolded",
        "fp32_max_abs_error": fp32_error,
        "fp32_bound": FP32_TOLERANCE,
        "fp16_max_abs_error": fp16_error,
        "torch_fp16_max_abs_error": torch_half_error,
        "fp16_bound": fp16_bound,
        "fp16_bound_rule": "2 × torch's own float16 error vs float32 on the same faces, at least 2**-11",
    }
    log.info("parity on %d LFW faces: fp32 %.3g (bound %.0e), fp16 %.3g (bound %.3g; torch fp16 %.3g)",
             report["faces"], fp32_error, FP32_TOLERANCE, fp16_error, fp16_bound, torch_half_error)
    if not fp32_error <= FP32_TOLERANCE:
        raise RuntimeError(f"fp32 ONNX differs from torch by {fp32_error:.3g} > {FP32_TOLERANCE}")
    if not fp16_error <= fp16_bound:
        raise RuntimeError(f"fp16 ONNX differs from torch by {fp16_error:.3g} > {fp16_bound:.3g}")
    return report


def make_card(generator: Generator, config: dict, graph: onnx.ModelProto, parity: dict, command: str,
              metrics: dict | None) -> dict:
    placeholder = bool(config.get("placeholder", False))
    parameters = sum(p.numel() for p in fold_batch_norm(generator).parameters())
    training = (
        {"data": None, "seed": config.get("seed"), "note": f"PLACEHOLDER: randomly initialised with seed {config.get('seed')}, not trained. "
                               "Its output is not a face; it only exercises the runtime."}
        if placeholder
        else {"data": config.get("data", "UTKFace aligned & cropped subset, faces close to LFW/CelebA "
                                         "identities removed (results/pool_filter.md)"),
              "config": {k: v for k, v in config.items() if k != "weights_sha256"}}
    )
    return {
        "name": "iafsr_generator",
        "placeholder": placeholder,
        "summary": "Super-resolves aligned 16×16 faces to 128×128 (×8) for face recognition.",
        "architecture": {
            "type": "SRResNet generator (paper §II-B)",
            "head": "Conv 9×9 3→64 + PReLU",
            "residual_blocks": len(generator.blocks),
            "upsample_blocks": len(generator.upsample),
            "channels": 64,
            "tail": "Conv 9×9 64→3",
            "batch_norm": "folded into the preceding convolutions",
            "onnx_ops": sorted({node.op_type for node in graph.graph.node}),
            "opset": OPSET,
        },
        "parameters": int(parameters),
        "multiply_adds_per_face": int(multiply_adds_per_face(fold_batch_norm(generator))),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, LR_SIZE, LR_SIZE], "dtype": "float32",
                  "layout": "NCHW", "channels": "RGB", "range": "[0, 1] (uint8 / 255)"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", 3, HR_SIZE, HR_SIZE], "dtype": "float32",
                   "layout": "NCHW", "channels": "RGB", "range": "[0, 1] nominal, not clipped: clip before use"},
        "precision": {
            "fp32": "float32 weights and compute",
            "fp16": "float16 weights and compute, float32 input and output (Cast at both ends)",
        },
        "alignment": {
            "template": "ArcFace 5-point template scaled from 112 to 128: eye on the image's left, other eye, "
                        "nose tip, mouth corner on the image's left, other mouth corner",
            "points_128": [[round(float(v), 4) for v in point] for point in TEMPLATE_128],
            "warp": "similarity transform of the 5 detected landmarks onto the template (iafsr_sdk.align)",
            "low_resolution": "the 128×128 aligned crop resized to 16×16 by antialiased bicubic "
                              "(Pillow BICUBIC; iafsr_sdk.faces.degrade)",
        },
        "training": training,
        "terms": TERMS,
        "method": METHOD,
        "metrics": metrics,
        "export": {
            "command": command,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "source_weights_sha256": config.get("weights_sha256"),
            "parity": parity,
        },
    }


def _embed_card(model: onnx.ModelProto, card: dict, precision: str) -> None:
    entries = {key: value for key, value in card.items() if key != "files"}
    entries["precision"] = precision
    del model.metadata_props[:]
    for key, value in entries.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        model.metadata_props.add(key=key, value=text)
    model.doc_string = card["summary"] + (" PLACEHOLDER weights, not trained." if card["placeholder"] else "")


def export(generator: Generator, config: dict, out_dir: Path, command: str,
           metrics: dict | None = None, faces: Path = PARITY_FACES) -> dict:
    """Write the fp32 and fp16 ONNX files and the card into ``out_dir``; return the card."""
    fp32 = export_fp32(generator)
    fp16 = to_fp16(fp32)
    parity = check_parity(generator, fp32, fp16, parity_faces(faces))
    card = make_card(generator, config, fp32, parity, command, metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for precision, model, name in (("fp32", fp32, FP32_FILE), ("fp16", fp16, FP16_FILE)):
        _embed_card(model, card, precision)
        onnx.checker.check_model(model, full_check=True)
        path = out_dir / name
        onnx.save_model(model, path)
        files[precision] = {"file": name, "sha256": sha256_of(path), "bytes": path.stat().st_size}
        log.info("wrote %s (%.2f MB)", path, path.stat().st_size / 1e6)
    card["files"] = files
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    log.info("wrote %s", out_dir / CARD_FILE)
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export the generator to ONNX (fp32 + fp16) with a model card.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help="generator weights written by training (save_generator)")
    source.add_argument("--random-init", action="store_true", help="placeholder: randomly initialised weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    parser.add_argument("--out", type=Path, default=ROOT / "iafsr_sdk" / "models")
    parser.add_argument("--metrics", type=Path, help="JSON of evaluation results to put in the card")
    parser.add_argument("--faces", type=Path, default=PARITY_FACES, help="(N, 16, 16, 3) uint8 faces for parity")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)

    arguments = sys.argv[1:] if argv is None else argv
    command = "python -m export.generator " + " ".join(shlex.quote(a) for a in arguments)
    generator, config = make_generator(args.weights, args.seed)
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    export(generator, config, args.out, command, metrics, args.faces)


if __name__ == "__main__":
    main()
