"""The balance of the loss terms at the start of stage 2, measured as gradients, not guessed from loss values.

    python -m training.balance --init weights/stage1_shift_long/generator.pt \
        --config training/configs/iafsr_shift.toml [--batches 8] [--json results/balance.json]

For the first ``--batches`` batches of the stage-2 run that ``--config`` describes, from the weights ``--init``,
each term's gradient with respect to the generator's parameters is taken separately: the pixel term (eq. 3,
summed over the 128×128×3 pixels, the convention of every config here), the angle term 1 − cos θ (eq. 1) and
the magnitude term |‖F(SR)‖ − ‖F(HR)‖| (eq. 2), all unweighted. The terms enter the objective linearly, so the
gradient norm that a setting (α, β1, β2) sends into the generator through each term is the weight times the
norm reported here; ``balance_table`` turns that into each setting's ratios to the pixel term.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from training import losses
from training.data import DEFAULT_CACHE
from training.train import Trainer, read_config

log = logging.getLogger("training.balance")

PIXELS = 128 * 128 * 3  # the summed pixel term is this many times the per-pixel mean


def flat_gradient(term: torch.Tensor, parameters: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, parameters)])


def measure(trainer: Trainer, batches: int) -> dict:
    """Mean gradient norm of each unweighted term over the first ``batches`` steps, and the mean cosine
    between the pixel and the angle gradients."""
    parameters = [p for p in trainer.generator.parameters() if p.requires_grad]
    norms = {"pixel": [], "cos": [], "magnitude": []}
    values = {"pixel": [], "cos": [], "magnitude": []}
    alignment = []
    trainer.generator.train()
    for step in range(batches):
        batch = trainer.generator_forward(step)
        pixel = losses.pixel_loss(batch["shifted_sr"], batch["shifted_hr"], batch["shifted_mask"])
        cos_term, magnitude_term = losses.identity_terms(trainer.identity_forward(batch, grad=True), batch["f_hr"])
        terms = {"pixel": pixel, "cos": cos_term.mean(), "magnitude": magnitude_term.mean()}
        gradients = {name: flat_gradient(term, parameters) for name, term in terms.items()}
        for name in terms:
            norms[name].append(float(gradients[name].norm()))
            values[name].append(float(terms[name].detach()))
        alignment.append(float(torch.nn.functional.cosine_similarity(gradients["pixel"], gradients["cos"], dim=0)))
        log.info("batch %d: gradient norms %s", step, {name: round(v[-1], 4) for name, v in norms.items()})
    return {"batches": batches, "batch_size": trainer.config.batch_size,
            "grad_norm": {name: float(np.mean(v)) for name, v in norms.items()},
            "value": {name: float(np.mean(v)) for name, v in values.items()},
            "cos_pixel_angle_gradients": float(np.mean(alignment))}


def balance_table(measured: dict, settings: list[tuple[float, float]], pixel_weight: float = 1.0) -> list[dict]:
    """Per setting (β1, β2): the gradient norm each weighted term sends into the generator and its ratio to
    the pixel term's, and the share of each term in the objective's value."""
    norm, value = measured["grad_norm"], measured["value"]
    rows = []
    for cos_weight, magnitude_weight in settings:
        pixel_grad = pixel_weight * norm["pixel"]
        total_value = pixel_weight * value["pixel"] + cos_weight * value["cos"] + magnitude_weight * value["magnitude"]
        rows.append({"cos_weight": cos_weight, "magnitude_weight": magnitude_weight,
                     "pixel_grad": pixel_grad, "cos_grad": cos_weight * norm["cos"],
                     "magnitude_grad": magnitude_weight * norm["magnitude"],
                     "cos_to_pixel": cos_weight * norm["cos"] / pixel_grad,
                     "magnitude_to_pixel": magnitude_weight * norm["magnitude"] / pixel_grad,
                     "identity_share_of_value": (total_value - pixel_weight * value["pixel"]) / total_value})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="the stage-2 config whose batches are used")
    parser.add_argument("--init", type=Path, required=True, help="the stage-1 weights stage 2 starts from")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="write the measurement here")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Unit weights on both identity terms so that F(SR) is computed with its graph; the weights do not enter
    # the measured gradients.
    config = read_config(args.config, "cpu", {"cos_weight": 1.0, "magnitude_weight": 1.0, "bf16": False},
                         "balance")
    trainer = Trainer(config, Path("unused"), args.init, args.cache, torch.device("cpu"))
    measured = measure(trainer, args.batches)
    measured.update(init=str(args.init), config=str(args.config), edge_shift=config.edge_shift,
                    pixel_term="summed over 128x128x3 pixels (x%d the per-pixel mean)" % PIXELS)
    log.info("gradient norms: %s", measured["grad_norm"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(measured, indent=1) + "\n")


if __name__ == "__main__":
    main()
