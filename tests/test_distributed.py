"""Two CPU processes (gloo), each holding half of a global batch, train exactly like one process
holding all of it: same loss values, and after DDP's gradient averaging the same gradients; for
each loss alone, and through the trainer's own step (``core.train.train_stage`` under DDP)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import AlignConfig, DistillConfig, FinetuneConfig, StructureConfig
from core.losses import AlignmentLoss, DenseDistillLoss, Losses, StructureLoss, build_losses

WORLD = 2
BATCH = 8  # global; 4 per process
STUDENT = ("image", "text")  # the embeddings that carry gradient; the teachers are frozen


def _data() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    return {
        "image": unit(BATCH, 6),
        "text": unit(BATCH, 6),
        "dense": unit(BATCH, 6),  # the dense-caption teacher of distillation
        "image_teacher": unit(BATCH, 5),
        "text_teacher": unit(BATCH, 7),
        # image 0 has captions on both processes, image 1 too: positives cross process borders
        "image_ids": torch.tensor([0, 1, 2, 0, 3, 1, 4, 0]),
    }


def _alone(loss: Callable[[], nn.Module]) -> Callable[[], Losses]:
    return lambda: Losses({"loss": loss()})


CASES: dict[str, tuple[Callable[[], Losses], float]] = {  # (losses, the step's progress in epochs)
    "triplet_all_negatives": (_alone(lambda: AlignmentLoss(AlignConfig(loss="triplet"))), 0.0),
    "triplet_hardest": (_alone(lambda: AlignmentLoss(AlignConfig(loss="triplet"))), 1.0),
    "infonce": (_alone(lambda: AlignmentLoss(AlignConfig(loss="infonce", temperature=0.2))), 0.0),
    **{
        f"distill_{metric}": (_alone(lambda metric=metric: DenseDistillLoss(DistillConfig(metric=metric, temperature=0.3))), 0.0)
        for metric in ("cosine", "l2", "l1", "kl")
    },
    **{
        f"structure_{metric}": (
            _alone(lambda metric=metric: StructureLoss(StructureConfig(enabled=True, metric=metric, mix_init=0.4, temperature=0.5))),
            0.0,
        )
        for metric in ("mae", "mse", "kl")
    },
    # what the trainer builds and calls: every enabled loss, from the step's one dict of inputs
    "all": (lambda: build_losses(FinetuneConfig(align=AlignConfig(loss="infonce"), structure=StructureConfig(enabled=True))), 1.0),
}


def _run_cases(rows: slice) -> dict[str, dict[str, Tensor]]:
    """Every case on the pairs ``rows`` of the global batch: the loss value, the gradient w.r.t.
    the global embeddings (zero outside ``rows``) and the losses' own parameter gradients."""
    results = {}
    for name, (build, progress) in CASES.items():
        data = {k: v.clone().requires_grad_(k in STUDENT) for k, v in _data().items()}
        module = build()
        loss = sum(module(progress=progress, **{k: v[rows] for k, v in data.items()}).values())
        loss.backward()
        results[name] = {
            "loss": loss.detach(),
            **{f"grad/{k}": data[k].grad for k in STUDENT if data[k].grad is not None},
            **{f"param/{n}": p.grad for n, p in module.named_parameters()},
        }
    return results


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        local = BATCH // WORLD
        results = _run_cases(slice(rank * local, (rank + 1) * local))
        for result in results.values():
            for key in (k for k in result if k.startswith("grad/")):
                # DDP: the model's parameter gradients are averaged over processes
                dist.all_reduce(result[key])
                result[key] /= WORLD
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, list[dict]]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]
    return _run_cases(slice(None)), ranks


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_process_on_the_global_batch(runs, case):
    single, ranks = runs
    expected = single[case]
    for rank, result in enumerate(ranks):
        got = result[case]
        assert got.keys() == expected.keys() and "grad/text" in expected
        for key, value in expected.items():
            # "loss": every process sees the global value; "grad/*": after DDP averaging;
            # "param/*": the losses' own parameters already get the full gradient on each process
            assert value is not None, f"{case}: {key} got no gradient"
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=f"{case} rank {rank} {key}")


# ------------------------------------------------------------------ the trainer's own DDP path
TINY = Path(__file__).resolve().parent / "data" / "tiny.yaml"
# no randomness that depends on which process holds a pair: dropout off (token features, the
# text backbone's own), the ViT's LayerNorms instead of a CNN's per-process BatchNorm statistics
DETERMINISTIC = {
    "pretrain.enabled": False,
    "finetune.epochs": 2,
    "finetune.structure.enabled": True,  # every loss term of fine-tuning, from one dict of inputs
    "runtime.log_every_steps": 1,
    "model.text.dropout": 0.0,
    "model.text.config_overrides.hidden_dropout_prob": 0.0,
    "model.text.config_overrides.attention_probs_dropout_prob": 0.0,
}


def _train(rank: int, world: int, init_file: str, out_dir: str, config_json: str) -> None:
    from core.config import Config
    from core.stages import FINETUNE
    from core.train import train_stage

    torch.set_num_threads(1)
    if world > 1:
        # ranks that disagree on their steps fail within a minute rather than gloo's 30
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        steps: list[float] = []
        record = lambda event: steps.append(event.metrics["train"]["loss"]) if event.kind == "step" else None  # noqa: E731
        out = Path(out_dir)
        result = train_stage(Config.model_validate_json(config_json), FINETUNE.name, out / "stage", callback=record, cache_dir=out / "data")
        torch.save({"steps": steps, "best": result.best_metrics}, out / f"rank{rank}.pt")
    finally:
        if world > 1:
            dist.destroy_process_group()


def test_the_trainer_on_two_processes_takes_the_steps_of_one_process_on_the_global_batch(tmp_path):
    from core.data import build_splits
    from core.stages import BEST_CHECKPOINT, LAST_CHECKPOINT
    from harness.config import resolve

    config = resolve(TINY, DETERMINISTIC)
    build_splits(config.data, tmp_path / "one" / "data")  # the data cache exists before the processes start
    build_splits(config.data, tmp_path / "two" / "data")
    threads = torch.get_num_threads()
    try:
        _train(0, 1, "", str(tmp_path / "one"), config.model_dump_json())
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_train, args=(WORLD, str(tmp_path / "init"), str(tmp_path / "two"), config.model_dump_json()), nprocs=WORLD, join=True)
    one = torch.load(tmp_path / "one" / "rank0.pt")
    assert len(one["steps"]) == 2 * (48 * 2 // 16)  # 2 epochs of 96 pairs in batches of 16
    for rank in range(WORLD):
        two = torch.load(tmp_path / "two" / f"rank{rank}.pt")
        # the loss of every step (after the optimiser steps before it) and the selected checkpoint's metrics
        torch.testing.assert_close(torch.tensor(two["steps"]), torch.tensor(one["steps"]), rtol=1e-5, atol=1e-5)
        assert two["best"] == pytest.approx(one["best"], abs=1e-4)
    stage = tmp_path / "two" / "stage"
    assert sorted(p.name for p in stage.glob("*.safetensors")) == sorted([BEST_CHECKPOINT, LAST_CHECKPOINT])


def _resume(rank: int, world: int, init_file: str, out_dir: str, config_json: str, damaged_on: int) -> None:
    import core.train

    if rank == damaged_on:  # this rank alone reads the best checkpoint as damaged (a torn read)
        core.train.checkpoint_problem = lambda path: "simulated damage"
    _train(rank, world, init_file, out_dir, config_json)


@pytest.mark.parametrize("damaged_on", [-1, 1], ids=["intact", "damaged-on-rank-1"])
def test_two_processes_resume_together_or_restart_together(tmp_path, damaged_on):
    from core.stages import LAST_CHECKPOINT
    from harness.config import resolve

    config = resolve(TINY, {**DETERMINISTIC, "finetune.epochs": 1})
    threads = torch.get_num_threads()
    try:
        _train(0, 1, "", str(tmp_path), config.model_dump_json())  # epoch 0 and its checkpoints
    finally:
        torch.set_num_threads(threads)
    longer = resolve(TINY, DETERMINISTIC)  # 2 epochs
    mp.spawn(_resume, args=(WORLD, str(tmp_path / "init"), str(tmp_path), longer.model_dump_json(), damaged_on), nprocs=WORLD, join=True)
    steps_per_epoch = 48 * 2 // 16
    epochs_run = 1 if damaged_on < 0 else 2  # resumed at epoch 1 on both ranks, or both from epoch 0
    for rank in range(WORLD):
        assert len(torch.load(tmp_path / f"rank{rank}.pt")["steps"]) == epochs_run * steps_per_epoch
    aside = tmp_path / "stage" / f"{LAST_CHECKPOINT}.damaged"
    assert aside.is_file() == (damaged_on >= 0)  # set aside once, by rank 0, after every rank read it
    assert (tmp_path / "stage" / LAST_CHECKPOINT).is_file()
