"""Two-stage training of the face SR generator and its baselines.

    python -m training.train --config training/configs/stage1.toml --out runs/stage1
    python -m training.train --config training/configs/iafsr.toml --out runs/iafsr \
        --init runs/stage1/generator.pt --publish weights/iafsr
    torchrun --nproc_per_node=8 -m training.train --config ... --recipe paper     # several processes / GPUs

A config (TOML) holds the loss weights and the schedule; its ``[cpu]`` and ``[paper]`` tables override
the schedule for the 2-core CPU recipe and for the paper's recipe (``--recipe``), and ``--set KEY=VALUE``
overrides any value, so a sweep needs no copied config files. The run is named after its ``--out`` folder:
that name is the generator's ``method``, and the published ``config.toml`` is the effective config. Stage 1 trains with the
pixel loss only; stage 2 starts from stage-1 weights with the method's loss. Work is checkpointed in
``--out`` every ``checkpoint_every`` steps, on SIGTERM/SIGINT and at ``--until STEP`` (a run trained in
several sittings); running the same command again resumes exactly where it stopped. The selected generator (EMA weights of a trained step, never the starting point:
best validation mean cosine between F(SR) and F(HR)) is written to ``<out>/generator.pt`` and, with
``--publish DIR``, copied there with the config and the log.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from training import losses
from training.data import DEFAULT_CACHE, load_set, split_pool, training_rows
from training.models import Discriminator, Generator, load_generator, save_generator
from training.resample import degrade

log = logging.getLogger("training.train")


@dataclasses.dataclass
class Config:
    name: str  # the run's name: its --out folder
    stage: int = 1
    edge_shift: bool = False  # translate training faces so that real content reaches the image edges
    epochs: float = 1.0
    steps: int = 0  # when > 0, overrides epochs
    batch_size: int = 32
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 0
    pixel_weight: float = 1.0
    cos_weight: float = 0.0
    magnitude_weight: float = 0.0
    euclid_weight: float | str = 0.0  # or "auto:B": pulls like B·(1 − cos) at the pool's mean ‖F(HR)‖²
    adversarial_weight: float = 0.0
    disc_lr: float = 1e-4
    disc_channels: int = 64
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 25
    validate_every: int = 500
    checkpoint_every: int = 250
    snapshot_every: int = 0  # when > 0, EMA weights also go to <out>/snapshots/ for learning curves
    channels_last: bool = True
    bf16: bool = False  # generator (and discriminator) under bfloat16 autocast where the device has native bf16

    @property
    def uses_identity(self) -> bool:
        return bool(self.cos_weight or self.magnitude_weight or self.euclid_weight)


def read_config(path: Path, recipe: str, overrides: dict, name: str) -> Config:
    raw = tomllib.loads(Path(path).read_text())
    recipes = {key: raw.pop(key) for key in ("cpu", "paper") if key in raw}
    raw.update(recipes.get(recipe, {}))
    raw.update(overrides)
    if "name" in raw:
        raise ValueError(f"{path}: a run is named by its --out folder, not by a 'name' key")
    return Config(name=name, **raw)


def config_toml(config: Config, source: Path, recipe: str, overrides: list[str]) -> str:
    """The effective config as TOML: what the run trained with, whatever file and --set it came from."""
    lines = [f"# Effective config of run {config.name}: {source} with recipe {recipe}"
             + (f" and --set {' '.join(overrides)}" if overrides else "") + "."]
    for key, value in dataclasses.asdict(config).items():
        if key != "name":
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class Distributed:
    """Rank and world size from torchrun's environment; a single process otherwise."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


def lr_factor(config: Config, step: int, total: int) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def batch_rows(config: Config, train_rows: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and horizontal flips of global step ``step``: a pure function of the seed and the step, so a
    resumed run draws exactly the batches it would have drawn."""
    per_epoch = len(train_rows) // config.batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(len(train_rows))
    rows = train_rows[order[position * config.batch_size:(position + 1) * config.batch_size]]
    flips = np.random.default_rng([config.seed, epoch, position, 1]).random(len(rows)) < 0.5
    return rows, flips


# Translations (rows up, columns left) of the edge-shift variant, whole LR pixels so that the LR of a shifted
# face is the shifted LR. In the aligned UTKFace crops under 1 % of rows 0-19 is photo, under half of rows
# 0-28 and of the outer ~11 columns; the rest is masked out of the losses, so without these shifts the
# generator's output at the image edges is hardly supervised, while LFW and CelebA faces have content there.
EDGE_SHIFTS_Y = (0, 24, 40)
EDGE_SHIFTS_X = (-24, 0, 24)


def batch_shifts(config: Config, step: int, count: int) -> np.ndarray:
    """(count, 2) translations (dy, dx) of global step ``step``, a pure function of the seed and the step."""
    if not config.edge_shift:
        return np.zeros((count, 2), np.int64)
    rng = np.random.default_rng([config.seed, step, 2])
    return np.stack([rng.choice(EDGE_SHIFTS_Y, count), rng.choice(EDGE_SHIFTS_X, count)], axis=1)


def translate(images: torch.Tensor, shifts: np.ndarray, inverse: bool = False) -> torch.Tensor:
    """Each image moved up by dy rows and left by dx columns (back with ``inverse``), wrapping around."""
    if not shifts.any():
        return images
    moved = torch.empty_like(images)
    for index, (dy, dx) in enumerate(shifts.tolist()):
        moved[index] = images[index].roll((dy, dx) if inverse else (-dy, -dx), dims=(-2, -1))
    return moved


def translate_mask(mask: torch.Tensor, shifts: np.ndarray) -> torch.Tensor:
    """The validity mask of the translated faces: what wrapped around is no photo."""
    moved = translate(mask, shifts)
    for index, (dy, dx) in enumerate(shifts.tolist()):
        if dy:
            moved[index, :, mask.shape[-2] - dy:] = 0
        if dx > 0:
            moved[index, :, :, mask.shape[-1] - dx:] = 0
        elif dx < 0:
            moved[index, :, :, :-dx] = 0
    return moved


def to_tensor(faces: np.ndarray, masks: np.ndarray, flips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    hr = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float().div_(255)
    mask = torch.from_numpy(np.ascontiguousarray(masks)).unsqueeze(1).float()
    flip = torch.from_numpy(flips)
    hr[flip] = hr[flip].flip(-1)
    mask[flip] = mask[flip].flip(-1)
    return hr, mask


class Trainer:
    def __init__(self, config: Config, out: Path, init: Path | None, cache: Path, device: torch.device,
                 require_filter: bool = True):
        self.config, self.out, self.device = config, out, device
        self.dist = Distributed(device)
        torch.manual_seed(config.seed)
        pool = load_set("utkface", cache, in_memory=True)
        self.faces, self.masks = pool.faces, pool.masks
        self.train_rows, self.val_rows = split_pool(training_rows(cache, require_filter))
        per_epoch = len(self.train_rows) // config.batch_size
        if per_epoch < 1:
            raise ValueError(f"{len(self.train_rows)} training faces cannot fill a batch of {config.batch_size}")
        self.total_steps = config.steps or max(1, round(config.epochs * per_epoch))
        if config.batch_size % self.dist.world:
            raise ValueError(f"batch size {config.batch_size} is not divisible by {self.dist.world} processes")

        self.generator = Generator()
        if init is not None:
            self.generator.load_state_dict(load_generator(init)[0].state_dict())
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.bf16 = config.bf16 and native_bf16(device)
        if config.bf16 and not self.bf16:
            # Emulated bf16 is far slower than float32 (one stage-1 step: 34 s against 2.2 s on an AVX2 CPU).
            log.warning("bf16 autocast asked for, but %s has no native bfloat16 support: training in float32",
                        device)
        self.generator.to(device, memory_format=self.memory_format)
        self.ema = Generator().to(device, memory_format=self.memory_format)
        self.ema.load_state_dict(self.generator.state_dict())
        self.ema.requires_grad_(False).eval()
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=(0.9, 0.999))

        from training.recognizers.sface import load_sface

        self.recognizer = load_sface().to(device, memory_format=self.memory_format)
        # Stage 2 logs F's view of every method (‖F(SR)‖, ‖F(HR)‖, angle); stage 1 only validates.
        self.tracks_identity = config.stage == 2 or config.uses_identity
        if self.tracks_identity:
            self.hr_features = torch.from_numpy(hr_feature_cache(cache, self.recognizer, device))
            self.val_hr_features = self.hr_features[self.val_rows, 0]
        else:
            self.val_hr_features = self.embed_rows(self.val_rows)
        self.euclid_weight = self._euclid_weight()

        self.discriminator = None
        if config.adversarial_weight:
            self.discriminator = Discriminator(base_channels=config.disc_channels).to(
                device, memory_format=self.memory_format)
            self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=config.disc_lr,
                                                   betas=(0.9, 0.999))
        self.train_generator: torch.nn.Module = self.generator
        self.train_discriminator = self.discriminator
        if self.dist.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.train_generator = torch.nn.parallel.DistributedDataParallel(self.generator, device_ids=ids)
            if self.discriminator is not None:
                self.train_discriminator = torch.nn.parallel.DistributedDataParallel(self.discriminator,
                                                                                     device_ids=ids)
        self.step = 0
        self.best = {"val_cos": -math.inf, "step": -1}
        self.stop_requested = False

    @torch.no_grad()
    def embed_rows(self, rows: np.ndarray) -> torch.Tensor:
        """F(HR) of the given pool rows, unflipped (when the run needs no full cache)."""
        features = []
        for start in range(0, len(rows), 100):
            hr, _ = to_tensor(self.faces[rows[start:start + 100]], self.masks[rows[start:start + 100]],
                              np.zeros(len(rows[start:start + 100]), bool))
            features.append(self.recognizer(hr.to(self.device, memory_format=self.memory_format)).cpu())
        return torch.cat(features)

    def _euclid_weight(self) -> float:
        weight = self.config.euclid_weight
        if not (isinstance(weight, str) and weight.startswith("auto:")):
            return float(weight)
        # ‖a − b‖² = ‖a‖² + ‖b‖² − 2‖a‖‖b‖cos θ ≈ 2‖f‖²(1 − cos θ) when the norms agree: this weight makes
        # the Euclidean term pull as hard as B·(1 − cos θ) does at the pool's mean feature norm.
        mean_square = float((self.hr_features[self.train_rows, 0] ** 2).sum(1).mean())
        return float(weight.removeprefix("auto:")) / (2 * mean_square)

    # ---- checkpoints -------------------------------------------------------------------------------
    def state(self) -> dict:
        state = {
            "config": dataclasses.asdict(self.config),
            "step": self.step,
            "best": self.best,
            "generator": self.generator.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["disc_optimizer"] = self.disc_optimizer.state_dict()
        return state

    def check_in_sync(self) -> None:
        """All processes must hold the same weights; DDP keeps them so, this proves it at each checkpoint."""
        if self.dist.world == 1:
            return
        vector = torch.cat([p.detach().double().flatten() for p in self.generator.parameters()])
        summary = torch.stack([vector.sum(), (vector * vector).sum(), vector.abs().max()])
        gathered = [torch.zeros_like(summary) for _ in range(self.dist.world)]
        dist.all_gather(gathered, summary)
        if any(not torch.equal(gathered[0], other) for other in gathered[1:]):
            raise RuntimeError(f"processes diverged at step {self.step}: {[g.tolist() for g in gathered]}")
        if self.dist.main:
            log.info("step %d: the %d processes hold identical generator weights (in sync)", self.step,
                     self.dist.world)

    def save_checkpoint(self) -> None:
        self.check_in_sync()
        if self.dist.main:
            temporary = self.out / "checkpoint.pt.tmp"
            torch.save(self.state(), temporary)
            temporary.replace(self.out / "checkpoint.pt")
        self.dist.barrier()

    def resume(self) -> bool:
        path = self.out / "checkpoint.pt"
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=False)
        saved_config = dict(state["config"])
        if saved_config != dataclasses.asdict(self.config):
            raise ValueError(f"{path} was written with another config; use a new --out or the same config\n"
                             f"saved: {saved_config}\nnow:   {dataclasses.asdict(self.config)}")
        self.generator.load_state_dict(state["generator"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.best = state["step"], state["best"]
        log.info("resumed %s at step %d of %d", path, self.step, self.total_steps)
        return True

    # ---- one step ----------------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, np.ndarray]:
        rows, flips = batch_rows(self.config, self.train_rows, step)
        shifts = batch_shifts(self.config, step, len(rows))
        ranks = slice(self.dist.rank, None, self.dist.world)
        rows, flips, shifts = rows[ranks], flips[ranks], shifts[ranks]
        hr, mask = to_tensor(self.faces[rows], self.masks[rows], flips)
        hr_features = self.hr_features[rows, flips.astype(np.int64)].to(self.device) if self.tracks_identity \
            else None
        return hr.to(self.device, memory_format=self.memory_format), mask.to(self.device), hr_features, shifts

    def generator_forward(self, step: int) -> dict:
        """The batch of global step ``step`` and the generator's output on it."""
        hr, mask, f_hr, shifts = self.batch(step)
        # The generator sees the faces translated (by nothing unless edge_shift is on); F sees them aligned.
        shifted_hr, shifted_mask = translate(hr, shifts), translate_mask(mask, shifts)
        lr_faces = degrade(shifted_hr).contiguous(memory_format=self.memory_format)
        with self.autocast():
            shifted_sr = self.train_generator(lr_faces).float()
        return {"hr": hr, "mask": mask, "f_hr": f_hr, "shifts": shifts, "shifted_hr": shifted_hr,
                "shifted_mask": shifted_mask, "shifted_sr": shifted_sr}

    def identity_forward(self, batch: dict, grad: bool) -> torch.Tensor:
        """F(SR) of a batch from :meth:`generator_forward`. F sees the SR face with the photo's padding (and
        what wrapped around) taken from HR, so only real pixels carry identity."""
        shifts = batch["shifts"]
        sr = translate(batch["shifted_sr"], shifts, inverse=True)
        sr_mask = translate(batch["shifted_mask"], shifts, inverse=True)
        composite = sr * sr_mask + batch["hr"] * (1 - sr_mask)
        with torch.set_grad_enabled(grad):
            return self.recognizer(composite)

    def train_step(self, step: int) -> dict[str, float]:
        config = self.config
        factor = lr_factor(config, step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr * factor
        batch = self.generator_forward(step)
        shifted_hr, shifted_sr, f_hr = batch["shifted_hr"], batch["shifted_sr"], batch["f_hr"]
        metrics: dict[str, float] = {}

        if self.discriminator is not None:
            for group in self.disc_optimizer.param_groups:
                group["lr"] = config.disc_lr * factor
            # One forward over real and fake together: a DDP module may run only one forward per backward.
            with self.autocast():
                logits = self.train_discriminator(torch.cat([shifted_hr, shifted_sr.detach()])).float()
            real_logits, fake_logits = logits.chunk(2)
            d_loss = losses.discriminator_loss(real_logits, fake_logits)
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_optimizer.step()
            metrics["d_loss"] = d_loss.item()

        pixel = losses.pixel_loss(shifted_sr, shifted_hr, batch["shifted_mask"])
        total = config.pixel_weight * pixel
        metrics["pixel"] = pixel.item()
        if config.uses_identity or f_hr is not None and self.dist.main and self.logs_after(step + 1):
            f_sr = self.identity_forward(batch, grad=config.uses_identity)
            cos_term, magnitude_term = losses.identity_terms(f_sr, f_hr)
            metrics.update(cos_loss=cos_term.mean().item(), magnitude_loss=magnitude_term.mean().item(),
                           norm_sr=f_sr.norm(dim=1).mean().item(), norm_hr=f_hr.norm(dim=1).mean().item(),
                           angle_deg=torch.rad2deg(torch.acos((1 - cos_term).clamp(-1, 1))).mean().item())
            if config.cos_weight:
                total = total + config.cos_weight * cos_term.mean()
            if config.magnitude_weight:
                total = total + config.magnitude_weight * magnitude_term.mean()
            if self.euclid_weight:
                euclid = losses.euclidean_loss(f_sr, f_hr).mean()
                total = total + self.euclid_weight * euclid
                metrics["euclid"] = euclid.item()
        if self.discriminator is not None:
            with self.autocast():
                fake_logits = self.train_discriminator(shifted_sr).float()
            adversarial = losses.generator_adversarial_loss(fake_logits)
            total = total + config.adversarial_weight * adversarial
            metrics["adversarial"] = adversarial.item()

        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.update_ema()
        metrics.update(loss=total.item(), lr=config.lr * factor)
        return metrics

    def logs_after(self, step: int) -> bool:
        return step % self.config.log_every == 0 or step == self.total_steps

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for ema_param, param in zip(self.ema.parameters(), self.generator.parameters()):
            ema_param.lerp_(param, 1 - decay)
        for ema_buffer, buffer in zip(self.ema.buffers(), self.generator.buffers()):
            ema_buffer.copy_(buffer)

    # ---- validation --------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, generator: torch.nn.Module) -> dict[str, float]:
        generator.eval()
        totals = {"val_cos": 0.0, "val_magnitude_gap": 0.0, "val_norm_sr": 0.0, "val_psnr": 0.0}
        for start in range(0, len(self.val_rows), 100):
            rows = self.val_rows[start:start + 100]
            hr, mask = to_tensor(self.faces[rows], self.masks[rows], np.zeros(len(rows), bool))
            hr, mask = hr.to(self.device, memory_format=self.memory_format), mask.to(self.device)
            sr = generator(degrade(hr).contiguous(memory_format=self.memory_format)).clamp(0, 1)
            f_sr = self.recognizer(sr * mask + hr * (1 - mask))
            f_hr = self.val_hr_features[start:start + 100].to(self.device)
            cos_term, magnitude_term = losses.identity_terms_reference(f_sr, f_hr)
            squared = (((sr - hr) ** 2) * mask).flatten(1).sum(1) / (3 * mask.flatten(1).sum(1))
            totals["val_cos"] += float((1 - cos_term).sum())
            totals["val_magnitude_gap"] += float(magnitude_term.sum())
            totals["val_norm_sr"] += float(f_sr.norm(dim=1).sum())
            totals["val_psnr"] += float((-10 * torch.log10(squared.clamp_min(1e-10))).sum())
        generator.train(generator is self.generator)
        return {key: value / len(self.val_rows) for key, value in totals.items()}

    def maybe_validate(self, log_file) -> None:
        if not self.dist.main:
            return
        metrics = self.validate(self.ema)
        record = {"step": self.step, "samples": self.step * self.config.batch_size, **metrics}
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        log.info("validation at step %d: %s", self.step, {k: round(v, 4) for k, v in metrics.items()})
        # Step 0 is the starting point (for stage 2, the stage-1 weights): logged as a reference, never selected.
        if self.step > 0 and metrics["val_cos"] > self.best["val_cos"]:
            self.best = {"val_cos": metrics["val_cos"], "step": self.step}
            save_generator(self.out / "generator.pt", self.ema, self.generator_config())

    def generator_config(self) -> dict:
        return {"method": self.config.name, "stage": self.config.stage, "step": self.step,
                "samples": self.step * self.config.batch_size, "train_faces": int(len(self.train_rows))}

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self, until: int | None = None) -> None:
        """Train to the end, or only up to step ``until`` (then checkpoint and return)."""
        last_step = self.total_steps if until is None else min(until, self.total_steps)
        self.out.mkdir(parents=True, exist_ok=True)
        self.resume()
        self.generator.train()
        if self.discriminator is not None:
            self.discriminator.train()
        previous_handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        log_file = open(self.out / "log.jsonl", "a") if self.dist.main else None
        if self.dist.main and self.step == 0:
            log.info("%s: %d training faces, %d validation faces, %d steps of %d (%d processes), euclid weight %g",
                     self.config.name, len(self.train_rows), len(self.val_rows), self.total_steps,
                     self.config.batch_size, self.dist.world, self.euclid_weight)
            self.maybe_validate(log_file)
        progress = tqdm(total=self.total_steps, initial=self.step, desc=self.config.name, unit="step",
                        disable=not self.dist.main, dynamic_ncols=True)
        started, started_step = time.perf_counter(), self.step
        try:
            while self.step < last_step:
                metrics = self.train_step(self.step)
                self.step += 1
                progress.update(1)
                if self.dist.main and self.logs_after(self.step):
                    speed = (self.step - started_step) * self.config.batch_size / (time.perf_counter() - started)
                    record = {"step": self.step, "samples": self.step * self.config.batch_size,
                              "samples_per_s": speed, **metrics}
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    progress.set_postfix(loss=f"{metrics['loss']:.3g}", sps=f"{speed:.1f}")
                if self.step % self.config.validate_every == 0 or self.step == self.total_steps:
                    self.maybe_validate(log_file)
                if self.dist.main and self.config.snapshot_every and self.step % self.config.snapshot_every == 0:
                    (self.out / "snapshots").mkdir(exist_ok=True)
                    save_generator(self.out / "snapshots" / f"step_{self.step:06d}.pt", self.ema,
                                   self.generator_config())
                stop = self._agree_to_stop()
                if self.step % self.config.checkpoint_every == 0 or self.step == last_step or stop:
                    self.save_checkpoint()
                if stop:
                    log.info("stopped at step %d; run the same command to resume", self.step)
                    return
        finally:
            progress.close()
            if log_file is not None:
                log_file.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        if self.dist.main and self.step < self.total_steps:
            log.info("paused at step %d of %d; run the same command without --until to go on", self.step,
                     self.total_steps)
        elif self.dist.main:
            log.info("done: best validation mean cosine %.4f at step %d", self.best["val_cos"], self.best["step"])

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True

    def _agree_to_stop(self) -> bool:
        if self.dist.world == 1:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        dist.all_reduce(flag)
        return bool(flag.item())


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 runs natively on ``device`` (oneDNN's check on a CPU: AVX-512 or AMX), not emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def hr_feature_cache(cache: Path, recognizer: torch.nn.Module, device: torch.device) -> np.ndarray:
    """F(HR) of every UTKFace face, unflipped and flipped: (N, 2, 128) float32, computed once into
    ``<cache>/utkface/sface_hr.npy`` and shared by all runs."""
    path = Path(cache) / "utkface" / "sface_hr.npy"
    if path.exists():
        return np.load(path)
    pool = load_set("utkface", cache)
    features = np.zeros((len(pool.faces), 2, 128), np.float32)
    memory_format = next(recognizer.parameters()).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for start in tqdm(range(0, len(pool.faces), 128), desc="F(HR) cache", unit="batch"):
            rows = np.arange(start, min(start + 128, len(pool.faces)))
            hr, _ = to_tensor(pool.faces[rows], pool.masks[rows], np.zeros(len(rows), bool))
            hr = hr.to(device)
            if memory_format:
                hr = hr.contiguous(memory_format=torch.channels_last)
            features[rows, 0] = recognizer(hr).cpu().numpy()
            features[rows, 1] = recognizer(hr.flip(-1)).cpu().numpy()
    temporary = path.with_suffix(".tmp.npy")
    np.save(temporary, features)
    temporary.replace(path)
    return features


def keep_freed_memory() -> None:
    """Ask glibc's malloc to reuse freed memory instead of returning it to the kernel: a training step
    allocates the same large buffers every time, and fresh pages cost a page fault each (about a fifth of
    the CPU time of a step here). Costs about a gigabyte more resident memory."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None or os.uname().sysname != "Linux":
        return
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_max = -1, -4
    if libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1):
        log.info("malloc keeps freed memory for reuse (no mmap, no trimming)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True,
                        help="run folder (checkpoint, log, generator.pt); its name names the run")
    parser.add_argument("--init", type=Path, help="generator weights to start from (stage 2)")
    parser.add_argument("--recipe", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set steps=10")
    parser.add_argument("--until", type=int, metavar="STEP", help="stop (with a checkpoint) after this step")
    parser.add_argument("--publish", type=Path, help="copy generator.pt, config and log here at the end")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-identity-filter", action="store_true",
                        help="train without keep.txt (only for smoke tests on data without evaluation overlap)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    overrides = dict(item.split("=", 1) for item in args.set)
    config = read_config(args.config, args.recipe, {key: parse_value(value) for key, value in overrides.items()},
                         args.out.resolve().name)
    device = torch.device(args.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    trainer = Trainer(config, args.out, args.init, args.cache, device, require_filter=not args.no_identity_filter)
    try:
        trainer.run(args.until)
        if args.publish and trainer.dist.main and trainer.step >= trainer.total_steps:
            args.publish.mkdir(parents=True, exist_ok=True)
            shutil.copy(args.out / "generator.pt", args.publish / "generator.pt")
            (args.publish / "config.toml").write_text(config_toml(config, args.config, args.recipe, args.set))
            shutil.copy(args.out / "log.jsonl", args.publish / "log.jsonl")
            (args.publish / "run.json").write_text(json.dumps(
                {"config": dataclasses.asdict(config), "recipe": args.recipe, "init": str(args.init),
                 "device": str(device), "precision": "bfloat16" if trainer.bf16 else "float32",
                 "best": trainer.best, "total_steps": trainer.total_steps}, indent=2) + "\n")
            log.info("published %s", args.publish)
    finally:
        trainer.dist.close()


if __name__ == "__main__":
    main()
