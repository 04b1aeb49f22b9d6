"""The two-stage trainer: one entry point, ``train_stage``, for pre-training and fine-tuning.

Stage ``pretrain`` aligns images with dense captions (text branch without the decoder). Stage
``finetune`` aligns images with sparse captions through the decoder and distils a frozen copy of
the stage's initial model (the pre-trained dense-caption text encoder) into the sparse embedding.
The checkpoint is chosen on the validation split only; the test split is never seen here.

Resuming: the last epoch is checkpointed with the optimiser; every source of randomness is a
function of ``(runtime.seed, epoch)`` (data order, augmentation, dropout), so a run resumed at an
epoch boundary ends with the same weights as an uninterrupted one. A damaged ``last`` checkpoint
(or a damaged ``best`` that it points to) is set aside as ``*.damaged`` with one warning naming it,
and the stage restarts from epoch 0: ``best`` holds no optimiser state, so resuming from it would
give other weights than an uninterrupted run under the same stage hash.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from core.checkpoint import (
    DamagedCheckpoint,
    checkpoint_problem,
    load_checkpoint,
    load_weights,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from core.config import Config, ModelConfig, OptimConfig, StageConfig
from core.data import Collator, PairDataset, Split, build_splits
from core.errors import UserError
from core.evaluate import evaluate
from core.files import DAMAGED
from core.losses import build_losses
from core.model import D2SVSE, build_model
from core.runtime import autocast_dtype, init_distributed, seed_everything, world
from core.stages import BEST_CHECKPOINT, LAST_CHECKPOINT, STAGES, TrainingStage
from core.teachers import build_teachers

__all__ = [
    "Event",
    "StageResult",
    "NonFiniteLoss",
    "train_stage",
    "lr_factor",
    "load_model",
]

log = logging.getLogger(__name__)

# One epoch, in bare names (the harness names them for its store): ``{"train": {"loss", <loss
# term>..., "pairs_per_s"}, "lr": float, "val": {<metric>...}}`` (``val`` on validated epochs)
EpochRecord = dict[str, Any]


@dataclass(frozen=True)
class Event:
    """What the trainer reports: ``kind="step"`` every ``runtime.log_every_steps`` steps (the
    step's ``{"train": {"loss"}}``), ``kind="epoch"`` after each epoch (its :data:`EpochRecord`)."""

    kind: Literal["step", "epoch"]
    stage: TrainingStage
    epoch: int
    step: int
    steps_per_epoch: int
    metrics: EpochRecord


@dataclass
class StageResult:
    stage: TrainingStage
    out_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[EpochRecord] = field(default_factory=list)  # one record per epoch
    checkpoint_seconds: float = 0.0  # time spent writing checkpoints (harness overhead benchmark)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf (the run fails; its traceback names the step)."""


# ------------------------------------------------------------------------------------ schedule
def _step_schedule(optim: OptimConfig, epoch: float, total: int) -> float:
    return optim.decay_factor ** sum(epoch >= e for e in optim.decay_epochs)


def _cosine_schedule(optim: OptimConfig, epoch: float, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch / max(total, 1), 1.0)))


def _constant_schedule(optim: OptimConfig, epoch: float, total: int) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[[OptimConfig, float, int], float]] = {
    "step": _step_schedule,
    "cosine": _cosine_schedule,
    "constant": _constant_schedule,
}


def lr_factor(optim: OptimConfig, epoch: float, total_epochs: int) -> float:
    """Multiplier of the base learning rate at fractional ``epoch`` (a pure function).

    Args:
        optim: the stage's optimiser section (schedule, decay epochs/factor, warm-up).
        epoch: epochs completed so far, fractional within an epoch.
        total_epochs: the stage's length (cosine).
    """
    warmup = min(1.0, epoch / optim.warmup_epochs) if optim.warmup_epochs > 0 else 1.0
    return warmup * SCHEDULES[optim.schedule](optim, epoch, total_epochs)


# ------------------------------------------------------------------------------------- helpers
def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % 2**63


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This process's share of each global batch of a seeded permutation (last partial dropped,
    as a one-sample batch has no negatives). Rank r takes the r-th slice, so the gathered batch
    equals the one-process batch."""
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=generator).tolist()
    per_rank = batch_size // world
    batches = []
    for start in range(0, n - batch_size + 1, batch_size):
        batch = order[start : start + batch_size]
        batches.append(batch[rank * per_rank : (rank + 1) * per_rank])
    return batches


def _to_device(tokens: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in tokens.items()}


def _stage_model(config: Config, stage: TrainingStage) -> ModelConfig:
    """The stage's model: without the decoder where its description says so (pre-training embeds
    dense text without it, so its weights, validation and checkpoint never depend on the decoder
    settings it shares across arms)."""
    if STAGES[stage].decoder:
        return config.model
    return config.model.model_copy(update={"decoder": config.model.decoder.model_copy(update={"depth": 0})})


def load_model(config: Config, checkpoint: Path, device: torch.device | str = "cpu") -> D2SVSE:
    """Build the model of ``config`` for the stage that wrote ``checkpoint`` and load its weights."""
    tensors, meta = load_checkpoint(Path(checkpoint))
    model = build_model(_stage_model(config, meta["stage"]))
    load_weights(model, tensors, "model.")
    return model.to(device)


# --------------------------------------------------------------------------------------- train
def train_stage(
    config: Config,
    stage: TrainingStage,
    out_dir: Path,
    init_from: Path | None = None,
    callback: Callable[[Event], None] | None = None,
    splits: dict[str, Split] | None = None,
    cache_dir: Path | None = None,
) -> StageResult:
    """Train one stage, selecting the checkpoint on the validation split.

    Args:
        config: the resolved config; reads ``config.<stage>``, ``model``, ``data``, ``eval``, ``runtime``.
        stage: ``"pretrain"`` (images <-> dense captions) or ``"finetune"`` (images <-> sparse
            captions + distillations).
        out_dir: where ``last``/``best`` checkpoints and ``config.yaml`` go; an existing ``last``
            checkpoint is resumed from.
        init_from: checkpoint file to start from (fine-tuning: the pre-training's best); its
            frozen copy is the teacher of the distillation losses.
        callback: receives :class:`Event` records (progress, logging).
        splits: prepared data splits; built from ``config.data`` under ``cache_dir`` when omitted.
        cache_dir: the data cache folder (when ``splits`` is omitted).
    """
    section: StageConfig = getattr(config, stage)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    device = init_distributed(config.runtime.device)  # joins a launcher's process group (torchrun)
    rank, world_size = world()
    if section.batch_size % world_size:
        raise UserError(f"{stage}.batch_size={section.batch_size} is not divisible by {world_size} processes")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.runtime.tf32
        torch.backends.cudnn.allow_tf32 = config.runtime.tf32
    splits = splits if splits is not None else build_splits(config.data, Path(cache_dir or out_dir / "data"))
    emit = callback or (lambda event: None)

    seed_everything(config.runtime.seed)
    model = build_model(_stage_model(config, stage)).to(device)
    if init_from is not None:  # a pre-trained checkpoint has no decoder: it starts fresh here
        load_weights(model, load_checkpoint(Path(init_from))[0], "model.", optional=("decoder.",))
    losses = build_losses(section).to(device)
    spec = STAGES[stage]
    # frozen teachers: the model as the stage received it (after pre-training: the dense text
    # encoder), and the unimodal backbones structure-aware distillation names
    teachers = build_teachers(model, section)

    dataset = PairDataset(splits["train"], config.data, text=spec.captions, train=True, seed=config.runtime.seed)
    if "distill" in losses and splits["train"].dense is None:
        raise UserError(
            f"{stage}: distillation needs dense captions for the train split; set data.dense_captions"
        )
    text_cfg = config.model.text
    # pre-training's captions are the dense ones: they get the dense length
    caption_length = text_cfg.dense_max_length if spec.captions == "dense" else text_cfg.max_length
    collate = Collator(model.tokenizer, caption_length, config.data.text_augment, text_cfg.dense_max_length)
    groups = model.param_groups(section.optim) + [
        {"params": [p for p in losses.parameters() if p.requires_grad], "lr_mult": 1.0, "weight_decay": 0.0}
    ]
    groups = [g for g in groups if g["params"]]
    # fused kernels exist for CUDA and CPU; on CPU 20x faster than the per-tensor loop (5 M params)
    fused = config.runtime.fused_adamw and device.type in ("cuda", "cpu")
    optimizer = torch.optim.AdamW(groups, lr=section.optim.lr, weight_decay=section.optim.weight_decay, fused=fused)
    amp_dtype = autocast_dtype(config.runtime.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model

    history: list[EpochRecord] = []
    checkpoint_seconds = 0.0
    best_epoch, best_score, best_metrics, start_epoch = -1, -math.inf, {}, 0
    resume = _resume_point(out_dir, stage, device)
    if resume is not None:
        tensors, meta = resume
        load_weights(model, tensors, "model.")
        load_weights(losses, tensors, "loss.")
        optimizer_from_flat(optimizer, tensors, meta["optimizer"])
        start_epoch, history = meta["epoch"] + 1, meta["history"]
        best_epoch, best_score, best_metrics = meta["best_epoch"], meta["best_score"], meta["best_metrics"]

    steps_per_epoch = len(_epoch_batches(len(dataset), section.batch_size, 0, 0, 0, 1))
    if steps_per_epoch == 0:
        raise UserError(f"{stage}: train split has {len(dataset)} pairs, fewer than batch_size={section.batch_size}")
    for epoch in range(start_epoch, section.epochs):
        model.train()
        torch.manual_seed(_epoch_seed(config.runtime.seed, epoch))  # dropout etc. per epoch
        dataset.set_epoch(epoch)
        batches = _epoch_batches(len(dataset), section.batch_size, config.runtime.seed, epoch, rank, world_size)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=collate,
            num_workers=config.data.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        sums: dict[str, float] = {}
        started, pairs = time.perf_counter(), 0
        for step, batch in enumerate(loader):
            # lr: a pure function of fractional epoch, times each group's multiplier
            factor = lr_factor(section.optim, epoch + step / steps_per_epoch, section.epochs)
            for group in optimizer.param_groups:
                group["lr"] = section.optim.lr * group["lr_mult"] * factor
            images = batch["image"].to(device, non_blocking=True)
            texts = _to_device(batch["text"], device)
            image_ids = batch["image_index"].to(device)
            progress = epoch + step / steps_per_epoch
            # forward: named embeddings from the student, and from the frozen teachers when needed
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                emb = ddp_model(images, texts, decoder=spec.decoder)
                taught = teachers(batch, images) if teachers is not None else {}
            image, text = emb["image"].float(), emb["text"].float()
            # loss terms: each enabled loss reads its named inputs and returns named terms
            terms = losses(image=image, text=text, image_ids=image_ids, progress=progress, **taught)
            loss = sum(terms.values())
            # backward, clip, step
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if section.optim.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), section.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            # log: running sums stay on the device; reading them (a host sync) happens only at log
            # steps and epoch ends, where a non-finite sum fails the stage before anything is saved
            pairs += images.shape[0] * world_size
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + value.detach()
            if (step + 1) % config.runtime.log_every_steps == 0:
                _check_finite(sums, stage, epoch, step)
                emit(Event("step", stage, epoch, step + 1, steps_per_epoch, {"train": {"loss": float(loss.detach())}}))
        _check_finite(sums, stage, epoch, steps_per_epoch - 1)
        elapsed = time.perf_counter() - started
        train = {name: float(total) / steps_per_epoch for name, total in sums.items()}
        train["pairs_per_s"] = pairs / max(elapsed, 1e-9)
        record: dict[str, Any] = {"train": train, "lr": section.optim.lr * lr_factor(section.optim, epoch, section.epochs)}
        if (epoch + 1) % config.eval.every_epochs == 0 or epoch + 1 == section.epochs:
            val = evaluate(model, splits["val"], config, device=device)
            record["val"] = dict(val.metrics)
            score = val.metrics[config.eval.select_metric]
            if score > best_score:
                best_epoch, best_score, best_metrics = epoch, score, dict(val.metrics)
                if rank == 0:
                    saving = time.perf_counter()
                    save_checkpoint(out_dir / BEST_CHECKPOINT, _weights(model, losses), {"stage": stage, "epoch": epoch, "metrics": best_metrics})
                    checkpoint_seconds += time.perf_counter() - saving
        history.append(record)
        if rank == 0:
            saving = time.perf_counter()
            optim_tensors, optim_meta = optimizer_to_flat(optimizer)
            meta = {
                "stage": stage,
                "epoch": epoch,
                "history": history,
                "best_epoch": best_epoch,
                "best_score": best_score,
                "best_metrics": best_metrics,
                "optimizer": optim_meta,
            }
            save_checkpoint(out_dir / LAST_CHECKPOINT, {**_weights(model, losses), **optim_tensors}, meta)
            checkpoint_seconds += time.perf_counter() - saving
        emit(Event("epoch", stage, epoch, steps_per_epoch, steps_per_epoch, record))
    if best_epoch < 0:  # zero epochs: the initial model is the stage's output
        best_metrics = evaluate(model, splits["val"], config, device=device).metrics
        best_epoch = 0
        if rank == 0:
            save_checkpoint(out_dir / BEST_CHECKPOINT, _weights(model, losses), {"stage": stage, "epoch": -1, "metrics": best_metrics})
    return StageResult(stage, out_dir, best_epoch, best_metrics, history, checkpoint_seconds)


def _resume_point(out_dir: Path, stage: TrainingStage, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The ``last`` checkpoint to resume from, or None: none yet, or a damaged one (set aside).

    On several processes every rank reads the files, then they agree: all resume, or all restart
    (one rank finding damage restarts every rank), and only rank 0 sets the files aside, once no
    rank is still reading them.
    """
    resume, damage = None, None
    if (out_dir / LAST_CHECKPOINT).is_file():
        try:
            tensors, meta = load_checkpoint(out_dir / LAST_CHECKPOINT)
            problem = checkpoint_problem(out_dir / BEST_CHECKPOINT) if meta["best_epoch"] >= 0 else None
            if problem is not None:
                raise DamagedCheckpoint(out_dir / BEST_CHECKPOINT, problem)
            resume = tensors, meta
        except DamagedCheckpoint as err:
            damage = str(err)
    rank, world_size = world()
    if world_size > 1:
        import torch.distributed as dist

        # [cannot resume, found damage], max over the ranks
        flags = torch.tensor([resume is None, damage is not None], dtype=torch.int32, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0]:
            resume = None
        if flags[1] and damage is None:
            damage = "another rank found the checkpoint damaged"
    if damage is not None and rank == 0:
        for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
            for path in (out_dir / name, (out_dir / name).with_suffix(".json")):
                if path.exists():
                    os.replace(path, path.with_name(path.name + DAMAGED))
        log.warning("%s; %s stage %s restarts from epoch 0 (damaged files kept as *%s)", damage, stage, out_dir.name, DAMAGED)
    return resume


def _check_finite(sums: dict[str, torch.Tensor], stage: TrainingStage, epoch: int, step: int) -> None:
    if not math.isfinite(float(sums["loss"])):
        terms = {name: float(total) for name, total in sums.items()}
        raise NonFiniteLoss(f"{stage}: loss became non-finite in epoch {epoch} by step {step} (summed terms: {terms})")


def _weights(model: torch.nn.Module, losses: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        **{f"model.{k}": v for k, v in model.state_dict().items()},
        **{f"loss.{k}": v for k, v in losses.state_dict().items()},
    }
